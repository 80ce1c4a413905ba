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
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::testing::Scenario;
    use crate::values::Currency;

    type Given = Scenario<OrderAggregate>;
    const ID: u128 = 7;

    fn line(s: &str, n: i64, price: Money) -> OrderLine {
        OrderLine {
            sku: sku(s),
            quantity: qty(n),
            unit_price: price,
        }
    }

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced {
            order_id: order_id(ID),
            customer_id: customer_id("c-1"),
            lines: vec![line("apple", 2, usd(150)), line("pear", 1, usd(99))],
            total: usd(399),
        }
    }

    fn approved() -> OrderEvent {
        OrderEvent::OrderApproved {
            order_id: order_id(ID),
        }
    }

    fn rejected() -> OrderEvent {
        OrderEvent::OrderRejected {
            order_id: order_id(ID),
            reason: RejectionReason::OutOfStock,
            detail: String::new(),
        }
    }

    fn cancellation_requested() -> OrderEvent {
        OrderEvent::OrderCancellationRequested {
            order_id: order_id(ID),
            reason: None,
        }
    }

    fn cancelled() -> OrderEvent {
        OrderEvent::OrderCancelled {
            order_id: order_id(ID),
        }
    }

    fn place(lines: Vec<OrderLine>) -> OrderCommand {
        OrderCommand::Place {
            order_id: order_id(ID),
            customer_id: customer_id("c-1"),
            lines,
        }
    }

    fn status(state: OrderState) -> OrderStatus {
        match state {
            OrderState::Placed(order) => order.status,
            OrderState::NotPlaced => panic!("not placed"),
        }
    }

    fn cancel() -> OrderCommand {
        OrderCommand::RequestCancellation {
            order_id: order_id(ID),
            reason: Some(CancellationReason::try_from("changed my mind").unwrap()),
        }
    }

    #[test]
    fn places_a_pending_order_with_its_total() {
        let state = Given::given(vec![])
            .when(place(vec![
                line("apple", 2, usd(150)),
                line("pear", 1, usd(99)),
            ]))
            .then(vec![placed()]);
        assert_eq!(status(state), OrderStatus::Pending);
    }

    #[test]
    fn refuses_an_order_without_lines() {
        Given::given(vec![])
            .when(place(vec![]))
            .then_error(DomainError::EmptyOrder);
    }

    #[test]
    fn refuses_an_order_in_two_currencies() {
        Given::given(vec![])
            .when(place(vec![
                line("apple", 1, usd(1)),
                line("pear", 1, eur(1)),
            ]))
            .then_error(DomainError::MixedCurrencies {
                line: 1,
                expected: Currency::try_from("USD").unwrap(),
                found: Currency::try_from("EUR").unwrap(),
            });
    }

    #[test]
    fn refuses_an_order_that_repeats_a_sku() {
        Given::given(vec![])
            .when(place(vec![
                line("apple", 1, usd(1)),
                line("apple", 2, usd(1)),
            ]))
            .then_error(DomainError::DuplicateSku {
                line: 1,
                sku: sku("apple"),
            });
    }

    #[test]
    fn refuses_an_order_whose_total_overflows() {
        Given::given(vec![])
            .when(place(vec![line("apple", 2, usd(i64::MAX / 2 + 1))]))
            .then_error(DomainError::TotalOutOfRange);
    }

    #[test]
    fn refuses_to_place_the_same_order_twice() {
        Given::given(vec![placed()])
            .when(place(vec![line("apple", 1, usd(1))]))
            .then_error(DomainError::AlreadyExists {
                kind: AggregateKind::Order,
                id: order_id(ID).to_string(),
            });
    }

    #[test]
    fn approves_a_pending_order_once() {
        assert_eq!(
            status(
                Given::given(vec![placed()])
                    .when(OrderCommand::Approve {
                        order_id: order_id(ID)
                    })
                    .then(vec![approved()])
            ),
            OrderStatus::Approved
        );
        Given::given(vec![placed(), approved()])
            .when(OrderCommand::Approve {
                order_id: order_id(ID),
            })
            .then(vec![]);
    }

    #[test]
    fn does_not_approve_a_rejected_or_cancelled_order() {
        Given::given(vec![placed(), rejected()])
            .when(OrderCommand::Approve {
                order_id: order_id(ID),
            })
            .then_error(DomainError::InvalidTransition {
                status: OrderStatus::Rejected,
                action: "approve",
            });
        Given::given(vec![placed(), cancellation_requested(), cancelled()])
            .when(OrderCommand::Approve {
                order_id: order_id(ID),
            })
            .then_error(DomainError::InvalidTransition {
                status: OrderStatus::Cancelled,
                action: "approve",
            });
    }

    #[test]
    fn does_not_approve_an_order_whose_cancellation_is_pending() {
        Given::given(vec![placed(), cancellation_requested()])
            .when(OrderCommand::Approve {
                order_id: order_id(ID),
            })
            .then_error(DomainError::CancellationPending { action: "approve" });
    }

    #[test]
    fn rejects_a_pending_order_with_a_reason_once() {
        let state = Given::given(vec![placed()])
            .when(OrderCommand::Reject {
                order_id: order_id(ID),
                reason: RejectionReason::OutOfStock,
                detail: String::new(),
            })
            .then(vec![rejected()]);
        let OrderState::Placed(order) = state else {
            panic!()
        };
        assert_eq!(
            order.rejection,
            Some((RejectionReason::OutOfStock, String::new()))
        );
        Given::given(vec![placed(), rejected()])
            .when(OrderCommand::Reject {
                order_id: order_id(ID),
                reason: RejectionReason::Timeout,
                detail: String::new(),
            })
            .then(vec![]);
    }

    #[test]
    fn a_rejection_wins_over_a_pending_cancellation() {
        Given::given(vec![placed(), cancellation_requested()])
            .when(OrderCommand::Reject {
                order_id: order_id(ID),
                reason: RejectionReason::OutOfStock,
                detail: String::new(),
            })
            .then(vec![rejected()]);
    }

    #[test]
    fn does_not_reject_an_approved_order() {
        Given::given(vec![placed(), approved()])
            .when(OrderCommand::Reject {
                order_id: order_id(ID),
                reason: RejectionReason::Timeout,
                detail: String::new(),
            })
            .then_error(DomainError::InvalidTransition {
                status: OrderStatus::Approved,
                action: "reject",
            });
    }

    #[test]
    fn a_pending_order_can_be_cancelled() {
        let reason = Some(CancellationReason::try_from("changed my mind").unwrap());
        Given::given(vec![placed()]).when(cancel()).then(vec![
            OrderEvent::OrderCancellationRequested {
                order_id: order_id(ID),
                reason,
            },
        ]);
        let state = Given::given(vec![placed(), cancellation_requested()])
            .when(OrderCommand::ConfirmCancellation {
                order_id: order_id(ID),
            })
            .then(vec![cancelled()]);
        assert_eq!(status(state), OrderStatus::Cancelled);
    }

    #[test]
    fn an_approved_order_can_be_cancelled() {
        Given::given(vec![placed(), approved()])
            .when(OrderCommand::RequestCancellation {
                order_id: order_id(ID),
                reason: None,
            })
            .then(vec![cancellation_requested()]);
        Given::given(vec![placed(), approved(), cancellation_requested()])
            .when(OrderCommand::ConfirmCancellation {
                order_id: order_id(ID),
            })
            .then(vec![cancelled()]);
    }

    #[test]
    fn cancelling_twice_emits_nothing_more() {
        Given::given(vec![placed(), cancellation_requested()])
            .when(cancel())
            .then(vec![]);
        Given::given(vec![placed(), cancellation_requested(), cancelled()])
            .when(OrderCommand::ConfirmCancellation {
                order_id: order_id(ID),
            })
            .then(vec![]);
    }

    #[test]
    fn rejected_and_cancelled_orders_cannot_be_cancelled() {
        Given::given(vec![placed(), rejected()])
            .when(cancel())
            .then_error(DomainError::InvalidTransition {
                status: OrderStatus::Rejected,
                action: "cancel",
            });
        Given::given(vec![placed(), cancellation_requested(), cancelled()])
            .when(cancel())
            .then_error(DomainError::InvalidTransition {
                status: OrderStatus::Cancelled,
                action: "cancel",
            });
    }

    #[test]
    fn a_cancellation_cannot_be_confirmed_before_it_is_requested() {
        Given::given(vec![placed()])
            .when(OrderCommand::ConfirmCancellation {
                order_id: order_id(ID),
            })
            .then_error(DomainError::InvalidTransition {
                status: OrderStatus::Pending,
                action: "confirm the cancellation of",
            });
    }

    #[test]
    fn an_unknown_order_cannot_be_cancelled() {
        Given::given(vec![])
            .when(cancel())
            .then_error(DomainError::NotFound {
                kind: AggregateKind::Order,
                id: order_id(ID).to_string(),
            });
    }

    #[test]
    fn rejection_codes_round_trip() {
        for reason in RejectionReason::ALL {
            assert_eq!(RejectionReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(RejectionReason::from_code("NOPE"), None);
    }
}
