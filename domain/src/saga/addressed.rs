//! The saga as the command path hosts it: each input is addressed to one saga (saga id = order
//! id), so a partition writer can route it, and the saga's events form an ordinary aggregate
//! stream with gap-free versions and the log-order rule.

use super::{decide, evolve, SagaEvent, SagaInput, SagaState};
use crate::aggregate::{Aggregate, AggregateKind};
use crate::values::OrderId;
use crate::DomainError;

/// One input for one saga.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaMessage {
    pub saga_id: OrderId,
    pub input: SagaInput,
}

/// The order saga as an event-sourced aggregate (saga id = order id): its one name. Each input
/// is addressed to one saga, so the command path routes it like any other command; the rules
/// themselves are `decide.rs` and `evolve.rs`.
#[derive(Debug)]
pub enum OrderSagaAggregate {}

impl Aggregate for OrderSagaAggregate {
    const KIND: AggregateKind = AggregateKind::OrderSaga;
    type State = SagaState;
    type Command = SagaMessage;
    type Event = SagaEvent;

    fn decide(state: &SagaState, message: SagaMessage) -> Result<Vec<SagaEvent>, DomainError> {
        if let SagaInput::OrderPlaced { order_id, .. } = &message.input {
            if *order_id != message.saga_id {
                return Err(DomainError::MisaddressedSaga {
                    addressed: message.saga_id.to_string(),
                    started: order_id.to_string(),
                });
            }
        }
        decide::decide(state, message.input)
    }

    fn evolve(state: SagaState, event: &SagaEvent) -> SagaState {
        evolve::evolve(state, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{customer_id, order_id, qty, sku, usd};
    use crate::order::OrderLine;

    #[test]
    fn an_order_placed_input_must_start_the_saga_it_is_addressed_to() {
        let placed = SagaInput::OrderPlaced {
            order_id: order_id(1),
            customer_id: customer_id("c-1"),
            lines: vec![OrderLine {
                sku: sku("apple"),
                quantity: qty(1),
                unit_price: usd(100),
            }],
            total: usd(100),
        };
        let other = order_id(2);
        let refused = OrderSagaAggregate::decide(
            &SagaState::NotStarted,
            SagaMessage {
                saga_id: other,
                input: placed.clone(),
            },
        );
        assert!(matches!(refused, Err(DomainError::MisaddressedSaga { .. })));
        let started = OrderSagaAggregate::decide(
            &SagaState::NotStarted,
            SagaMessage {
                saga_id: order_id(1),
                input: placed,
            },
        );
        assert!(matches!(
            started.as_deref(),
            Ok([SagaEvent::SagaStarted { .. }, _])
        ));
    }
}
