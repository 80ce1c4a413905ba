//! The saga's records: every saga event and every addressed input round-trips, and the
//! families that share record names (inventory's and the saga's `StockReserved`) stay apart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use domain::inventory::InventoryEvent;
use domain::order::{OrderLine, RejectionReason};
use domain::saga::{
    CreditReply, SagaEvent, SagaInput, SagaMessage, SagaOutcome, SagaStep, StockReply,
};
use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use schemas::registry::registry;
use schemas::{decode, encode, peek, DecodeError, WireRecord};

fn usd(amount: i64) -> Money {
    Money::new(amount, Currency::try_from("USD").unwrap()).unwrap()
}
fn order() -> OrderId {
    OrderId::try_from("0190a5a0-0000-7000-8000-000000000001").unwrap()
}
fn lines() -> Vec<OrderLine> {
    vec![OrderLine {
        sku: Sku::try_from("apple").unwrap(),
        quantity: Quantity::try_from(3).unwrap(),
        unit_price: usd(120),
    }]
}

fn round_trip<E: WireRecord + PartialEq + std::fmt::Debug>(records: Vec<E>) {
    for record in records {
        let bytes = encode(&record).unwrap();
        let entry = peek(&bytes).unwrap();
        assert_eq!(entry.family, E::FAMILY);
        assert_eq!(entry.event_type, record.event_type());
        assert_eq!(decode::<E>(&bytes).unwrap(), record);
    }
}

#[test]
fn every_saga_event_round_trips() {
    round_trip(vec![
        SagaEvent::SagaStarted {
            order_id: order(),
            customer_id: CustomerId::try_from("c-1").unwrap(),
            lines: lines(),
            total: usd(360),
        },
        SagaEvent::StockReservationRequested { line: 0 },
        SagaEvent::StockReserved { line: 1 },
        SagaEvent::StockReservationFailed {
            line: 2,
            reason: RejectionReason::UnknownSku,
        },
        SagaEvent::CreditReservationRequested,
        SagaEvent::CreditReserved,
        SagaEvent::CreditReservationFailed {
            reason: RejectionReason::CreditLimitExceeded,
        },
        SagaEvent::ApprovalRequested,
        SagaEvent::SagaApproved,
        SagaEvent::StepTimedOut {
            step: SagaStep::ReserveStock { line: 4 },
        },
        SagaEvent::CompensationStarted {
            outcome: SagaOutcome::Reject {
                reason: RejectionReason::Timeout,
                detail: "no answer".into(),
            },
        },
        SagaEvent::CompensationStarted {
            outcome: SagaOutcome::Cancel,
        },
        SagaEvent::StockReleaseRequested {
            line: 0,
            attempt: 2,
        },
        SagaEvent::StockReleased { line: 0 },
        SagaEvent::CreditReleaseRequested { attempt: 1 },
        SagaEvent::CreditReleased,
        SagaEvent::RejectionRequested {
            reason: RejectionReason::OutOfStock,
            detail: "line 0".into(),
        },
        SagaEvent::CancellationConfirmationRequested,
        SagaEvent::SagaRejected {
            reason: RejectionReason::UnknownCustomer,
        },
        SagaEvent::SagaCancelled,
    ]);
}

#[test]
fn every_saga_input_round_trips_with_its_address() {
    let inputs = vec![
        SagaInput::OrderPlaced {
            order_id: order(),
            customer_id: CustomerId::try_from("c-1").unwrap(),
            lines: lines(),
            total: usd(360),
        },
        SagaInput::StockReservation {
            line: 1,
            reply: StockReply::OutOfStock,
        },
        SagaInput::CreditReservation {
            reply: CreditReply::UnknownCustomer,
        },
        SagaInput::StockReleased { line: 3 },
        SagaInput::CreditReleased,
        SagaInput::OrderApproved,
        SagaInput::OrderRejected,
        SagaInput::OrderCancelled,
        SagaInput::CancellationRequested,
        SagaInput::DeadlinePassed {
            step: SagaStep::ReleaseCredit,
        },
    ];
    round_trip(
        inputs
            .into_iter()
            .map(|input| SagaMessage {
                saga_id: order(),
                input,
            })
            .collect(),
    );
}

#[test]
fn the_saga_and_inventory_keep_their_own_stock_reserved() {
    let saga = encode(&SagaEvent::StockReserved { line: 0 }).unwrap();
    let inventory = encode(&InventoryEvent::StockReserved {
        sku: Sku::try_from("apple").unwrap(),
        order_id: order(),
        quantity: Quantity::try_from(1).unwrap(),
    })
    .unwrap();
    assert_ne!(saga[2..10], inventory[2..10], "different fingerprints");
    assert!(matches!(
        decode::<InventoryEvent>(&saga),
        Err(DecodeError::WrongAggregate { .. })
    ));
    assert_eq!(
        registry()
            .latest("order-sagas", "StockReserved")
            .unwrap()
            .family,
        "order-sagas"
    );
}
