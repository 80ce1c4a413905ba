//! The read models: one module per projection.

pub mod customers;
pub mod inventory;
pub mod order_sagas;
pub mod orders;

/// Every projection's name, in the order `status` lists them.
/// (`status` pairs them with their aggregate kinds.)
pub const ALL: [&str; 4] = [
    customers::Customers::NAME_STR,
    inventory::Inventory::NAME_STR,
    orders::Orders::NAME_STR,
    order_sagas::OrderSagas::NAME_STR,
];
