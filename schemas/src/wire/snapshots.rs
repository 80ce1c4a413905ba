//! A partition writer's snapshot on the wire (`avro/snapshots/`): one record per key of a
//! compacted topic, written in the same Kafka transaction as the events it covers, so a new owner
//! of the partition restores state from it and replays only the events after its checkpoint.
//! Keys: the aggregate id for an aggregate's state, `~command/<id>` for a command use the
//! log-order rule still remembers, `~checkpoint` for where the snapshot stands.
//!
//! Domain -> wire cannot fail; wire -> domain validates every field through the domain's own
//! `TryFrom`s, so a corrupt record is a decode error (and the writer replays), never wrong state.

use apache_avro::types::Value;
use domain::customer::Customer;
use domain::inventory::Item;
use domain::order::{Order, OrderStatus, RejectionReason};
use domain::saga::{Hold, OrderSaga, SagaOutcome, SagaPhase};
use domain::values::{CancellationReason, CustomerId, CustomerName, Sku};
use domain::AggregateKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::orders::{line_records, lines_from, OrderLineRecord};
use super::{
    from_record, money, order_id, parse, quantity, quantity_out, to_record, MoneyRecord, WireRecord,
};
use crate::error::DecodeError;

/// The key of the checkpoint record.
pub const CHECKPOINT_KEY: &str = "~checkpoint";
/// The prefix of a command use's key (aggregate ids never start with `~`).
pub const COMMAND_KEY_PREFIX: &str = "~command/";

/// An aggregate's chain head: its last accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub aggregate_id: String,
    pub version: u64,
    pub event_id: Uuid,
    pub command_id: String,
    pub offset: i64,
    /// The writer could not decode one of the aggregate's accepted events: it is refused until
    /// fixed, and its state is not recorded.
    pub unreadable: bool,
}

/// Where the snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The meaning of the states (how they fold); a reader of another format replays.
    pub format: u32,
    /// The events partition's offset after the last event the snapshot covers.
    pub events_end: i64,
    /// The log-order rule's clock at `events_end` (ms).
    pub clock: i64,
    /// The command window the writer judged with (ms).
    pub window_ms: i64,
    /// How many aggregate records the snapshot holds.
    pub aggregates: u64,
}

/// A command use the log-order rule still remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandUse {
    pub command_id: String,
    pub aggregate_id: String,
    pub version: u64,
    pub event_types: Vec<String>,
    pub offsets: Vec<i64>,
    pub request_hash: Option<String>,
    pub used_at: i64,
}

/// An idempotency key's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub route: String,
    pub expires_at_ms: Option<i64>,
}

/// One record of a snapshot. An aggregate's state is `None` in its initial state (no event of
/// its history changed it) and when its history cannot be read (see [`Head::unreadable`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Snapshot {
    Checkpoint(Checkpoint),
    CommandUse(CommandUse),
    Customer(Head, Option<Customer>),
    InventoryItem(Head, Option<Item>),
    Order(Head, Option<Order>),
    OrderSaga(Head, Option<OrderSaga>),
    IdempotencyKey(Head, Option<Claim>),
}

impl Snapshot {
    /// The aggregate a record holds the state of (`None` for a checkpoint or command use).
    pub fn kind(&self) -> Option<AggregateKind> {
        Some(match self {
            Self::Checkpoint(_) | Self::CommandUse(_) => return None,
            Self::Customer(..) => AggregateKind::Customer,
            Self::InventoryItem(..) => AggregateKind::InventoryItem,
            Self::Order(..) => AggregateKind::Order,
            Self::OrderSaga(..) => AggregateKind::OrderSaga,
            Self::IdempotencyKey(..) => AggregateKind::IdempotencyKey,
        })
    }

