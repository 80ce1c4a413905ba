//! Order: placed PENDING, then APPROVED or REJECTED by the saga; PENDING or APPROVED orders can
//! be CANCELLED on request (the saga releases what the order holds, then confirms).

use std::collections::HashSet;
use std::fmt;

use crate::aggregate::{Aggregate, AggregateKind};
use crate::values::{CancellationReason, CustomerId, Money, OrderId, Quantity, Sku};
use crate::DomainError;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Approved,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the saga rejected an order; the codes are part of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionReason {
    OutOfStock,
    CreditLimitExceeded,
    UnknownSku,
    UnknownCustomer,
    Timeout,
}

impl RejectionReason {
    pub const ALL: [RejectionReason; 5] = [
        Self::OutOfStock,
        Self::CreditLimitExceeded,
        Self::UnknownSku,
        Self::UnknownCustomer,
        Self::Timeout,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::CreditLimitExceeded => "CREDIT_LIMIT_EXCEEDED",
            Self::UnknownSku => "UNKNOWN_SKU",
            Self::UnknownCustomer => "UNKNOWN_CUSTOMER",
            Self::Timeout => "TIMEOUT",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Place {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<OrderLine>,
    },
    Approve {
        order_id: OrderId,
    },
    Reject {
        order_id: OrderId,
        reason: RejectionReason,
        detail: String,
    },
    RequestCancellation {
        order_id: OrderId,
        reason: Option<CancellationReason>,
    },
    ConfirmCancellation {
        order_id: OrderId,
    },
}

impl OrderCommand {
    pub fn order_id(&self) -> OrderId {
        match self {
            Self::Place { order_id, .. }
            | Self::Approve { order_id }
            | Self::Reject { order_id, .. }
            | Self::RequestCancellation { order_id, .. }
            | Self::ConfirmCancellation { order_id } => *order_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderEvent {
    OrderPlaced {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<OrderLine>,
        total: Money,
    },
    OrderApproved {
        order_id: OrderId,
    },
    OrderRejected {
        order_id: OrderId,
        reason: RejectionReason,
        /// Human-readable explanation (added in schema v2; empty in older records).
        detail: String,
    },
    OrderCancellationRequested {
        order_id: OrderId,
        reason: Option<CancellationReason>,
    },
    OrderCancelled {
        order_id: OrderId,
    },
}

/// A placed order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub status: OrderStatus,
    pub rejection: Option<(RejectionReason, String)>,
    /// `Some` once a cancellation was requested (with the caller's reason, if any).
    pub cancellation: Option<Option<CancellationReason>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum OrderState {
    #[default]
    NotPlaced,
    Placed(Order),
}

/// The order aggregate.
#[derive(Debug)]
pub enum OrderAggregate {}

impl Aggregate for OrderAggregate {
    const KIND: AggregateKind = AggregateKind::Order;
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;

    fn decide(state: &OrderState, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        let order = match (state, command) {
            (
                OrderState::NotPlaced,
                OrderCommand::Place {
                    order_id,
                    customer_id,
                    lines,
                },
            ) => return place(order_id, customer_id, lines),
            (OrderState::Placed(order), OrderCommand::Place { .. }) => {
                return Err(DomainError::AlreadyExists {
                    kind: AggregateKind::Order,
                    id: order.order_id.to_string(),
                })
            }
            (OrderState::NotPlaced, command) => {
                return Err(DomainError::NotFound {
                    kind: AggregateKind::Order,
                    id: command.order_id().to_string(),
                })
            }
            (OrderState::Placed(order), command) => (order, command),
        };
        match order {
            (order, OrderCommand::Approve { order_id }) => approve(order, order_id),
            (
                order,
                OrderCommand::Reject {
                    order_id,
                    reason,
                    detail,
                },
            ) => reject(order, order_id, reason, detail),
            (order, OrderCommand::RequestCancellation { order_id, reason }) => {
                request_cancellation(order, order_id, reason)
            }
            (order, OrderCommand::ConfirmCancellation { order_id }) => {
                confirm_cancellation(order, order_id)
            }
            (_, OrderCommand::Place { .. }) => Ok(vec![]),
        }
    }

    fn evolve(state: OrderState, event: &OrderEvent) -> OrderState {
        match (state, event) {
            (
                _,
                OrderEvent::OrderPlaced {
                    order_id,
                    customer_id,
                    lines,
                    total,
                },
            ) => OrderState::Placed(Order {
                order_id: *order_id,
                customer_id: customer_id.clone(),
                lines: lines.clone(),
                total: *total,
                status: OrderStatus::Pending,
                rejection: None,
                cancellation: None,
            }),
            (OrderState::Placed(mut order), event) => {
                match event {
                    OrderEvent::OrderApproved { .. } => order.status = OrderStatus::Approved,
                    OrderEvent::OrderRejected { reason, detail, .. } => {
                        order.status = OrderStatus::Rejected;
                        order.rejection = Some((*reason, detail.clone()));
                    }
                    OrderEvent::OrderCancellationRequested { reason, .. } => {
                        order.cancellation = Some(reason.clone());
                    }
                    OrderEvent::OrderCancelled { .. } => order.status = OrderStatus::Cancelled,
                    OrderEvent::OrderPlaced { .. } => {}
                }
                OrderState::Placed(order)
            }
            (state, _) => state,
        }
    }
}

/// Validates the lines (at least one, one currency, each sku once) and computes the total.
fn place(
    order_id: OrderId,
    customer_id: CustomerId,
    lines: Vec<OrderLine>,
) -> Result<Vec<OrderEvent>, DomainError> {
    let first = lines.first().ok_or(DomainError::EmptyOrder)?;
    let currency = first.unit_price.currency();
    let mut seen = HashSet::new();
    let mut total = Money::zero(currency);
    for (line, order_line) in lines.iter().enumerate() {
        if order_line.unit_price.currency() != currency {
            return Err(DomainError::MixedCurrencies {
                line,
                expected: currency,
                found: order_line.unit_price.currency(),
            });
        }
        if !seen.insert(&order_line.sku) {
            return Err(DomainError::DuplicateSku {
                line,
                sku: order_line.sku.clone(),
            });
        }
        total = total.checked_add(order_line.unit_price.checked_mul(order_line.quantity)?)?;
    }
    Ok(vec![OrderEvent::OrderPlaced {
        order_id,
        customer_id,
        lines,
        total,
    }])
}

fn approve(order: &Order, order_id: OrderId) -> Result<Vec<OrderEvent>, DomainError> {
    match order.status {
        OrderStatus::Approved => Ok(vec![]),
        OrderStatus::Pending if order.cancellation.is_some() => {
            Err(DomainError::CancellationPending { action: "approve" })
        }
        OrderStatus::Pending => Ok(vec![OrderEvent::OrderApproved { order_id }]),
        status => Err(DomainError::InvalidTransition {
            status,
            action: "approve",
        }),
    }
}

/// A rejection wins over a pending cancellation: the saga decided first.
fn reject(
    order: &Order,
    order_id: OrderId,
    reason: RejectionReason,
    detail: String,
) -> Result<Vec<OrderEvent>, DomainError> {
    match order.status {
        OrderStatus::Rejected => Ok(vec![]),
        OrderStatus::Pending => Ok(vec![OrderEvent::OrderRejected {
            order_id,
            reason,
            detail,
        }]),
        status => Err(DomainError::InvalidTransition {
            status,
            action: "reject",
        }),
    }
}

fn request_cancellation(
    order: &Order,
    order_id: OrderId,
    reason: Option<CancellationReason>,
) -> Result<Vec<OrderEvent>, DomainError> {
    match order.status {
        OrderStatus::Pending | OrderStatus::Approved if order.cancellation.is_some() => Ok(vec![]),
        OrderStatus::Pending | OrderStatus::Approved => {
            Ok(vec![OrderEvent::OrderCancellationRequested {
                order_id,
                reason,
            }])
        }
        status => Err(DomainError::InvalidTransition {
            status,
            action: "cancel",
        }),
    }
}

fn confirm_cancellation(order: &Order, order_id: OrderId) -> Result<Vec<OrderEvent>, DomainError> {
    match (order.status, &order.cancellation) {
        (OrderStatus::Cancelled, _) => Ok(vec![]),
        (OrderStatus::Pending | OrderStatus::Approved, Some(_)) => {
            Ok(vec![OrderEvent::OrderCancelled { order_id }])
        }
        (status, _) => Err(DomainError::InvalidTransition {
            status,
            action: "confirm the cancellation of",
        }),
    }
}

#[cfg(test)]
mod tests;
