//! Guarantee: bounded memory (decision 0012). A partition writer keeps in memory the aggregates
//! with the newest events (and those its snapshot has not written yet); the others leave for a
//! file of its own once a committed snapshot holds them, and come back when a command or an
//! event needs them. A writer that lets an aggregate go answers for it exactly as before: a
//! retry gets its first answer, `If-Match` sees the real version, new events extend the chain.
//! A takeover restores the snapshot into that file, not into memory.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use platform::partitioner::partition_for;
use reqwest::StatusCode;
use serde_json::Value;
use support::*;

/// Longer than the writers' snapshot interval (5 s).
const PAST_THE_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(5_500);

/// Aggregates each writer keeps in memory in this test.
const KEEPS: usize = 2;

const SKUS: usize = 24;

/// One unit of stock added: the answer's status and body.
async fn stock_added(app: &TestApp, sku: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let reply = add_stock(app, sku, headers).await;
    (reply.status, reply.body)
}

/// Waits until the inventory writers hold at most `most` aggregates in memory, and returns
/// what they hold.
async fn resident_at_most(app: &TestApp, most: f64) -> f64 {
    let mut resident = f64::MAX;
    for _ in 0..100 {
        resident = inventory_gauge(app, "writer_aggregates_resident").await;
        if resident <= most {
            return resident;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the inventory writers still hold {resident} aggregates (at most {most} expected)");
}

/// A SKU of each partition that no other part of the test uses.
fn one_sku_per_partition(prefix: &str) -> Vec<String> {
    (0..PARTITIONS)
        .map(|p| {
            (0..)
                .map(|n| format!("{prefix}-{n}"))
                .find(|sku| partition_for(sku.as_bytes(), PARTITIONS) == p)
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_keeps_only_its_newest_aggregates_in_memory_and_answers_for_the_others_as_before()
{
    let kafka = kafka();
    let keep = |settings: &mut command_api::config::Settings| {
        settings.writer_memory.resident_aggregates = KEEPS;
    };
    let app = TestApp::spawn_on(&kafka, keep).await;
    let skus: Vec<String> = (0..SKUS).map(|n| format!("sku-{n}")).collect();
    let mut first = Vec::new();
    for sku in &skus {
        let key = format!("key-{sku}");
        let answer = stock_added(&app, sku, &[("idempotency-key", &key)]).await;
        assert_eq!(answer.0, StatusCode::OK, "{answer:?}");
        first.push(answer);
    }
    // The next batch of each partition carries a snapshot; once it commits, its writer keeps
    // its newest aggregates and lets the others go.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    for sku in one_sku_per_partition("trigger") {
        assert_eq!(stock_added(&app, &sku, &[]).await.0, StatusCode::OK);
    }
    let most = (KEEPS * PARTITIONS as usize) as f64;
    resident_at_most(&app, most).await;
    assert_eq!(
        inventory_gauge(&app, "writer_aggregates").await,
        (SKUS + PARTITIONS as usize) as f64,
        "the partitions still count every aggregate"
    );

    // Every SKU, in memory or not, is answered for as before: the retry, a stale and a current
    // If-Match, a new command.
    for (sku, first) in skus.iter().zip(&first) {
        let key = format!("key-{sku}");
        let retried = stock_added(&app, sku, &[("idempotency-key", &key)]).await;
        assert_eq!(&retried, first, "{sku}: the retry gets its first answer");
        let stale = stock_added(&app, sku, &[("if-match", "0")]).await;
        assert_eq!(stale.0, StatusCode::CONFLICT, "{sku}: {stale:?}");
        assert_eq!(stale.1["current_version"], 1, "{sku}: {stale:?}");
        let current = stock_added(&app, sku, &[("if-match", "1")]).await;
        assert_eq!(current.0, StatusCode::OK, "{sku}: {current:?}");
        assert_eq!(current.1["version"], 2, "{sku}: the chain goes on");
    }
    app.stop().await;

    // A takeover restores the snapshot into the file: the new writers start holding only what
    // they replayed after its checkpoint, and answer for every SKU as before.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    let app = TestApp::spawn_on(&kafka, keep).await;
    for (sku, first) in skus.iter().zip(&first) {
        let key = format!("key-{sku}");
        let retried = stock_added(&app, sku, &[("idempotency-key", &key)]).await;
        assert_eq!(&retried, first, "{sku}: the retry gets its first answer");
        let current = stock_added(&app, sku, &[("if-match", "2")]).await;
        assert_eq!(current.1["version"], 3, "{sku}: {current:?}");
    }
    app.stop().await;
}
