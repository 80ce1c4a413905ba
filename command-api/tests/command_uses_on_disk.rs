//! Guarantee: bounded memory (decision 0015). The log-order rule remembers every command of the
//! window (a day by default), but a partition writer keeps in memory only the uses its last
//! committed snapshot does not hold yet; the others are in its file, come back when a retry or
//! an event of the command needs them, and are forgotten there when the window passes, after
//! which the snapshot deletes them. A writer whose uses are on disk answers exactly as before:
//! a retry gets its first answer, the key with another body is 422. A takeover leaves the
//! snapshot's uses in the file too. (That the file forgets them with the window is in
//! `idempotency_window.rs`: this test reads gauges, which every app of the test binary sets.)

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::*;

/// Longer than the writers' snapshot interval (5 s).
const PAST_THE_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(5_500);

const SKUS: usize = 24;

/// Waits until the inventory writers hold at most `most` command uses in memory.
async fn uses_in_memory_at_most(app: &TestApp, most: f64) {
    let mut resident = f64::MAX;
    for _ in 0..100 {
        resident = inventory_gauge(app, "writer_command_uses_resident").await;
        if resident <= most {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the inventory writers still hold {resident} command uses (at most {most} expected)");
}

/// The answers of a retry and of the key with another body, for every SKU.
async fn assert_answered_as_first(app: &TestApp, skus: &[String], first: &[(StatusCode, Value)]) {
    for (sku, first) in skus.iter().zip(first) {
        let key = format!("key-{sku}");
        let retried = stock_added_with_key(app, sku, 1, &key).await;
        assert_eq!(&retried, first, "{sku}: the retry gets its first answer");
        let other = stock_added_with_key(app, sku, 2, &key).await;
        assert_eq!(
            other.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{sku}: the key with another body: {other:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_keeps_the_command_uses_its_snapshot_holds_on_disk_and_answers_retries_as_before()
{
    let kafka = kafka();
    let app = TestApp::spawn_on(&kafka, |_| {}).await;
    let skus: Vec<String> = (0..SKUS).map(|n| format!("disk-{n}")).collect();
    let mut first = Vec::new();
    for sku in &skus {
        let answer = stock_added_with_key(&app, sku, 1, &format!("key-{sku}")).await;
        assert_eq!(answer.0, StatusCode::OK, "{answer:?}");
        first.push(answer);
    }
    // The next batch of each partition carries a snapshot holding those uses; once it commits,
    // they leave memory, and only the uses of that batch stay.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    one_command_per_partition(&app, "a").await;
    uses_in_memory_at_most(&app, f64::from(PARTITIONS)).await;
    assert_answered_as_first(&app, &skus, &first).await;

    // A snapshot covering everything, then a takeover: the new writers restore the uses into
    // their files and hold in memory only those of the events after the checkpoint.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    one_command_per_partition(&app, "b").await;
    app.stop().await;
    let app = TestApp::spawn_on(&kafka, |_| {}).await;
    assert_answered_as_first(&app, &skus, &first).await;
    uses_in_memory_at_most(&app, f64::from(PARTITIONS)).await;
    app.stop().await;
}
