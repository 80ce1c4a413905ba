//! An events partition held by an open transaction is visible: every `read_committed` reader
//! stops at its last stable offset, so command-api reports how long each partition has been
//! held (`kafka_partition_blocked_seconds`), and the figure drops back to 0 once the
//! transaction ends. (A hanging transaction, which Apache Kafka can leave behind when a single
//! node is killed while it writes commit markers, is held for ever; a foreign producer's open
//! transaction stands in for it here.)

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use domain::AggregateKind;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use support::TestApp;

/// The value of `kafka_partition_blocked_seconds` for `topic`'s `partition`, if published.
fn blocked_seconds(metrics: &str, topic: &str, partition: i32) -> Option<f64> {
    let topic_label = format!("topic=\"{topic}\"");
    let partition_label = format!("partition=\"{partition}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("kafka_partition_blocked_seconds{"))
        .filter(|line| line.contains(&topic_label) && line.contains(&partition_label))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

async fn wait_for(app: &TestApp, topic: &str, what: &str, holds: impl Fn(f64) -> bool) {
    let mut last = None;
    for _ in 0..600 {
        let metrics = app.get("/metrics").await;
        let text = metrics.body.as_str().map(str::to_owned).unwrap_or_default();
        last = blocked_seconds(&text, topic, 0);
        if last.is_some_and(&holds) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("kafka_partition_blocked_seconds for {topic}/0 never showed {what} (last: {last:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_events_partition_held_by_an_open_transaction_is_reported_until_it_ends() {
    let app = TestApp::spawn().await;
    let topic = app.kafka.topics().events(AggregateKind::InventoryItem);

    // A producer that opens a transaction on the events partition and leaves it open (its
    // timeout is ten minutes, far past any of ours).
    let id = format!("{}.foreign-producer", app.kafka.settings.topic_prefix);
    let foreign: FutureProducer =
        platform::kafka::transactional_producer_config(&app.kafka.settings, &id)
            .set("transaction.timeout.ms", "600000")
            .create()
            .unwrap();
    foreign.init_transactions(Duration::from_secs(30)).unwrap();
    foreign.begin_transaction().unwrap();
    foreign
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key("held")
                .payload("held"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    wait_for(&app, &topic, "the partition held for 5 s or more", |s| {
        s >= 5.0
    })
    .await;

    // The transaction ends: the partition is free again.
    foreign.abort_transaction(Duration::from_secs(30)).unwrap();
    wait_for(&app, &topic, "0 once the transaction ended", |s| s == 0.0).await;
    app.stop().await;
}
