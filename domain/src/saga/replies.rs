//! Turns a participant's answer to a saga command into the saga's next input, so the
//! orchestrator and the tests interpret answers identically.

use super::{CreditReply, SagaCommand, SagaInput, SagaStep, StockReply};
use crate::customer::CustomerEvent;
use crate::inventory::InventoryEvent;
use crate::order::OrderEvent;
use crate::DomainError;

/// What a participant answered (after the command path de-duplicated the command), in the few
/// facts the saga cares about. Built from a `decide` result here, or from a command reply by
/// the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantOutcome {
    /// The command was applied. `declined`: what it recorded is a refusal
    /// (`StockReservationRejected`, `CreditLimitExceeded`), not a reservation.
    Applied { declined: bool },
    /// The participant does not exist (unknown sku or customer).
    NotFound,
    /// Refused for another reason (an order that cannot move any more, a pending cancellation).
    Refused,
}

impl ParticipantOutcome {
    fn of<E>(result: &Result<Vec<E>, DomainError>, declines: impl Fn(&E) -> bool) -> Self {
        match result {
            Ok(events) => Self::Applied {
                declined: events.iter().any(declines),
            },
            Err(DomainError::NotFound { .. }) => Self::NotFound,
            Err(_) => Self::Refused,
        }
    }

    pub fn of_inventory(result: &Result<Vec<InventoryEvent>, DomainError>) -> Self {
        Self::of(result, |e| {
            matches!(e, InventoryEvent::StockReservationRejected { .. })
        })
    }

    pub fn of_customer(result: &Result<Vec<CustomerEvent>, DomainError>) -> Self {
        Self::of(result, |e| {
            matches!(e, CustomerEvent::CreditLimitExceeded { .. })
        })
    }

    pub fn of_order(result: &Result<Vec<OrderEvent>, DomainError>) -> Self {
        Self::of(result, |_| false)
    }
}

/// The saga input an answer means, or `None` when it means nothing to the saga (an approval
/// refused because a cancellation is pending: the cancellation itself moves the saga).
pub fn reply_for(command: &SagaCommand, outcome: &ParticipantOutcome) -> Option<SagaInput> {
    use ParticipantOutcome as O;
    let applied = matches!(outcome, O::Applied { .. });
    match (command.step, *outcome) {
        (_, O::Refused) => None,
        (SagaStep::ReserveStock { line }, outcome) => Some(SagaInput::StockReservation {
            line,
            reply: match outcome {
                O::Applied { declined: true } => StockReply::OutOfStock,
                O::NotFound => StockReply::UnknownSku,
                _ => StockReply::Reserved,
            },
        }),
        (SagaStep::ReserveCredit, outcome) => Some(SagaInput::CreditReservation {
            reply: match outcome {
                O::Applied { declined: true } => CreditReply::LimitExceeded,
                O::NotFound => CreditReply::UnknownCustomer,
                _ => CreditReply::Reserved,
            },
        }),
        // Releasing what does not exist has nothing left to release.
        (SagaStep::ReleaseStock { line }, _) => Some(SagaInput::StockReleased { line }),
        (SagaStep::ReleaseCredit, _) => Some(SagaInput::CreditReleased),
        (SagaStep::Approve, _) if applied => Some(SagaInput::OrderApproved),
        (SagaStep::Reject, _) if applied => Some(SagaInput::OrderRejected),
        (SagaStep::ConfirmCancellation, _) if applied => Some(SagaInput::OrderCancelled),
        _ => None,
    }
}
