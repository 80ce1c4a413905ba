//! Guarantee: projections count what the writers count when a command id comes back. They judge
//! the repeated-command part of the log-order rule with the deployment's window on the log's own
//! clock (the greatest record timestamp so far, kept with their offsets in the batch's
//! transaction), so a command run again after the window counts as new, one repeated within it
//! is an inert loser, and the clock carries over from one batch to the next (each batch reads it
//! back from Postgres).

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use chrono::Utc;
use domain::order::{OrderEvent, OrderLine};
use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use domain::AggregateKind;
use platform::log_order::CommandWindow;
use platform::partitioner::partition_for;
use support::*;

const MINUTE: i64 = 60_000;

fn placed(order_id: OrderId) -> OrderEvent {
    let usd = Money::new(100, Currency::try_from("USD").unwrap()).unwrap();
    OrderEvent::OrderPlaced {
        order_id,
        customer_id: CustomerId::try_from("c-1").unwrap(),
        lines: vec![OrderLine {
            sku: Sku::try_from("apple").unwrap(),
            quantity: Quantity::try_from(1).unwrap(),
            unit_price: usd,
        }],
        total: usd,
    }
}

/// `n` order ids on one partition.
fn orders_on_one_partition(n: usize) -> Vec<OrderId> {
    let first = OrderId::from_uuid(uuid::Uuid::now_v7());
    let home = partition_for(first.to_string().as_bytes(), PARTITIONS);
    std::iter::once(first)
        .chain(
            std::iter::repeat_with(|| OrderId::from_uuid(uuid::Uuid::now_v7()))
                .filter(|id| partition_for(id.to_string().as_bytes(), PARTITIONS) == home),
        )
        .take(n)
        .collect()
}

/// Places `order` under `command_id`, its record stamped `at`; then waits for the projections.
async fn place(world: &mut World, order: OrderId, command_id: &str, at: i64) {
    let id = order.to_string();
    let mut envelope = world
        .log
        .next_envelope(AggregateKind::Order, &id, &placed(order));
    envelope.command_id = command_id.to_owned();
    world
        .log
        .raw_at(
            AggregateKind::Order,
            Some(&id),
            Some(envelope.to_headers()),
            &schemas::encode(&placed(order)).unwrap(),
            Some(at),
        )
        .await;
    world.caught_up().await;
}

async fn projected_orders(world: &World) -> Vec<String> {
    sqlx::query_scalar("SELECT order_id::text FROM orders ORDER BY order_id")
        .fetch_all(world.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_id_counts_again_after_the_window_and_not_within_it_on_the_logs_clock() {
    let mut world = World::new().await;
    world.kafka.settings.command_window = CommandWindow::new(Duration::from_secs(60));
    let stop = run_projectors(&world);
    let ids = orders_on_one_partition(5);
    let now = Utc::now().timestamp_millis();

    place(&mut world, ids[0], "x", now - 10 * MINUTE).await;
    place(&mut world, ids[1], "y", now).await;
    // Stamped long after x's use but judged at the partition's clock (now, read back from the
    // offsets row): x's use is 10 minutes old, past the window, so this is a new command.
    place(&mut world, ids[2], "x", now - 10 * MINUTE + 1_000).await;
    // y was used at the clock's now: a second order under y is a repeat within the window,
    // however old its own stamp.
    place(&mut world, ids[3], "y", now - 5 * MINUTE).await;

    let mut expected: Vec<String> = ids[..3].iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(projected_orders(&world).await, expected);
    let anomalies: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, kind FROM projection_anomalies WHERE projection LIKE 'orders@%'",
    )
    .fetch_all(world.pool())
    .await
    .unwrap();
    assert_eq!(anomalies, [(ids[3].to_string(), "inert-loser".to_owned())]);
    let remembered: Vec<(String, String)> = sqlx::query_as(
        "SELECT command_id, aggregate_id FROM projection_commands WHERE projection LIKE 'orders@%' ORDER BY command_id",
    )
    .fetch_all(world.pool())
    .await
    .unwrap();
    assert_eq!(
        remembered,
        [
            ("x".to_owned(), ids[2].to_string()),
            ("y".to_owned(), ids[1].to_string())
        ],
        "x's expired use is replaced by its new one"
    );

    // Two minutes on, x and y fall out of the window: their rows are deleted.
    place(&mut world, ids[4], "z", now + 2 * MINUTE).await;
    let remembered: Vec<String> = sqlx::query_scalar(
        "SELECT command_id FROM projection_commands WHERE projection LIKE 'orders@%'",
    )
    .fetch_all(world.pool())
    .await
    .unwrap();
    assert_eq!(
        remembered,
        ["z"],
        "what falls out of the window costs nothing"
    );
    stop.cancel();
}
