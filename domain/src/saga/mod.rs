//! The order saga, as pure decisions. The orchestrator feeds it [`SagaInput`]s (participants'
//! replies, the order's own events, deadlines), records the [`SagaEvent`]s it decides, and sends
//! the [`SagaCommand`] each `…Requested` event names. Commands carry a deterministic key
//! (step + attempt), so re-sending after a crash never acts twice.
//!
//! Flow: reserve stock line by line, then credit for the total, then approve. Any refusal or
//! deadline starts a compensation that releases every hold (including a hold whose reply is still
//! outstanding), then asks the order to reject or to confirm its cancellation. A reservation that
//! succeeds after its release was requested is released again, so nothing leaks.

mod addressed;
mod decide;
mod evolve;
mod names;
mod replies;
#[cfg(test)]
mod tests;

pub use addressed::{OrderSagaAggregate, SagaMessage};
pub use names::UnknownName;
pub use replies::{reply_for, ParticipantOutcome};

use crate::customer::CustomerCommand;
use crate::inventory::InventoryCommand;
use crate::order::{OrderCommand, OrderLine, RejectionReason};
use crate::values::{CustomerId, Money, OrderId};

/// What the saga is waiting for, or where it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaPhase {
    ReservingStock {
        line: usize,
    },
    ReservingCredit,
    Approving,
    /// Terminal unless the order's cancellation is requested later.
    Approved,
    /// Releasing holds before the order is rejected or cancelled.
    Compensating {
        outcome: SagaOutcome,
    },
    /// Holds released; waiting for the order to confirm the rejection or cancellation.
    Finishing {
        outcome: SagaOutcome,
    },
    Rejected {
        reason: RejectionReason,
    },
    Cancelled,
}

impl SagaPhase {
    /// A phase the saga leaves only if the order's cancellation is requested (approved) or never.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Approved | Self::Rejected { .. } | Self::Cancelled
        )
    }

    /// The names (`as_str`) of the terminal phases, for readers that keep only the name.
    pub const TERMINAL_NAMES: [&'static str; 3] = ["APPROVED", "REJECTED", "CANCELLED"];

    /// The name (`as_str`) of every phase, in the order a saga goes through them: for gauges
    /// that must drop to 0 when a phase's last saga leaves it.
    pub const NAMES: [&'static str; 8] = [
        "RESERVING_STOCK",
        "RESERVING_CREDIT",
        "APPROVING",
        "APPROVED",
        "COMPENSATING",
        "FINISHING",
        "REJECTED",
        "CANCELLED",
    ];

    /// Stable names for views and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ReservingStock { .. } => "RESERVING_STOCK",
            Self::ReservingCredit => "RESERVING_CREDIT",
            Self::Approving => "APPROVING",
            Self::Approved => "APPROVED",
            Self::Compensating { .. } => "COMPENSATING",
            Self::Finishing { .. } => "FINISHING",
            Self::Rejected { .. } => "REJECTED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// How a compensation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    Reject {
        reason: RejectionReason,
        detail: String,
    },
    Cancel,
}

/// One reservation (a line's stock, or the order's credit) as the saga knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hold {
    #[default]
    NotRequested,
    Requested,
    Held,
    Refused,
    /// A release is outstanding. `again`: a reservation reply arrived meanwhile, so one more
    /// release follows this one (participants process them in any order; releases are idempotent).
    Releasing {
        attempt: u32,
        again: bool,
    },
    Released {
        attempt: u32,
    },
}

/// A step the saga asks a participant to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaStep {
    ReserveStock { line: usize },
    ReserveCredit,
    Approve,
    ReleaseStock { line: usize },
    ReleaseCredit,
    Reject,
    ConfirmCancellation,
}

impl SagaStep {
    /// Stable step names for views, metrics and command keys.
    pub fn name(&self) -> String {
        match self {
            Self::ReserveStock { line } => format!("reserve-stock/{line}"),
            Self::ReserveCredit => "reserve-credit".into(),
            Self::Approve => "approve".into(),
            Self::ReleaseStock { line } => format!("release-stock/{line}"),
            Self::ReleaseCredit => "release-credit".into(),
            Self::Reject => "reject".into(),
            Self::ConfirmCancellation => "confirm-cancellation".into(),
        }
    }
}

