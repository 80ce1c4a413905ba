//! Domain rejections. These are the caller's problem (HTTP 4xx), never infrastructure faults,
//! which live in the adapters' own error types.

use thiserror::Error;

use crate::aggregate::AggregateKind;
use crate::order::OrderStatus;
use crate::values::{Currency, MoneyError, Sku};

/// Why `decide` refused a command. Compared in tests, so it derives `PartialEq`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("{} {id} already exists", kind.noun())]
    AlreadyExists { kind: AggregateKind, id: String },

    #[error("{} {id} does not exist", kind.noun())]
    NotFound { kind: AggregateKind, id: String },

    #[error("an order needs at least one line")]
    EmptyOrder,

    #[error("line {line} is in {found}, but the order is in {expected}")]
    MixedCurrencies {
        line: usize,
        expected: Currency,
        found: Currency,
    },

    #[error("line {line} repeats sku {sku}; put the whole quantity on one line")]
    DuplicateSku { line: usize, sku: Sku },

    #[error("the order total is out of range")]
    TotalOutOfRange,

    #[error("stock on hand would exceed the maximum")]
    StockOutOfRange,

    #[error("order is {status}; cannot {action}")]
    InvalidTransition {
        status: OrderStatus,
        action: &'static str,
    },

    #[error("order has a pending cancellation; cannot {action}")]
    CancellationPending { action: &'static str },

    #[error("saga input refers to line {line}, but the order has {lines} lines")]
    UnknownLine { line: usize, lines: usize },

    #[error("saga input is addressed to saga {addressed} but starts saga {started}")]
    MisaddressedSaga { addressed: String, started: String },

    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
}

impl From<MoneyError> for DomainError {
    fn from(_: MoneyError) -> Self {
        DomainError::TotalOutOfRange
    }
}
