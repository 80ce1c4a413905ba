//! What the writer needs to know about each aggregate kind beyond `decide`/`evolve`: which
//! aggregate a command targets, who may issue it, and how its state is written to and read from
//! the partition's snapshot (`WriteModel` and its impls).

use domain::customer::{CustomerAggregate, CustomerCommand, CustomerState};
use domain::idempotency::{IdempotencyKey, KeyCommand, KeyState};
use domain::inventory::{InventoryCommand, InventoryItem, InventoryState};
use domain::order::{OrderAggregate, OrderCommand, OrderState};
use domain::saga::{OrderSagaAggregate, SagaMessage, SagaState};
use domain::Aggregate;
use platform::envelope::Actor;
use schemas::wire::snapshots::{Claim, Head, Snapshot};
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

    /// The snapshot record of one aggregate (`state` is `None` when unreadable).
    fn snapshot(head: Head, state: Option<&Self::State>) -> Snapshot;

    /// The head and state in a snapshot record of this kind; `None` for any other record.
    fn restored(snapshot: Snapshot) -> Option<(Head, Self::State)>;
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

    fn snapshot(head: Head, state: Option<&CustomerState>) -> Snapshot {
        let customer = match state {
            Some(CustomerState::Registered(customer)) => Some(customer.clone()),
            _ => None,
        };
        Snapshot::Customer(head, customer)
    }

    fn restored(snapshot: Snapshot) -> Option<(Head, CustomerState)> {
        match snapshot {
            Snapshot::Customer(head, customer) => Some((
                head,
                customer.map_or(CustomerState::Unregistered, CustomerState::Registered),
            )),
            _ => None,
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

    fn snapshot(head: Head, state: Option<&InventoryState>) -> Snapshot {
        let item = match state {
            Some(InventoryState::Stocked(item)) => Some(item.clone()),
            _ => None,
        };
        Snapshot::InventoryItem(head, item)
    }

    fn restored(snapshot: Snapshot) -> Option<(Head, InventoryState)> {
        match snapshot {
            Snapshot::InventoryItem(head, item) => Some((
                head,
                item.map_or(InventoryState::Unknown, InventoryState::Stocked),
            )),
            _ => None,
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

    fn snapshot(head: Head, state: Option<&OrderState>) -> Snapshot {
        let order = match state {
            Some(OrderState::Placed(order)) => Some(order.clone()),
            _ => None,
        };
        Snapshot::Order(head, order)
    }

    fn restored(snapshot: Snapshot) -> Option<(Head, OrderState)> {
        match snapshot {
            Snapshot::Order(head, order) => Some((
                head,
                order.map_or(OrderState::NotPlaced, OrderState::Placed),
            )),
            _ => None,
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

    fn snapshot(head: Head, state: Option<&SagaState>) -> Snapshot {
        let saga = match state {
            Some(SagaState::Running(saga)) => Some(saga.clone()),
            _ => None,
        };
        Snapshot::OrderSaga(head, saga)
    }

    fn restored(snapshot: Snapshot) -> Option<(Head, SagaState)> {
        match snapshot {
            Snapshot::OrderSaga(head, saga) => {
                Some((head, saga.map_or(SagaState::NotStarted, SagaState::Running)))
            }
            _ => None,
        }
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

    fn snapshot(head: Head, state: Option<&KeyState>) -> Snapshot {
        let claim = match state {
            Some(KeyState::Claimed {
                route,
                expires_at_ms,
            }) => Some(Claim {
                route: route.clone(),
                expires_at_ms: *expires_at_ms,
            }),
            _ => None,
        };
        Snapshot::IdempotencyKey(head, claim)
    }

    fn restored(snapshot: Snapshot) -> Option<(Head, KeyState)> {
        match snapshot {
            Snapshot::IdempotencyKey(head, claim) => Some((
                head,
                claim.map_or(KeyState::Unclaimed, |c| KeyState::Claimed {
                    route: c.route,
                    expires_at_ms: c.expires_at_ms,
                }),
            )),
            _ => None,
        }
    }
}
