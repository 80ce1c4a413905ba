//! The orchestrator's only interpretation of the outside world, kept pure: which order events
//! start or cancel a saga, and what a participant's reply means to the saga.

use domain::customer::CustomerEvent;
use domain::inventory::InventoryEvent;
use domain::order::OrderEvent;
use domain::saga::{ParticipantOutcome, SagaInput, SagaMessage};
use schemas::{CommandReply, RejectionCode, ReplyOutcome};

/// The saga input an order event means, if any.
pub fn order_event_input(event: OrderEvent) -> Option<SagaMessage> {
    match event {
        OrderEvent::OrderPlaced {
            order_id,
            customer_id,
            lines,
            total,
        } => Some(SagaMessage {
            saga_id: order_id,
            input: SagaInput::OrderPlaced {
                order_id,
                customer_id,
                lines,
                total,
            },
        }),
        OrderEvent::OrderCancellationRequested { order_id, .. } => Some(SagaMessage {
            saga_id: order_id,
            input: SagaInput::CancellationRequested,
        }),
        _ => None,
    }
}

/// The order event types [`order_event_input`] cares about (others are not even decoded).
pub const ORDER_EVENTS_OF_INTEREST: [&str; 2] = ["OrderPlaced", "OrderCancellationRequested"];

/// Event types by which a participant records a refusal rather than a reservation.
fn is_decline(event_type: &str) -> bool {
    event_type == InventoryEvent::DECLINE || event_type == CustomerEvent::DECLINE
}

/// What the saga learns from a reply; `None` when the reply says nothing about the step
/// (the command expired, was refused as unauthorised, or hit a version conflict).
pub fn outcome_of(reply: &CommandReply) -> Option<ParticipantOutcome> {
    match reply.outcome {
        ReplyOutcome::Accepted => Some(ParticipantOutcome::Applied {
            declined: reply.event_types.iter().any(|t| is_decline(t)),
        }),
        ReplyOutcome::Rejected => Some(refusal(reply.code)),
        ReplyOutcome::Conflict | ReplyOutcome::Forbidden | ReplyOutcome::Unavailable => None,
    }
}

/// A participant's refusal as the saga sees it: only "no such customer/sku" differs from a
/// plain refusal. Every code is named, so a new one is a decision here, not a silent default.
fn refusal(code: Option<RejectionCode>) -> ParticipantOutcome {
    match code {
        Some(RejectionCode::NotFound) => ParticipantOutcome::NotFound,
        Some(
            RejectionCode::AlreadyExists
            | RejectionCode::EmptyOrder
            | RejectionCode::MixedCurrencies
            | RejectionCode::DuplicateSku
            | RejectionCode::TotalOutOfRange
            | RejectionCode::StockOutOfRange
            | RejectionCode::InvalidTransition
            | RejectionCode::CancellationPending
            | RejectionCode::UnknownLine
            | RejectionCode::MisaddressedSaga
            | RejectionCode::IdempotencyKeyReused
            | RejectionCode::InvalidCommand
            | RejectionCode::Misrouted
            | RejectionCode::VersionConflict
            | RejectionCode::Forbidden
            | RejectionCode::Expired
            | RejectionCode::UnreadableAggregate
            | RejectionCode::EncodeFailed
            | RejectionCode::Unknown,
        )
        | None => ParticipantOutcome::Refused,
    }
}

/// The wire names of the refusal events, checked against the domain's own events.
trait Decline {
    const DECLINE: &'static str;
}

impl Decline for InventoryEvent {
    const DECLINE: &'static str = "StockReservationRejected";
}

impl Decline for CustomerEvent {
    const DECLINE: &'static str = "CreditLimitExceeded";
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
    use schemas::WireRecord;

    fn reply(
        outcome: ReplyOutcome,
        event_types: &[&str],
        code: Option<RejectionCode>,
    ) -> CommandReply {
        CommandReply {
            command_id: "c".into(),
            outcome,
            aggregate_id: "a".into(),
            version: 1,
            event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
            positions: vec![],
            code,
            line: None,
            detail: String::new(),
        }
    }

    #[test]
    fn the_decline_names_are_the_domain_events_wire_names() {
        let order_id = OrderId::from_uuid(uuid::Uuid::from_u128(1));
        let rejected = InventoryEvent::StockReservationRejected {
            sku: Sku::try_from("a").unwrap_or_else(|_| unreachable!()),
            order_id,
            requested: Quantity::try_from(1).unwrap_or_else(|_| unreachable!()),
            available: 0,
        };
        assert_eq!(rejected.event_type(), InventoryEvent::DECLINE);
        let exceeded = CustomerEvent::CreditLimitExceeded {
            customer_id: CustomerId::try_from("c").unwrap_or_else(|_| unreachable!()),
            order_id,
            requested: Money::new(
                1,
                Currency::try_from("USD").unwrap_or_else(|_| unreachable!()),
            )
            .unwrap_or_else(|_| unreachable!()),
            available: Money::new(
                0,
                Currency::try_from("USD").unwrap_or_else(|_| unreachable!()),
            )
            .unwrap_or_else(|_| unreachable!()),
        };
        assert_eq!(exceeded.event_type(), CustomerEvent::DECLINE);
    }

    #[test]
    fn replies_mean_applied_declined_not_found_refused_or_nothing() {
        assert_eq!(
            outcome_of(&reply(ReplyOutcome::Accepted, &["StockReserved"], None)),
            Some(ParticipantOutcome::Applied { declined: false })
        );
        assert_eq!(
            outcome_of(&reply(
                ReplyOutcome::Accepted,
                &["StockReservationRejected"],
                None
            )),
            Some(ParticipantOutcome::Applied { declined: true })
        );
        assert_eq!(
            outcome_of(&reply(
                ReplyOutcome::Rejected,
                &[],
                Some(RejectionCode::NotFound)
            )),
            Some(ParticipantOutcome::NotFound)
        );
        assert_eq!(
            outcome_of(&reply(
                ReplyOutcome::Rejected,
                &[],
                Some(RejectionCode::InvalidTransition)
            )),
            Some(ParticipantOutcome::Refused)
        );
        assert_eq!(
            outcome_of(&reply(
                ReplyOutcome::Unavailable,
                &[],
                Some(RejectionCode::Expired)
            )),
            None
        );
    }
}
