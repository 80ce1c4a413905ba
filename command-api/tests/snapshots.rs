//! Guarantee: takeover reads state, not history (decision 0009). A writer that takes over a
//! partition restores its model from the partition's snapshot (written by the previous owner
//! in its transactions) and answers exactly as one that replayed every event: a retry gets its
//! first answer, `If-Match` sees the real current version, new events extend the chains. A
//! snapshot record that cannot be read is counted and logged, and the writer replays every
//! event instead: never wrong state.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use domain::AggregateKind;
use platform::log_order::{LogOrder, Verdict};
use platform::partitioner::partition_for;
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;
use schemas::wire::snapshots::Snapshot;
use serde_json::json;
use support::*;

/// Longer than the writers' snapshot interval (5 s).
const PAST_THE_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(5_500);

const SKUS: [&str; 3] = ["apple", "pear", "plum"];

async fn add_stock(app: &TestApp, sku: &str, headers: &[(&str, &str)]) -> Reply {
    let reply = app
        .post(
            &format!("/v1/inventory/{sku}/stock"),
            Some(&admin()),
            &json!({"quantity": 1}),
            headers,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply
}

/// The value of a counter with these labels in a `/metrics` text (0 when absent).
async fn counter(app: &TestApp, name: &str, labels: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Every inventory event counts and every chain is gap-free, as any reader folds the log.
async fn chains_are_whole(kafka: &test_harness::TestKafka) -> HashMap<String, u64> {
    let mut logs: HashMap<i32, LogOrder> = HashMap::new();
    let mut versions = HashMap::new();
    for record in events(kafka, AggregateKind::InventoryItem).await {
        let envelope = record.envelope.expect("a valid envelope");
        let log = logs.entry(record.partition).or_default();
        assert_eq!(
            log.judge(&envelope, record.offset, record.timestamp),
            Verdict::Accepted,
            "{envelope:?}"
        );
        versions.insert(envelope.aggregate_id.clone(), envelope.version.get());
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_restores_from_the_snapshot_and_a_corrupt_one_falls_back_to_a_full_replay() {
    let kafka = kafka();
    let first_owner = TestApp::spawn_on(&kafka, |_| {}).await;
    let keyed = [("idempotency-key", "restock-apple-1")];
    let first_answer = add_stock(&first_owner, "apple", &keyed).await;
    for sku in SKUS {
        add_stock(&first_owner, sku, &[]).await;
        add_stock(&first_owner, sku, &[]).await;
    }
    // The next batch of each partition finds a snapshot due and carries it.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    for sku in SKUS {
        add_stock(&first_owner, sku, &[]).await;
    }
    first_owner.stop().await;

    let snapshots = read_all(
        &kafka,
        &kafka.topics().snapshots(AggregateKind::InventoryItem),
    )
    .await;
    let apple_partition = partition_for(b"apple", PARTITIONS);
    let checkpoint = snapshots
        .iter()
        .filter(|r| r.partition == apple_partition)
        .filter_map(|r| match schemas::decode::<Snapshot>(&r.payload) {
            Ok(Snapshot::Checkpoint(c)) => Some(c),
            _ => None,
        })
        .next_back()
        .expect("apple's partition has a snapshot");
    assert!(checkpoint.events_end > 0, "{checkpoint:?}");

    // A new owner restores and answers as the first owner would have.
    let second_owner = TestApp::spawn_on(&kafka, |_| {}).await;
    let retried = add_stock(&second_owner, "apple", &keyed).await;
    assert_eq!(
        retried.body, first_answer.body,
        "the retry gets its first answer"
    );
    let versions = chains_are_whole(&kafka).await;
    let apple = versions["apple"].to_string();
    let current = add_stock(&second_owner, "apple", &[("if-match", apple.as_str())]).await;
    assert_eq!(current.body["version"], versions["apple"] + 1);
    assert!(
        counter(
            &second_owner,
            "writer_snapshot_restores_total",
            "outcome=\"restored\""
        )
        .await
            >= 1.0
    );
    assert_eq!(
        counter(
            &second_owner,
            "writer_snapshot_restores_total",
            "outcome=\"fallback\""
        )
        .await,
        0.0
    );
    second_owner.stop().await;

    // A record of apple's snapshot partition that cannot be read: the next owner replays.
    let snapshots_topic = kafka.topics().snapshots(AggregateKind::InventoryItem);
    let corrupt = FutureRecord::to(&snapshots_topic)
        .partition(apple_partition)
        .key("apple")
        .payload(b"not a snapshot".as_slice());
    kafka
        .producer()
        .send(corrupt, Duration::from_secs(10))
        .await
        .unwrap();
    let third_owner = TestApp::spawn_on(&kafka, |_| {}).await;
    let versions = chains_are_whole(&kafka).await;
    let apple = versions["apple"].to_string();
    let current = add_stock(&third_owner, "apple", &[("if-match", apple.as_str())]).await;
    assert_eq!(
        current.body["version"],
        versions["apple"] + 1,
        "the full replay knows the real version"
    );
    let retried = add_stock(&third_owner, "apple", &keyed).await;
    assert_eq!(retried.body, first_answer.body);
    assert!(
        counter(
            &third_owner,
            "writer_snapshot_restores_total",
            "outcome=\"fallback\""
        )
        .await
            >= 1.0
    );
    third_owner.stop().await;
    chains_are_whole(&kafka).await;
}
