//! Deterministic command ids. Whatever the orchestrator sends is named by what caused it, so a
//! redelivered event, a retry or a restarted orchestrator sends the same id again, and the
//! command path answers it from the log instead of acting twice.

use domain::saga::{SagaCommand, SagaStep};
use domain::Version;
use uuid::Uuid;

/// The UUID v5 namespace of saga command ids (fixed forever: changing it re-runs steps).
const NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7273_7472_6561_6d2d_7361_6761);

fn named(name: &str) -> String {
    Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// The participant command a saga step sends: saga id + step + attempt.
pub fn participant_command(saga_id: &str, command: &SagaCommand) -> String {
    named(&format!("{saga_id}/{}", command.key()))
}

/// The saga input that records a participant's answer to that command.
pub fn answer(saga_id: &str, command: &SagaCommand) -> String {
    named(&format!("{saga_id}/answer/{}", command.key()))
}

/// The saga input that tells a step's deadline passed, at the saga version it was seen at.
pub fn deadline(saga_id: &str, step: SagaStep, version: Version) -> String {
    named(&format!("{saga_id}/deadline/{}@{version}", step.name()))
}

/// The saga input an order event causes: the event's own id.
pub fn from_order_event(event_id: Uuid) -> String {
    event_id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::order::OrderCommand;
    use domain::saga::ParticipantCommand;
    use domain::values::OrderId;

    fn approve(attempt: u32) -> SagaCommand {
        SagaCommand {
            step: SagaStep::Approve,
            attempt,
            command: ParticipantCommand::Order(OrderCommand::Approve {
                order_id: OrderId::from_uuid(Uuid::from_u128(7)),
            }),
        }
    }

    #[test]
    fn the_same_step_gets_the_same_id_and_other_steps_or_attempts_do_not() {
        assert_eq!(
            participant_command("s-1", &approve(1)),
            participant_command("s-1", &approve(1))
        );
        assert_ne!(
            participant_command("s-1", &approve(1)),
            participant_command("s-1", &approve(2))
        );
        assert_ne!(
            participant_command("s-1", &approve(1)),
            participant_command("s-2", &approve(1))
        );
        assert_ne!(
            participant_command("s-1", &approve(1)),
            answer("s-1", &approve(1))
        );
        assert_ne!(
            deadline("s-1", SagaStep::Approve, Version::new(3)),
            deadline("s-1", SagaStep::Approve, Version::new(4))
        );
    }
}
