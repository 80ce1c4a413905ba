//! Wire records (serde structs mirroring the newest `.avsc` of each event) and the conversions
//! to and from domain events. Domain -> wire cannot fail; wire -> domain validates every field
//! through the domain's own `TryFrom`s.

mod commands;
mod customers;
mod idempotency;
mod inventory;
mod orders;
pub mod reply;
mod saga;
pub mod snapshots;

use apache_avro::types::Value;
use domain::values::{Currency, InvalidValue, Money, OrderId, Quantity};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;

/// A type stored on the wire: an aggregate's events, an aggregate's commands, or replies.
pub trait WireRecord: Sized {
    /// The schema directory (`avro/<family>/`) its records come from; decoding refuses records
    /// of another family.
    const FAMILY: &'static str;
    /// The record's type name, which is also its Avro record name.
    fn event_type(&self) -> &'static str;
    fn to_avro(&self) -> Result<Value, apache_avro::Error>;
    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError>;
}

#[derive(Debug, Serialize, Deserialize)]
struct MoneyRecord {
    amount_minor: i64,
    currency: String,
}

impl From<&Money> for MoneyRecord {
    fn from(money: &Money) -> Self {
        Self {
            amount_minor: money.amount_minor(),
            currency: money.currency().to_string(),
        }
    }
}

fn money(field: &'static str, record: &MoneyRecord) -> Result<Money, DecodeError> {
    let currency = parse::<Currency>(field, &record.currency)?;
    Money::new(record.amount_minor, currency)
        .map_err(|reason| DecodeError::Invalid { field, reason })
}

fn parse<'a, T: TryFrom<&'a str, Error = InvalidValue>>(
    field: &'static str,
    raw: &'a str,
) -> Result<T, DecodeError> {
    T::try_from(raw).map_err(|reason| DecodeError::Invalid { field, reason })
}

fn order_id(raw: &str) -> Result<OrderId, DecodeError> {
    parse("order_id", raw)
}

fn quantity(field: &'static str, raw: i32) -> Result<Quantity, DecodeError> {
    Quantity::try_from(i64::from(raw)).map_err(|reason| DecodeError::Invalid { field, reason })
}

fn quantity_out(quantity: Quantity) -> i32 {
    // Quantity::MAX is far below i32::MAX.
    i32::try_from(quantity.get()).unwrap_or(i32::MAX)
}

fn to_record<T: Serialize>(record: T) -> Result<Value, apache_avro::Error> {
    apache_avro::to_value(record)
}

fn from_record<T: DeserializeOwned>(event_type: &str, value: &Value) -> Result<T, DecodeError> {
    apache_avro::from_value(value).map_err(|source| DecodeError::Shape {
        event_type: event_type.to_owned(),
        source: Box::new(source),
    })
}
