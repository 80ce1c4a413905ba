//! Short constructors for tests, so rules read as sentences rather than as parsing.
#![allow(clippy::unwrap_used)]

use uuid::Uuid;

use crate::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};

pub(crate) fn customer_id(raw: &str) -> CustomerId {
    CustomerId::try_from(raw).unwrap()
}

pub(crate) fn sku(raw: &str) -> Sku {
    Sku::try_from(raw).unwrap()
}

pub(crate) fn qty(n: i64) -> Quantity {
    Quantity::try_from(n).unwrap()
}

pub(crate) fn order_id(n: u128) -> OrderId {
    OrderId::from_uuid(Uuid::from_u128(n))
}

pub(crate) fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::try_from("USD").unwrap()).unwrap()
}

pub(crate) fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::try_from("EUR").unwrap()).unwrap()
}
