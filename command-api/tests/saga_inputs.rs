//! The saga's own write path (guarantees 2, 4 and 10 for `order-sagas`): only the orchestrator's
//! role may record saga inputs; an undecodable input, an answer for a line the order does not
//! have and an answer for a saga that never started append nothing; a valid input from the
//! orchestrator starts the saga. (A start naming another order than its saga cannot be written:
//! the wire record carries one order id; the domain refuses it for in-process callers.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use command_api::bus::CommandBus;
use domain::order::OrderLine;
use domain::saga::{SagaInput, SagaMessage, StockReply};
use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use domain::AggregateKind;
use platform::auth::ROLE_SYSTEM;
use platform::envelope::{Actor, CommandEnvelope, Trace};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::{ReplyOutcome, WireRecord};
use support::*;
use tokio_util::sync::CancellationToken;

fn start(order_id: OrderId) -> SagaInput {
    let usd = Currency::try_from("USD").unwrap();
    SagaInput::OrderPlaced {
        order_id,
        customer_id: CustomerId::try_from("ada").unwrap(),
        lines: vec![OrderLine {
            sku: Sku::try_from("apple").unwrap(),
            quantity: Quantity::try_from(1).unwrap(),
            unit_price: Money::new(100, usd).unwrap(),
        }],
        total: Money::new(100, usd).unwrap(),
    }
}

fn envelope(
    bus: &CommandBus,
    saga_id: OrderId,
    message: &SagaMessage,
    role: &str,
) -> CommandEnvelope {
    bus.envelope(
        uuid::Uuid::now_v7().to_string(),
        message.event_type(),
        saga_id.to_string(),
        Actor {
            subject: "someone".into(),
            role: role.into(),
        },
        Trace {
            correlation_id: "c".into(),
            causation_id: "c".into(),
            traceparent: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_inputs_are_refused_unless_the_orchestrator_sends_them_well_formed() {
    let app = TestApp::spawn().await;
    let kafka = &app.kafka;
    let producer: FutureProducer = platform::kafka::producer_config(&kafka.settings)
        .create()
        .unwrap();
    let bus = CommandBus::start(
        &kafka.settings,
        PARTITIONS,
        producer.clone(),
        "saga-input-test".into(),
        platform::resilience::BreakerPolicy::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let wait = Duration::from_secs(10);
    let sagas = kafka.topics().events(AggregateKind::OrderSaga);
    let saga_id = OrderId::from_uuid(uuid::Uuid::now_v7());
    let valid = SagaMessage {
        saga_id,
        input: start(saga_id),
    };

    // An admin is not the orchestrator.
    let reply = bus
        .send(
            AggregateKind::OrderSaga,
            &envelope(&bus, saga_id, &valid, "admin"),
            &valid,
            wait,
        )
        .await
        .unwrap()
        .expect("a reply");
    assert_eq!(reply.outcome, ReplyOutcome::Forbidden);

    // Bytes that are not a saga input, with a well-formed envelope.
    let garbage = envelope(&bus, saga_id, &valid, ROLE_SYSTEM);
    producer
        .send(
            FutureRecord::to(&kafka.topics().commands(AggregateKind::OrderSaga))
                .key(&garbage.aggregate_id)
                .payload("not a saga input")
                .headers(garbage.to_headers()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    // The orchestrator's well-formed input starts the saga. It reaches the same partition
    // writer after the garbage, so once it is answered the garbage has been handled too.
    let reply = bus
        .send(
            AggregateKind::OrderSaga,
            &envelope(&bus, saga_id, &valid, ROLE_SYSTEM),
            &valid,
            wait,
        )
        .await
        .unwrap()
        .expect("a reply");
    assert_eq!(reply.outcome, ReplyOutcome::Accepted, "{reply:?}");
    assert_eq!(
        reply.event_types,
        ["SagaStarted", "StockReservationRequested"]
    );
    assert_eq!(
        count(kafka, &sagas),
        2,
        "only the valid input appended anything"
    );

    // An answer for a line the order does not have is refused and appends nothing.
    let no_such_line = SagaMessage {
        saga_id,
        input: SagaInput::StockReservation {
            line: 7,
            reply: StockReply::Reserved,
        },
    };
    let reply = bus
        .send(
            AggregateKind::OrderSaga,
            &envelope(&bus, saga_id, &no_such_line, ROLE_SYSTEM),
            &no_such_line,
            wait,
        )
        .await
        .unwrap()
        .expect("a reply");
    assert_eq!(reply.outcome, ReplyOutcome::Rejected);
    assert_eq!(reply.code, Some(schemas::RejectionCode::UnknownLine));
    assert_eq!(
        reply.line,
        Some(7),
        "the rejection names the line it is about"
    );

    // An answer for a saga that never started means nothing and appends nothing.
    let stranger = OrderId::from_uuid(uuid::Uuid::now_v7());
    let orphan = SagaMessage {
        saga_id: stranger,
        input: SagaInput::CreditReleased,
    };
    let reply = bus
        .send(
            AggregateKind::OrderSaga,
            &envelope(&bus, stranger, &orphan, ROLE_SYSTEM),
            &orphan,
            wait,
        )
        .await
        .unwrap()
        .expect("a reply");
    assert_eq!(reply.outcome, ReplyOutcome::Accepted);
    assert!(reply.event_types.is_empty());
    assert_eq!(count(kafka, &sagas), 2);
}
