//! Guarantee 6 end to end: a handler that keeps failing (the database refuses the row) is retried
//! a bounded number of times, then dead-lettered with its attempt count; its aggregate's later
//! events wait, parked; once the cause is fixed, `projectors dlq redrive` applies the dead letter
//! and everything parked behind it, in order, and the aggregate flows again: for every
//! projection. (Skipping a dead letter for good: `skip.rs`.)

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use domain::customer::CustomerEvent;
use domain::inventory::InventoryEvent;
use domain::order::{OrderEvent, OrderLine};
use domain::saga::SagaEvent;
use domain::values::{Currency, CustomerId, CustomerName, Money, OrderId, Quantity, Sku};
use domain::AggregateKind;
use support::*;

fn add(sku: &str, n: i64) -> InventoryEvent {
    InventoryEvent::StockAdded {
        sku: Sku::try_from(sku).unwrap(),
        quantity: Quantity::try_from(n).unwrap(),
    }
}

async fn on_hand(world: &World, sku: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT on_hand FROM inventory WHERE sku = $1")
        .bind(sku)
        .fetch_optional(world.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_handler_is_dead_lettered_after_bounded_retries_and_redriven_once_fixed() {
    let mut world = World::new().await;
    // The cause: a rule the database enforces that this data breaks (fixed later by the operator).
    sqlx::query(
        "ALTER TABLE inventory_g1 ADD CONSTRAINT stock_below_a_hundred CHECK (on_hand <= 100)",
    )
    .execute(world.pool())
    .await
    .unwrap();
    let live = run_projectors(&world);

    world
        .log
        .append(AggregateKind::InventoryItem, "apple", add("apple", 200))
        .await;
    world
        .log
        .append(AggregateKind::InventoryItem, "apple", add("apple", 5))
        .await;
    world
        .log
        .append(AggregateKind::InventoryItem, "pear", add("pear", 7))
        .await;
    world.caught_up().await;

    assert_eq!(
        on_hand(&world, "pear").await,
        Some(7),
        "other aggregates flow"
    );
    assert_eq!(
        on_hand(&world, "apple").await,
        None,
        "the failing one and what follows it wait"
    );
    let listed = cli(&world, &["dlq", "list"]);
    let row = listed
        .lines()
        .find(|l| l.contains(".dlq"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        row.contains("handler failed") && row.contains("stock_below_a_hundred"),
        "{row}"
    );
    assert!(
        row.split_whitespace().nth(6) == Some("3"),
        "three attempts: {row}"
    );

    let topic = world.kafka.topics().events(AggregateKind::InventoryItem);
    let early = cli(&world, &["dlq", "redrive", &topic]);
    assert!(early.contains("still failing"), "{early}");
    assert_eq!(
        on_hand(&world, "apple").await,
        None,
        "a failed redrive changes nothing"
    );

    sqlx::query("ALTER TABLE inventory_g1 DROP CONSTRAINT stock_below_a_hundred")
        .execute(world.pool())
        .await
        .unwrap();
    let redriven = cli(&world, &["dlq", "redrive", &format!("{topic}.dlq")]);
    assert!(
        redriven.contains("apple: redriven, 2 events applied"),
        "{redriven}"
    );
    assert_eq!(
        on_hand(&world, "apple").await,
        Some(205),
        "the dead letter, then the parked event, in order"
    );
    let again = cli(&world, &["dlq", "redrive", &topic]);
    assert!(
        again.contains("apple: redriven, 0 events applied"),
        "redriving twice applies nothing twice: {again}"
    );
    assert_eq!(on_hand(&world, "apple").await, Some(205));

    world
        .log
        .append(AggregateKind::InventoryItem, "apple", add("apple", 1))
        .await;
    world.caught_up().await;
    assert_eq!(
        on_hand(&world, "apple").await,
        Some(206),
        "the aggregate flows again"
    );
    live.cancel();
}

fn usd(n: i64) -> Money {
    Money::new(n, Currency::try_from("USD").unwrap()).unwrap()
}

fn line() -> OrderLine {
    OrderLine {
        sku: Sku::try_from("apple").unwrap(),
        quantity: Quantity::try_from(1).unwrap(),
        unit_price: usd(10),
    }
}

/// One aggregate of a projection: its id and the column that holds it.
struct Subject {
    projection: &'static str,
    id: String,
    id_column: &'static str,
}

fn subjects() -> Vec<Subject> {
    let order = uuid::Uuid::now_v7().to_string();
    projectors::projections::ALL
        .iter()
        .map(|&projection| {
            let (id, id_column) = match projection {
                "customers" => ("c-1".to_owned(), "customer_id"),
                "inventory" => ("apple".to_owned(), "sku"),
                "orders" => (order.clone(), "order_id"),
                "order_sagas" => (format!("saga-{order}"), "saga_id"),
                other => panic!("a projection this test does not know: {other}"),
            };
            Subject {
                projection,
                id,
                id_column,
            }
        })
        .collect()
}

/// Appends the `n`th event (from 1) of `subject`'s aggregate: each one folds on the one before.
async fn append_nth(log: &mut EventLog, subject: &Subject, n: u32) -> i64 {
    let kind = projectors::projections::kind_of(subject.projection).unwrap();
    let id = subject.id.as_str();
    let order_id = || OrderId::from_uuid(uuid::Uuid::now_v7());
    let customer = || CustomerId::try_from("c-1").unwrap();
    match subject.projection {
        "customers" => {
            let event = if n == 1 {
                CustomerEvent::CustomerRegistered {
                    customer_id: customer(),
                    name: CustomerName::try_from("Ada").unwrap(),
                    credit_limit: usd(1000),
                }
            } else {
                CustomerEvent::CreditReserved {
                    customer_id: customer(),
                    order_id: order_id(),
                    amount: usd(10),
                }
            };
            log.append(kind, id, event).await
        }
        "inventory" => log.append(kind, id, add(id, i64::from(n))).await,
        "orders" => {
            let order = OrderId::from_uuid(uuid::Uuid::parse_str(id).unwrap());
            let event = match n {
                1 => OrderEvent::OrderPlaced {
                    order_id: order,
                    customer_id: customer(),
                    lines: vec![line()],
                    total: usd(10),
                },
                2 => OrderEvent::OrderApproved { order_id: order },
                3 => OrderEvent::OrderCancellationRequested {
                    order_id: order,
                    reason: None,
                },
                _ => OrderEvent::OrderCancelled { order_id: order },
            };
            log.append(kind, id, event).await
        }
        "order_sagas" => {
            let event = match n {
                1 => SagaEvent::SagaStarted {
                    order_id: order_id(),
                    customer_id: customer(),
                    lines: vec![line()],
                    total: usd(10),
                },
                2 => SagaEvent::StockReservationRequested { line: 0 },
                3 => SagaEvent::StockReserved { line: 0 },
                _ => SagaEvent::CreditReservationRequested,
            };
            log.append(kind, id, event).await
        }
        other => panic!("a projection this test does not know: {other}"),
    }
}

async fn version_of(world: &World, subject: &Subject) -> Option<i64> {
    sqlx::query_scalar(&format!(
        "SELECT version FROM {} WHERE {}::text = $1",
        subject.projection, subject.id_column
    ))
    .bind(&subject.id)
    .fetch_optional(world.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_releases_a_parked_aggregate_of_every_projection_order_sagas_included() {
    let mut world = World::new().await;
    let subjects = subjects();
    // The cause, in every read model: no row may pass version 1 (fixed later by the operator).
    for subject in &subjects {
        sqlx::query(&format!(
            "ALTER TABLE {}_g1 ADD CONSTRAINT held_at_one CHECK (version <= 1)",
            subject.projection
        ))
        .execute(world.pool())
        .await
        .unwrap();
    }
    let live = run_projectors(&world);
    let mut poison = Vec::new();
    for subject in &subjects {
        append_nth(&mut world.log, subject, 1).await;
        poison.push(append_nth(&mut world.log, subject, 2).await);
        append_nth(&mut world.log, subject, 3).await;
    }
    world.caught_up().await;
    for subject in &subjects {
        assert_eq!(
            version_of(&world, subject).await,
            Some(1),
            "{}: the failing event and the one behind it wait",
            subject.projection
        );
        let parked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM parked_aggregates WHERE projection = $1 AND aggregate_id = $2",
        )
        .bind(format!("{}@g1", subject.projection))
        .bind(&subject.id)
        .fetch_one(world.pool())
        .await
        .unwrap();
        assert_eq!(parked, 1, "{} is parked", subject.projection);
    }

    for subject in &subjects {
        sqlx::query(&format!(
            "ALTER TABLE {}_g1 DROP CONSTRAINT held_at_one",
            subject.projection
        ))
        .execute(world.pool())
        .await
        .unwrap();
    }
    for (subject, poison) in subjects.iter().zip(&poison) {
        let kind = projectors::projections::kind_of(subject.projection).unwrap();
        let topic = world.kafka.topics().events(kind);
        let redriven = cli(&world, &["dlq", "redrive", &topic]);
        assert!(
            redriven.contains(&format!(
                "{} {}: redriven, 2 events applied, unparked",
                subject.projection, subject.id
            )),
            "{redriven}"
        );
        assert_eq!(version_of(&world, subject).await, Some(3));
        let (ok, refused) = skip_dead_letter(&world, &topic, &subject.id, *poison);
        assert!(
            !ok && refused.contains("not parked"),
            "a redriven dead letter is not skipped afterwards: {refused}"
        );
    }
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_aggregates")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(parked, 0, "every projection's aggregate was released");

    for subject in &subjects {
        append_nth(&mut world.log, subject, 4).await;
    }
    world.caught_up().await;
    for subject in &subjects {
        assert_eq!(
            version_of(&world, subject).await,
            Some(4),
            "{} flows again",
            subject.projection
        );
    }
    live.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_streaming_into_a_parked_aggregate_while_it_is_redriven_all_apply_once_in_order() {
    // A live batch parks an event of aggregate A while an operator's redrive of A runs: the
    // batch must not park it after the redrive read what was parked (the event would be
    // orphaned, A unparked, and every later event of A a version gap).
    let mut world = World::new().await;
    sqlx::query(
        "ALTER TABLE inventory_g1 ADD CONSTRAINT stock_below_a_hundred CHECK (on_hand <= 100)",
    )
    .execute(world.pool())
    .await
    .unwrap();
    let live = run_projectors(&world);
    world
        .log
        .append(AggregateKind::InventoryItem, "apple", add("apple", 200))
        .await;
    for _ in 0..300 {
        let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_aggregates")
            .fetch_one(world.pool())
            .await
            .unwrap();
        if parked > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    sqlx::query("ALTER TABLE inventory_g1 DROP CONSTRAINT stock_below_a_hundred")
        .execute(world.pool())
        .await
        .unwrap();

    let dlq = format!(
        "{}.dlq",
        world.kafka.topics().events(AggregateKind::InventoryItem)
    );
    let mut log = std::mem::replace(&mut world.log, EventLog::detached(&world.kafka));
    let writer = tokio::spawn(async move {
        for _ in 0..300 {
            log.append(AggregateKind::InventoryItem, "apple", add("apple", 1))
                .await;
        }
        log
    });
    while !writer.is_finished() {
        let _ = cli_result(&world, &["dlq", "redrive", &dlq]);
    }
    world.log = writer.await.unwrap();
    // The stream may have parked again after the last redrive: one more releases it.
    cli(&world, &["dlq", "redrive", &dlq]);
    world.caught_up().await;
    assert_eq!(
        on_hand(&world, "apple").await,
        Some(500),
        "the dead letter and all 300 events applied once each"
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM parked_aggregates) + (SELECT count(*) FROM parked_events)",
    )
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert_eq!(left, 0, "nothing left parked");
    let gaps: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_anomalies WHERE kind = 'version-gap'")
            .fetch_one(world.pool())
            .await
            .unwrap();
    assert_eq!(gaps, 0, "no event was orphaned");
    live.cancel();
}
