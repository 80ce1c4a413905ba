//! Rules of the order aggregate, one given/when/then test each.

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