/// A participant's answer to a stock reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockReply {
    Reserved,
    OutOfStock,
    UnknownSku,
}

/// A participant's answer to a credit reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditReply {
    Reserved,
    LimitExceeded,
    UnknownCustomer,
}

/// Everything that can move a saga.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaInput {
    OrderPlaced {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<OrderLine>,
        total: Money,
    },
    StockReservation {
        line: usize,
        reply: StockReply,
    },
    CreditReservation {
        reply: CreditReply,
    },
    /// A release command completed (whether or not anything was still held).
    StockReleased {
        line: usize,
    },
    CreditReleased,
    OrderApproved,
    OrderRejected,
    OrderCancelled,
    CancellationRequested,
    /// A step's reply did not come within its timeout.
    DeadlinePassed {
        step: SagaStep,
    },
}

/// Facts the saga records, in its own stream. `…Requested` events each name one command.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaEvent {
    SagaStarted {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<OrderLine>,
        total: Money,
    },
    StockReservationRequested {
        line: usize,
    },
    StockReserved {
        line: usize,
    },
    StockReservationFailed {
        line: usize,
        reason: RejectionReason,
    },
    CreditReservationRequested,
    CreditReserved,
    CreditReservationFailed {
        reason: RejectionReason,
    },
    ApprovalRequested,
    SagaApproved,
    StepTimedOut {
        step: SagaStep,
    },
    CompensationStarted {
        outcome: SagaOutcome,
    },
    StockReleaseRequested {
        line: usize,
        attempt: u32,
    },
    StockReleased {
        line: usize,
    },
    CreditReleaseRequested {
        attempt: u32,
    },
    CreditReleased,
    RejectionRequested {
        reason: RejectionReason,
        detail: String,
    },
    CancellationConfirmationRequested,
    SagaRejected {
        reason: RejectionReason,
    },
    SagaCancelled,
}

impl SagaEvent {
    /// Events that ask a participant for something (each names one [`SagaCommand`]).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Self::StockReservationRequested { .. }
                | Self::CreditReservationRequested
                | Self::ApprovalRequested
                | Self::StockReleaseRequested { .. }
                | Self::CreditReleaseRequested { .. }
                | Self::RejectionRequested { .. }
                | Self::CancellationConfirmationRequested
        )
    }

    /// The name of the phase this event moves the saga to (`SagaPhase::as_str`), for readers
    /// that keep the phase without the whole saga (the saga view); `None`: the phase stays.
    pub fn phase_after(&self) -> Option<&'static str> {
        Some(match self {
            Self::SagaStarted { .. } | Self::StockReservationRequested { .. } => "RESERVING_STOCK",
            Self::CreditReservationRequested => "RESERVING_CREDIT",
            Self::ApprovalRequested => "APPROVING",
            Self::SagaApproved => "APPROVED",
            Self::CompensationStarted { .. } => "COMPENSATING",
            Self::RejectionRequested { .. } | Self::CancellationConfirmationRequested => {
                "FINISHING"
            }
            Self::SagaRejected { .. } => "REJECTED",
            Self::SagaCancelled => "CANCELLED",
            _ => return None,
        })
    }

    /// Whether this event (after `previous`) is progress: a participant answered or the saga
    /// moved on. A timeout and the re-request right after it are not, so a saga whose
    /// participant never answers is told apart from a slow one (it is *stuck*).
    pub fn is_progress(&self, previous: Option<&SagaEvent>) -> bool {
        match self {
            Self::StepTimedOut { .. } => false,
            event => !(event.is_request() && matches!(previous, Some(Self::StepTimedOut { .. }))),
        }
    }
}

/// A command the saga sends, with the step and attempt that make its id deterministic.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaCommand {
    pub step: SagaStep,
    pub attempt: u32,
    pub command: ParticipantCommand,
}