    /// The chain head of an aggregate's record.
    pub fn head(&self) -> Option<&Head> {
        match self {
            Self::Checkpoint(_) | Self::CommandUse(_) => None,
            Self::Customer(head, _)
            | Self::InventoryItem(head, _)
            | Self::Order(head, _)
            | Self::OrderSaga(head, _)
            | Self::IdempotencyKey(head, _) => Some(head),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct HeadRecord {
    aggregate_id: String,
    version: i64,
    event_id: String,
    command_id: String,
    offset: i64,
    unreadable: bool,
}

#[derive(Serialize, Deserialize)]
struct CheckpointRecord {
    format: i32,
    events_end: i64,
    clock_ms: i64,
    window_ms: i64,
    aggregates: i64,
}

#[derive(Serialize, Deserialize)]
struct CommandUseRecord {
    command_id: String,
    aggregate_id: String,
    version: i64,
    event_types: Vec<String>,
    offsets: Vec<i64>,
    request_hash: Option<String>,
    used_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct CreditHoldRecord {
    order_id: String,
    amount: MoneyRecord,
}

#[derive(Serialize, Deserialize)]
struct CustomerRecord {
    customer_id: String,
    name: String,
    credit_limit: MoneyRecord,
    reservations: Vec<CreditHoldRecord>,
}

#[derive(Serialize, Deserialize)]
struct CustomerSnapshot {
    head: HeadRecord,
    customer: Option<CustomerRecord>,
}

#[derive(Serialize, Deserialize)]
struct StockHoldRecord {
    order_id: String,
    quantity: i32,
}

#[derive(Serialize, Deserialize)]
struct ItemRecord {
    sku: String,
    on_hand: i64,
    reservations: Vec<StockHoldRecord>,
}

#[derive(Serialize, Deserialize)]
struct InventoryItemSnapshot {
    head: HeadRecord,
    item: Option<ItemRecord>,
}

#[derive(Serialize, Deserialize)]
struct OrderRecord {
    order_id: String,
    customer_id: String,
    lines: Vec<OrderLineRecord>,
    total: MoneyRecord,
    status: String,
    rejection_reason: Option<String>,
    rejection_detail: Option<String>,
    cancellation_requested: bool,
    cancellation_reason: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct OrderSnapshot {
    head: HeadRecord,
    order: Option<OrderRecord>,
}

#[derive(Serialize, Deserialize)]
struct HoldRecord {
    state: String,
    attempt: i32,
    again: bool,
}

#[derive(Serialize, Deserialize)]
struct SagaRecord {
    order_id: String,
    customer_id: String,
    lines: Vec<OrderLineRecord>,
    total: MoneyRecord,
    stock: Vec<HoldRecord>,
    credit: HoldRecord,
    phase: String,
    line: i32,
    outcome: Option<String>,
    reason: Option<String>,
    detail: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct OrderSagaSnapshot {
    head: HeadRecord,
    saga: Option<SagaRecord>,
}

#[derive(Serialize, Deserialize)]
struct ClaimRecord {
    route: String,
    expires_at_ms: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct IdempotencyKeySnapshot {
    head: HeadRecord,
    claim: Option<ClaimRecord>,
}

fn invalid(field: &'static str, value: impl Into<String>) -> DecodeError {
    DecodeError::UnknownValue {
        field,
        value: value.into(),
    }
}

fn count(field: &'static str, raw: i64) -> Result<u64, DecodeError> {
    u64::try_from(raw).map_err(|_| invalid(field, raw.to_string()))
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn small(value: usize) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

impl HeadRecord {
    fn of(head: &Head) -> Self {
        Self {
            aggregate_id: head.aggregate_id.clone(),
            version: signed(head.version),
            event_id: head.event_id.to_string(),
            command_id: head.command_id.clone(),
            offset: head.offset,
            unreadable: head.unreadable,
        }
    }

    fn into_head(self) -> Result<Head, DecodeError> {
        Ok(Head {
            version: count("head.version", self.version)?,
            event_id: Uuid::parse_str(&self.event_id)
                .map_err(|_| invalid("head.event_id", self.event_id.clone()))?,
            aggregate_id: self.aggregate_id,
            command_id: self.command_id,
            offset: self.offset,
            unreadable: self.unreadable,
        })
    }
}

fn customer_record(c: &Customer) -> CustomerRecord {
    CustomerRecord {
        customer_id: c.customer_id.to_string(),
        name: c.name.to_string(),
        credit_limit: (&c.credit_limit).into(),
        reservations: c
            .reservations
            .iter()
            .map(|(order, amount)| CreditHoldRecord {
                order_id: order.to_string(),
                amount: amount.into(),
            })
            .collect(),
    }
}

fn customer_from(r: &CustomerRecord) -> Result<Customer, DecodeError> {
    Ok(Customer {
        customer_id: parse::<CustomerId>("customer_id", &r.customer_id)?,
        name: parse::<CustomerName>("name", &r.name)?,
        credit_limit: money("credit_limit", &r.credit_limit)?,
        reservations: r
            .reservations
            .iter()
            .map(|h| Ok((order_id(&h.order_id)?, money("amount", &h.amount)?)))
            .collect::<Result<_, DecodeError>>()?,
    })
}

fn item_record(i: &Item) -> ItemRecord {
    ItemRecord {
        sku: i.sku.to_string(),
        on_hand: signed(i.on_hand),
        reservations: i
            .reservations
            .iter()
            .map(|(order, q)| StockHoldRecord {
                order_id: order.to_string(),
                quantity: quantity_out(*q),
            })
            .collect(),
    }
}

fn item_from(r: &ItemRecord) -> Result<Item, DecodeError> {
    Ok(Item {
        sku: parse::<Sku>("sku", &r.sku)?,
        on_hand: count("on_hand", r.on_hand)?,
        reservations: r
            .reservations
            .iter()
            .map(|h| Ok((order_id(&h.order_id)?, quantity("quantity", h.quantity)?)))
            .collect::<Result<_, DecodeError>>()?,
    })
}

fn status_from(raw: &str) -> Result<OrderStatus, DecodeError> {
    [
        OrderStatus::Pending,
        OrderStatus::Approved,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
    ]
    .into_iter()
    .find(|s| s.as_str() == raw)
    .ok_or_else(|| invalid("status", raw))
}

fn reason_from(raw: &str) -> Result<RejectionReason, DecodeError> {
    RejectionReason::from_code(raw).ok_or_else(|| invalid("reason", raw))
}

fn order_record(o: &Order) -> OrderRecord {
    OrderRecord {
        order_id: o.order_id.to_string(),
        customer_id: o.customer_id.to_string(),
        lines: line_records(&o.lines),
        total: (&o.total).into(),
        status: o.status.as_str().to_owned(),
        rejection_reason: o.rejection.as_ref().map(|(r, _)| r.code().to_owned()),
        rejection_detail: o.rejection.as_ref().map(|(_, d)| d.clone()),
        cancellation_requested: o.cancellation.is_some(),
        cancellation_reason: o
            .cancellation
            .as_ref()
            .and_then(|reason| reason.as_ref().map(|r| r.as_str().to_owned())),
    }
}

fn order_from(r: &OrderRecord) -> Result<Order, DecodeError> {
    let rejection = match (&r.rejection_reason, &r.rejection_detail) {
        (Some(reason), detail) => Some((reason_from(reason)?, detail.clone().unwrap_or_default())),
        (None, _) => None,
    };
    let cancellation = if r.cancellation_requested {
        Some(
            r.cancellation_reason
                .as_deref()
                .map(|raw| parse::<CancellationReason>("cancellation_reason", raw))
                .transpose()?,
        )
    } else {
        None
    };
    Ok(Order {
        order_id: order_id(&r.order_id)?,
        customer_id: parse::<CustomerId>("customer_id", &r.customer_id)?,
        lines: lines_from(&r.lines)?,
        total: money("total", &r.total)?,
        status: status_from(&r.status)?,
        rejection,
        cancellation,
    })
}

fn hold_record(hold: Hold) -> HoldRecord {
    let (state, attempt, again) = match hold {
        Hold::NotRequested => ("NOT_REQUESTED", 0, false),
        Hold::Requested => ("REQUESTED", 0, false),
        Hold::Held => ("HELD", 0, false),
        Hold::Refused => ("REFUSED", 0, false),
        Hold::Releasing { attempt, again } => ("RELEASING", attempt, again),
        Hold::Released { attempt } => ("RELEASED", attempt, false),
    };
    HoldRecord {
        state: state.to_owned(),
        attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
        again,
    }
}

fn hold_from(r: &HoldRecord) -> Result<Hold, DecodeError> {
    let attempt =
        u32::try_from(r.attempt).map_err(|_| invalid("attempt", r.attempt.to_string()))?;
    Ok(match r.state.as_str() {
        "NOT_REQUESTED" => Hold::NotRequested,
        "REQUESTED" => Hold::Requested,
        "HELD" => Hold::Held,
        "REFUSED" => Hold::Refused,
        "RELEASING" => Hold::Releasing {
            attempt,
            again: r.again,
        },
        "RELEASED" => Hold::Released { attempt },
        other => return Err(invalid("hold", other)),
    })
}

/// A saga phase as (name, line, outcome, reason, detail).
type PhaseParts = (
    &'static str,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn phase_parts(phase: &SagaPhase) -> PhaseParts {
    let outcome = |o: &SagaOutcome| match o {
        SagaOutcome::Reject { reason, detail } => (
            Some("REJECT".to_owned()),
            Some(reason.code().to_owned()),
            Some(detail.clone()),
        ),
        SagaOutcome::Cancel => (Some("CANCEL".to_owned()), None, None),
    };
    let name = phase.as_str();
    match phase {
        SagaPhase::ReservingStock { line } => (name, small(*line), None, None, None),
        SagaPhase::Compensating { outcome: o } | SagaPhase::Finishing { outcome: o } => {
            let (kind, reason, detail) = outcome(o);
            (name, 0, kind, reason, detail)
        }
        SagaPhase::Rejected { reason } => (name, 0, None, Some(reason.code().to_owned()), None),
        SagaPhase::ReservingCredit
        | SagaPhase::Approving
        | SagaPhase::Approved
        | SagaPhase::Cancelled => (name, 0, None, None, None),
    }
}

fn phase_from(r: &SagaRecord) -> Result<SagaPhase, DecodeError> {
    let reason = || {
        r.reason
            .as_deref()
            .ok_or_else(|| invalid("reason", ""))
            .and_then(reason_from)
    };
    let outcome = || -> Result<SagaOutcome, DecodeError> {
        match r.outcome.as_deref() {
            Some("REJECT") => Ok(SagaOutcome::Reject {
                reason: reason()?,
                detail: r.detail.clone().unwrap_or_default(),
            }),
            Some("CANCEL") => Ok(SagaOutcome::Cancel),
            other => Err(invalid("outcome", other.unwrap_or(""))),
        }
    };
    Ok(match r.phase.as_str() {
        "RESERVING_STOCK" => SagaPhase::ReservingStock {
            line: usize::try_from(r.line).map_err(|_| invalid("line", r.line.to_string()))?,
        },
        "RESERVING_CREDIT" => SagaPhase::ReservingCredit,
        "APPROVING" => SagaPhase::Approving,
        "APPROVED" => SagaPhase::Approved,
        "COMPENSATING" => SagaPhase::Compensating {
            outcome: outcome()?,
        },
        "FINISHING" => SagaPhase::Finishing {
            outcome: outcome()?,
        },
        "REJECTED" => SagaPhase::Rejected { reason: reason()? },
        "CANCELLED" => SagaPhase::Cancelled,
        other => return Err(invalid("phase", other)),
    })
}

fn saga_record(s: &OrderSaga) -> SagaRecord {
    let (phase, line, outcome, reason, detail) = phase_parts(&s.phase);
    SagaRecord {
        order_id: s.order_id.to_string(),
        customer_id: s.customer_id.to_string(),
        lines: line_records(&s.lines),
        total: (&s.total).into(),
        stock: s.stock.iter().copied().map(hold_record).collect(),
        credit: hold_record(s.credit),
        phase: phase.to_owned(),
        line,
        outcome,
        reason,
        detail,
    }
}

fn saga_from(r: &SagaRecord) -> Result<OrderSaga, DecodeError> {
    Ok(OrderSaga {
        order_id: order_id(&r.order_id)?,
        customer_id: parse::<CustomerId>("customer_id", &r.customer_id)?,
        lines: lines_from(&r.lines)?,
        total: money("total", &r.total)?,
        stock: r.stock.iter().map(hold_from).collect::<Result<_, _>>()?,
        credit: hold_from(&r.credit)?,
        phase: phase_from(r)?,
    })
}

impl WireRecord for Snapshot {
    const FAMILY: &'static str = "snapshots";

    fn event_type(&self) -> &'static str {
        match self {
            Self::Checkpoint(_) => "PartitionCheckpoint",
            Self::CommandUse(_) => "CommandUse",
            Self::Customer(..) => "CustomerSnapshot",
            Self::InventoryItem(..) => "InventoryItemSnapshot",
            Self::Order(..) => "OrderSnapshot",
            Self::OrderSaga(..) => "OrderSagaSnapshot",
            Self::IdempotencyKey(..) => "IdempotencyKeySnapshot",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::Checkpoint(c) => to_record(CheckpointRecord {
                format: i32::try_from(c.format).unwrap_or(i32::MAX),
                events_end: c.events_end,
                clock_ms: c.clock,
                window_ms: c.window_ms,
                aggregates: signed(c.aggregates),
            }),
            Self::CommandUse(u) => to_record(CommandUseRecord {
                command_id: u.command_id.clone(),
                aggregate_id: u.aggregate_id.clone(),
                version: signed(u.version),
                event_types: u.event_types.clone(),
                offsets: u.offsets.clone(),
                request_hash: u.request_hash.clone(),
                used_at_ms: u.used_at,
            }),
            Self::Customer(head, c) => to_record(CustomerSnapshot {
                head: HeadRecord::of(head),
                customer: c.as_ref().map(customer_record),
            }),
            Self::InventoryItem(head, i) => to_record(InventoryItemSnapshot {
                head: HeadRecord::of(head),
                item: i.as_ref().map(item_record),
            }),
            Self::Order(head, o) => to_record(OrderSnapshot {
                head: HeadRecord::of(head),
                order: o.as_ref().map(order_record),
            }),
            Self::OrderSaga(head, s) => to_record(OrderSagaSnapshot {
                head: HeadRecord::of(head),
                saga: s.as_ref().map(saga_record),
            }),
            Self::IdempotencyKey(head, c) => to_record(IdempotencyKeySnapshot {
                head: HeadRecord::of(head),
                claim: c.as_ref().map(|c| ClaimRecord {
                    route: c.route.clone(),
                    expires_at_ms: c.expires_at_ms,
                }),
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        Ok(match event_type {
            "PartitionCheckpoint" => {
                let r: CheckpointRecord = from_record(event_type, value)?;
                Self::Checkpoint(Checkpoint {
                    format: u32::try_from(r.format)
                        .map_err(|_| invalid("format", r.format.to_string()))?,
                    events_end: r.events_end,
                    clock: r.clock_ms,
                    window_ms: r.window_ms,
                    aggregates: count("aggregates", r.aggregates)?,
                })
            }
            "CommandUse" => {
                let r: CommandUseRecord = from_record(event_type, value)?;
                Self::CommandUse(CommandUse {
                    version: count("version", r.version)?,
                    command_id: r.command_id,
                    aggregate_id: r.aggregate_id,
                    event_types: r.event_types,
                    offsets: r.offsets,
                    request_hash: r.request_hash,
                    used_at: r.used_at_ms,
                })
            }
            "CustomerSnapshot" => {
                let r: CustomerSnapshot = from_record(event_type, value)?;
                let state = r.customer.as_ref().map(customer_from).transpose()?;
                Self::Customer(r.head.into_head()?, state)
            }
            "InventoryItemSnapshot" => {
                let r: InventoryItemSnapshot = from_record(event_type, value)?;
                let state = r.item.as_ref().map(item_from).transpose()?;
                Self::InventoryItem(r.head.into_head()?, state)
            }
            "OrderSnapshot" => {
                let r: OrderSnapshot = from_record(event_type, value)?;
                let state = r.order.as_ref().map(order_from).transpose()?;
                Self::Order(r.head.into_head()?, state)
            }
            "OrderSagaSnapshot" => {
                let r: OrderSagaSnapshot = from_record(event_type, value)?;
                let state = r.saga.as_ref().map(saga_from).transpose()?;
                Self::OrderSaga(r.head.into_head()?, state)
            }
            "IdempotencyKeySnapshot" => {
                let r: IdempotencyKeySnapshot = from_record(event_type, value)?;
                let claim = r.claim.map(|c| Claim {
                    route: c.route,
                    expires_at_ms: c.expires_at_ms,
                });
                Self::IdempotencyKey(r.head.into_head()?, claim)
            }
            other => return Err(DecodeError::UnhandledEventType(other.to_owned())),
        })
    }
}
