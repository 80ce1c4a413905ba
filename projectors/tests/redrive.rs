//! Guarantee 6 end to end: a handler that keeps failing (the database refuses the row) is retried
//! a bounded number of times, then dead-lettered with its attempt count; its aggregate's later
//! events wait, parked; once the cause is fixed, `projectors dlq redrive` applies the dead letter
//! and everything parked behind it, in order, and the aggregate flows again.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use domain::inventory::InventoryEvent;
use domain::values::{Quantity, Sku};
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

/// (dlq partition, dlq offset) of the dead letter of `sku`'s event at `source_offset`.
fn dead_letter_of(world: &World, sku: &str, source_offset: i64) -> (String, String) {
    let listed = cli(world, &["dlq", "list"]);
    let partition = platform::partitioner::partition_for(sku.as_bytes(), PARTITIONS).to_string();
    let row = listed
        .lines()
        .filter(|l| l.contains(".dlq"))
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols[4] == partition && cols[5] == source_offset.to_string())
        .unwrap_or_else(|| panic!("{listed}"));
    (row[1].clone(), row[2].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_can_be_skipped_explicitly_and_its_aggregate_flows_on() {
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
        .append(AggregateKind::InventoryItem, "apple", add("apple", 10))
        .await;
    let poison = world
        .log
        .append(AggregateKind::InventoryItem, "apple", add("apple", 200))
        .await;
    world
        .log
        .append(AggregateKind::InventoryItem, "apple", add("apple", 5))
        .await;
    world.caught_up().await;
    assert_eq!(on_hand(&world, "apple").await, Some(10));

    let topic = world.kafka.topics().events(AggregateKind::InventoryItem);
    let (partition, offset) = dead_letter_of(&world, "apple", poison);
    let skipped = cli(
        &world,
        &[
            "dlq",
            "skip",
            &topic,
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
    );
    assert!(
        skipped.contains("skipped; 1 parked events applied"),
        "{skipped}"
    );
    assert_eq!(
        on_hand(&world, "apple").await,
        Some(15),
        "the skipped event's effect is absent, the parked one applied"
    );
    let version: i64 = sqlx::query_scalar("SELECT version FROM inventory WHERE sku = 'apple'")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(version, 3, "the chain moved past the skipped version");
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_anomalies WHERE kind = 'skipped'")
            .fetch_one(world.pool())
            .await
            .unwrap();
    assert_eq!(audited, 1);
    world
        .log
        .append(AggregateKind::InventoryItem, "apple", add("apple", 1))
        .await;
    world.caught_up().await;
    assert_eq!(on_hand(&world, "apple").await, Some(16), "it flows again");

    // The first event of an aggregate cannot be skipped: there is nothing to move past it.
    let first = world
        .log
        .append(AggregateKind::InventoryItem, "melon", add("melon", 500))
        .await;
    world.caught_up().await;
    let (partition, offset) = dead_letter_of(&world, "melon", first);
    let (ok, output) = cli_result(
        &world,
        &[
            "dlq",
            "skip",
            &topic,
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
    );
    assert!(!ok && output.contains("first event"), "{output}");
    live.cancel();
}
