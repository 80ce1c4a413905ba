//! The pure domain of orders, customers' credit and inventory, and the order saga's decisions.
//!
//! Nothing here performs I/O, awaits, reads a clock or knows about Kafka, Postgres, HTTP or
//! Avro: adapters feed commands in and persist the events that come out.
//!
//! # Layout
//!
//! - [`values`]: validated newtypes (`CustomerId`, `Sku`, `OrderId`, `Quantity`, `Money` ...).
//!   Parse at the boundary with `TryFrom`; a value that exists is valid.
//! - [`aggregate`]: the [`Aggregate`] trait (`decide` / `evolve`) and [`Current`], which numbers
//!   events so versions stay gap-free.
//! - [`customer`], [`inventory`], [`order`]: the three aggregates, each with its rules and a
//!   given/when/then test next to every rule.
//! - [`idempotency`]: idempotency keys as aggregates, claimed once per caller and key, so a key
//!   reused with another request is refused whatever aggregate that request names.
//! - [`saga`]: the order saga as an event-sourced decider: inputs (participants' replies,
//!   deadlines, cancellation) in, saga events out; each `…Requested` event names one command
//!   with a deterministic key.
//! - [`error`]: [`DomainError`], the caller's mistakes (4xx), kept apart from infrastructure faults.
//! - [`testing`]: the given/when/then harness, public so adapters' tests can use it too.

pub mod aggregate;
pub mod customer;
pub mod error;
pub mod idempotency;
pub mod inventory;
pub mod order;
pub mod saga;
pub mod testing;
pub mod values;

#[cfg(test)]
mod fixtures;

pub use aggregate::{Aggregate, AggregateKind, Current, Version, VersionGap, Versioned};
pub use error::DomainError;
