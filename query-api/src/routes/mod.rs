//! One module per view.

pub mod customers;
pub mod inventory;
pub mod orders;
pub mod params;
pub mod sagas;
pub mod system;
