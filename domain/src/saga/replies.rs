//! Turns a participant's answer to a saga command into the saga's next input, so the
//! orchestrator and the tests interpret answers identically.

use super::{CreditReply, SagaCommand, SagaInput, SagaStep, StockReply};
use crate::customer::CustomerEvent;
use crate::inventory::InventoryEvent;
use crate::DomainError;

/// What a participant's `decide` answered (after the command path de-duplicated it).
#[derive(Debug, Clone, PartialEq)]
pub enum ParticipantOutcome {
    Inventory(Result<Vec<InventoryEvent>, DomainError>),
    Customer(Result<Vec<CustomerEvent>, DomainError>),
    Order(Result<(), DomainError>),
}

/// The saga input an answer means, or `None` when it means nothing to the saga (an approval
/// refused because a cancellation is pending: the cancellation itself moves the saga).
pub fn reply_for(command: &SagaCommand, outcome: &ParticipantOutcome) -> Option<SagaInput> {
    use ParticipantOutcome as O;
    match (command.step, outcome) {
        (SagaStep::ReserveStock { line }, O::Inventory(result)) => {
            let reply = match result {
                Ok(events)
                    if events
                        .iter()
                        .any(|e| matches!(e, InventoryEvent::StockReservationRejected { .. })) =>
                {
                    StockReply::OutOfStock
                }
                Ok(_) => StockReply::Reserved,
                r if is_not_found(r) => StockReply::UnknownSku,
                Err(_) => return None,
            };
            Some(SagaInput::StockReservation { line, reply })
        }
        (SagaStep::ReleaseStock { line }, O::Inventory(result)) => match result {
            Ok(_) => Some(SagaInput::StockReleased { line }),
            r if is_not_found(r) => Some(SagaInput::StockReleased { line }),
            Err(_) => None,
        },
        (SagaStep::ReserveCredit, O::Customer(result)) => {
            let reply = match result {
                Ok(events)
                    if events
                        .iter()
                        .any(|e| matches!(e, CustomerEvent::CreditLimitExceeded { .. })) =>
                {
                    CreditReply::LimitExceeded
                }
                Ok(_) => CreditReply::Reserved,
                r if is_not_found(r) => CreditReply::UnknownCustomer,
                Err(_) => return None,
            };
            Some(SagaInput::CreditReservation { reply })
        }
        (SagaStep::ReleaseCredit, O::Customer(result)) => match result {
            Ok(_) => Some(SagaInput::CreditReleased),
            r if is_not_found(r) => Some(SagaInput::CreditReleased),
            Err(_) => None,
        },
        (SagaStep::Approve, O::Order(Ok(()))) => Some(SagaInput::OrderApproved),
        (SagaStep::Reject, O::Order(Ok(()))) => Some(SagaInput::OrderRejected),
        (SagaStep::ConfirmCancellation, O::Order(Ok(()))) => Some(SagaInput::OrderCancelled),
        _ => None,
    }
}

/// The participant does not exist (unknown sku or customer).
fn is_not_found<T>(result: &Result<T, DomainError>) -> bool {
    matches!(result, Err(DomainError::NotFound { .. }))
}