impl SagaCommand {
    /// Unique within the saga and the same on every re-send: `<step>#<attempt>`.
    pub fn key(&self) -> String {
        format!("{}#{}", self.step.name(), self.attempt)
    }
}

/// The participant a saga command goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum ParticipantCommand {
    Inventory(InventoryCommand),
    Customer(CustomerCommand),
    Order(OrderCommand),
}

/// A running (or finished) order saga.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderSaga {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub stock: Vec<Hold>,
    pub credit: Hold,
    pub phase: SagaPhase,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum SagaState {
    #[default]
    NotStarted,
    Running(OrderSaga),
}

impl OrderSaga {
    /// The steps whose reply is outstanding; the orchestrator puts a deadline on each.
    pub fn awaiting(&self) -> Vec<SagaStep> {
        let mut steps = Vec::new();
        match &self.phase {
            SagaPhase::ReservingStock { line } => {
                steps.push(SagaStep::ReserveStock { line: *line })
            }
            SagaPhase::ReservingCredit => steps.push(SagaStep::ReserveCredit),
            SagaPhase::Approving => steps.push(SagaStep::Approve),
            SagaPhase::Finishing {
                outcome: SagaOutcome::Reject { .. },
            } => steps.push(SagaStep::Reject),
            SagaPhase::Finishing {
                outcome: SagaOutcome::Cancel,
            } => steps.push(SagaStep::ConfirmCancellation),
            _ => {}
        }
        for (line, hold) in self.stock.iter().enumerate() {
            if matches!(hold, Hold::Releasing { .. }) {
                steps.push(SagaStep::ReleaseStock { line });
            }
        }
        if matches!(self.credit, Hold::Releasing { .. }) {
            steps.push(SagaStep::ReleaseCredit);
        }
        steps
    }

    /// The command a recorded event asks for, if any.
    pub fn command_for(&self, event: &SagaEvent) -> Option<SagaCommand> {
        let order_id = self.order_id;
        let (step, attempt, command) = match event {
            SagaEvent::StockReservationRequested { line } => {
                let order_line = self.lines.get(*line)?;
                (
                    SagaStep::ReserveStock { line: *line },
                    1,
                    ParticipantCommand::Inventory(InventoryCommand::ReserveStock {
                        sku: order_line.sku.clone(),
                        order_id,
                        quantity: order_line.quantity,
                    }),
                )
            }
            SagaEvent::StockReleaseRequested { line, attempt } => (
                SagaStep::ReleaseStock { line: *line },
                *attempt,
                ParticipantCommand::Inventory(InventoryCommand::ReleaseStock {
                    sku: self.lines.get(*line)?.sku.clone(),
                    order_id,
                }),
            ),
            SagaEvent::CreditReservationRequested => (
                SagaStep::ReserveCredit,
                1,
                ParticipantCommand::Customer(CustomerCommand::ReserveCredit {
                    customer_id: self.customer_id.clone(),
                    order_id,
                    amount: self.total,
                }),
            ),
            SagaEvent::CreditReleaseRequested { attempt } => (
                SagaStep::ReleaseCredit,
                *attempt,
                ParticipantCommand::Customer(CustomerCommand::ReleaseCredit {
                    customer_id: self.customer_id.clone(),
                    order_id,
                }),
            ),
            SagaEvent::ApprovalRequested => (
                SagaStep::Approve,
                1,
                ParticipantCommand::Order(OrderCommand::Approve { order_id }),
            ),
            SagaEvent::RejectionRequested { reason, detail } => (
                SagaStep::Reject,
                1,
                ParticipantCommand::Order(OrderCommand::Reject {
                    order_id,
                    reason: *reason,
                    detail: detail.clone(),
                }),
            ),
            SagaEvent::CancellationConfirmationRequested => (
                SagaStep::ConfirmCancellation,
                1,
                ParticipantCommand::Order(OrderCommand::ConfirmCancellation { order_id }),
            ),
            _ => return None,
        };
        Some(SagaCommand {
            step,
            attempt,
            command,
        })
    }
}
