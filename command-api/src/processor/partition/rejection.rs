//! A domain rejection as the writer sends it: a typed code and the order line it is about.

use domain::DomainError;
use schemas::RejectionCode;

/// The typed code for each domain rejection, plus the order line it is about when it is about
/// one. What the code means to a client (status, field path) is decided in `problem.rs` only.
pub(super) fn rejection(error: &DomainError) -> (RejectionCode, Option<i32>) {
    let line = |line: &usize| i32::try_from(*line).ok();
    match error {
        DomainError::AlreadyExists { .. } => (RejectionCode::AlreadyExists, None),
        DomainError::NotFound { .. } => (RejectionCode::NotFound, None),
        DomainError::EmptyOrder => (RejectionCode::EmptyOrder, None),
        DomainError::MixedCurrencies { line: at, .. } => (RejectionCode::MixedCurrencies, line(at)),
        DomainError::DuplicateSku { line: at, .. } => (RejectionCode::DuplicateSku, line(at)),
        DomainError::TotalOutOfRange => (RejectionCode::TotalOutOfRange, None),
        DomainError::StockOutOfRange => (RejectionCode::StockOutOfRange, None),
        DomainError::InvalidTransition { .. } => (RejectionCode::InvalidTransition, None),
        DomainError::CancellationPending { .. } => (RejectionCode::CancellationPending, None),
        DomainError::UnknownLine { line: at, .. } => (RejectionCode::UnknownLine, line(at)),
        DomainError::MisaddressedSaga { .. } => (RejectionCode::MisaddressedSaga, None),
        DomainError::IdempotencyKeyReused => (RejectionCode::IdempotencyKeyReused, None),
    }
}
