//! Guarantee 5 across a database outage: a projector stopped while PostgreSQL is unreachable
//! commits nothing to Kafka that the database does not hold (Kafka's committed offsets are never
//! ahead of the stored ones, so no later assignment can start past an unapplied record), and
//! after both come back the read model equals a fold of the log.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use domain::inventory::InventoryEvent;
use domain::values::{Quantity, Sku};
use domain::AggregateKind;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::Row;
use support::*;
use test_harness::CuttableProxy;
use tokio_util::sync::CancellationToken;

/// Runs every projection against `database_url` until the token is cancelled.
fn start_projectors(
    world: &World,
    database_url: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let settings = projectors::startup::Settings {
        database_url: database_url.to_owned(),
        kafka: world.kafka.settings.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        limits: projectors::runner::BatchLimits::default(),
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let running = tokio::spawn(async move {
        projectors::startup::Application::build(settings)
            .await
            .unwrap()
            .run_until(async move { token.cancelled().await })
            .await
            .unwrap()
    });
    (stop, running)
}

async fn add_stock(world: &mut World, times: usize) {
    for _ in 0..times {
        world
            .log
            .append(
                AggregateKind::InventoryItem,
                "apple",
                InventoryEvent::StockAdded {
                    sku: Sku::try_from("apple").unwrap(),
                    quantity: Quantity::try_from(1).unwrap(),
                },
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_stopped_during_a_database_outage_commits_nothing_ahead_of_the_database() {
    let mut world = World::new().await;
    let (proxy, proxied_url) = CuttableProxy::for_database(&world.db.url).await;
    let (stop, running) = start_projectors(&world, &proxied_url);
    add_stock(&mut world, 5).await;
    world.caught_up().await;

    proxy.cut();
    add_stock(&mut world, 5).await;
    // The projector consumes the new events and cannot apply them; then it is told to stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the projector stops within 30 s during the outage")
        .unwrap();

    let topic = world.kafka.topics().events(AggregateKind::InventoryItem);
    let stored: Vec<(i32, i64)> = sqlx::query(
        "SELECT o.partition, o.next_offset FROM projection_offsets o JOIN projection_generations g \
         ON o.projection = projection_key(g.projection, g.generation) \
         WHERE g.projection = 'inventory' AND o.topic = $1",
    )
    .bind(&topic)
    .fetch_all(world.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("partition"), r.get("next_offset")))
    .collect();
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &world.kafka.settings.brokers)
        .set(
            "group.id",
            format!("{}.projector.inventory", world.kafka.settings.topic_prefix),
        )
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(&topic, partition);
    }
    let committed = group
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    for element in committed.elements() {
        let in_database = stored
            .iter()
            .find(|(p, _)| *p == element.partition())
            .map_or(0, |(_, next)| *next);
        if let Offset::Offset(in_kafka) = element.offset() {
            assert!(
                in_kafka <= in_database,
                "partition {}: Kafka's committed offset {in_kafka} is ahead of the database's {in_database}",
                element.partition()
            );
        }
    }

    // Both back: the read model ends equal to the fold of the log (ten units, version ten).
    proxy.restore();
    let (stop, running) = start_projectors(&world, &proxied_url);
    world.caught_up().await;
    let item = sqlx::query("SELECT on_hand, version FROM inventory WHERE sku = 'apple'")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(
        (item.get::<i64, _>("on_hand"), item.get::<i64, _>("version")),
        (10, 10)
    );
    stop.cancel();
    running.await.unwrap();
}
