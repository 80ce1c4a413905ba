//! What the writer needs to know about each aggregate kind beyond `decide`/`evolve`: which
//! aggregate a command targets, and who may issue it (`WriteModel` and its impls).

use domain::customer::{CustomerAggregate, CustomerCommand};
use domain::idempotency::{IdempotencyKey, KeyCommand};
use domain::inventory::{InventoryCommand, InventoryItem};
use domain::order::{OrderAggregate, OrderCommand, OrderState};
use domain::saga::{OrderSagaAggregate, SagaMessage};
use domain::Aggregate;
use platform::envelope::Actor;
use schemas::WireRecord;

// HTTP checks the coarse rules (admin-only endpoints); the writer checks what needs the
// aggregate's state (whose order it is).
use platform::auth::{ROLE_ADMIN, ROLE_CUSTOMER, ROLE_SYSTEM};

/// An aggregate the command writer can host.
pub(crate) trait WriteModel: Aggregate + Send + Sync + 'static
where
    Self::Event: WireRecord + Send + Sync,
    Self::Command: WireRecord + Clone + Send + Sync,
    Self::State: Send + Sync,
{
    /// The id of the aggregate a command targets (the Kafka key).
    fn aggregate_id(command: &Self::Command) -> String;

    /// Whether `actor` may issue `command` against `state`.
    fn authorize(state: &Self::State, command: &Self::Command, actor: &Actor) -> bool;
}

fn is_privileged(actor: &Actor) -> bool {
    actor.role == ROLE_ADMIN || actor.role == ROLE_SYSTEM
}

impl WriteModel for CustomerAggregate {
    fn aggregate_id(command: &CustomerCommand) -> String {
        command.customer_id().to_string()
    }

    fn authorize(_: &Self::State, command: &CustomerCommand, actor: &Actor) -> bool {
        match command {
            CustomerCommand::Register { .. } => actor.role == ROLE_ADMIN,
            CustomerCommand::ReserveCredit { .. } | CustomerCommand::ReleaseCredit { .. } => {
                is_privileged(actor)
            }
        }
    }
}

impl WriteModel for InventoryItem {
    fn aggregate_id(command: &InventoryCommand) -> String {
        command.sku().to_string()
    }

    fn authorize(_: &Self::State, command: &InventoryCommand, actor: &Actor) -> bool {
        match command {
            InventoryCommand::AddStock { .. } => actor.role == ROLE_ADMIN,
            _ => is_privileged(actor),
        }
    }
}

impl WriteModel for OrderAggregate {
    fn aggregate_id(command: &OrderCommand) -> String {
        command.order_id().to_string()
    }

    /// Customers place and cancel their own orders; only the saga moves an order otherwise.
    fn authorize(state: &OrderState, command: &OrderCommand, actor: &Actor) -> bool {
        if is_privileged(actor) {
            return actor.role == ROLE_SYSTEM
                || matches!(
                    command,
                    OrderCommand::Place { .. } | OrderCommand::RequestCancellation { .. }
                );
        }
        if actor.role != ROLE_CUSTOMER {
            return false;
        }
        match (command, state) {
            (OrderCommand::Place { customer_id, .. }, _) => customer_id.as_str() == actor.subject,
            (OrderCommand::RequestCancellation { .. }, OrderState::Placed(order)) => {
                order.customer_id.as_str() == actor.subject
            }
            // Unknown order: let `decide` answer 404 rather than leak nothing with a 403.
            (OrderCommand::RequestCancellation { .. }, OrderState::NotPlaced) => true,
            _ => false,
        }
    }
}

/// Only the orchestrator moves a saga: its inputs are participants' answers and deadlines.
impl WriteModel for OrderSagaAggregate {
    fn aggregate_id(message: &SagaMessage) -> String {
        message.saga_id.to_string()
    }

    fn authorize(_: &Self::State, _: &SagaMessage, actor: &Actor) -> bool {
        actor.role == ROLE_SYSTEM
    }
}

/// Any caller may claim a key: the key's id is derived from the caller, so a caller only ever
/// claims keys of their own.
impl WriteModel for IdempotencyKey {
    fn aggregate_id(command: &KeyCommand) -> String {
        command.key_id().to_string()
    }

    fn authorize(_: &Self::State, _: &KeyCommand, _: &Actor) -> bool {
        true
    }
}
