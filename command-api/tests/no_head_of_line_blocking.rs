//! No head-of-line blocking (issue #17 item 4; decision 0014): a writer rebuilding a long
//! partition stops neither the other partitions nor the process's HTTP. Commands queued for it,
//! more than its channel holds, wait in order (the partition is paused in the group, the
//! dispatcher never awaits its channel) and are all applied once it serves, while a command to
//! another partition, sent after them, is answered first.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::AggregateKind;
use platform::partitioner::partition_for;
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;
use support::*;

/// Events of the long partition's history: a replay of several seconds in a debug build, longer
/// than queuing the commands takes (300,000 events ended 6 s after the other partition's answer
/// on the 2-core machine this was written on). The test checks that the replay was still under
/// way when the other partition answered, and says so if the history was too short.
const HISTORY: u64 = 500_000;
/// Commands queued for the rebuilding writer: more than its channel (1,024) holds.
const QUEUED: usize = 1_200;

/// The first SKU (by a counter after `prefix`) of `partition`.
fn sku_of(prefix: &str, partition: i32) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|sku| partition_for(sku.as_bytes(), PARTITIONS) == partition)
        .unwrap()
}

/// `versions` `StockAdded` events of `sku`, chained as its writer would have appended them,
/// straight to the inventory events topic: a history no writer has snapshotted.
async fn history(kafka: &test_harness::TestKafka, sku: &str, versions: u64) {
    let producer = kafka.producer();
    let topic = kafka.topics().events(AggregateKind::InventoryItem);
    let at = Utc::now();
    let mut predecessor = None;
    let mut deliveries = Vec::new();
    for version in 1..=versions {
        let (envelope, payload) = stock_added_as_written(sku, version, predecessor, at);
        predecessor = Some(envelope.event_id);
        let record = FutureRecord::to(&topic)
            .key(sku)
            .payload(&payload)
            .timestamp(at.timestamp_millis())
            .headers(envelope.to_headers());
        deliveries.push(producer.send_result(record).unwrap());
        if deliveries.len() >= 10_000 {
            for delivery in deliveries.drain(..) {
                delivery.await.unwrap().unwrap();
            }
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
}

/// One runtime thread: the rebuilding writer, the other writers and HTTP share it, as they
/// share a core's worth of threads in a service.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_writer_rebuilding_a_long_partition_blocks_no_other_partition_and_loses_nothing_queued() {
    let kafka = kafka();
    // Creates the topics.
    TestApp::spawn_on(&kafka, |_| {}).await.stop().await;
    let (long, short) = (sku_of("long", 0), sku_of("short", 1));
    history(&kafka, &long, HISTORY).await;

    let app = Arc::new(
        TestApp::spawn_on(&kafka, |settings| {
            // The queued commands wait for the whole replay: no answer may time out.
            settings.command_wait = Duration::from_secs(120);
        })
        .await,
    );
    // Answers are numbered in the order they arrive.
    let answered = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..QUEUED)
        .map(|_| {
            let (app, answered, long) = (app.clone(), answered.clone(), long.clone());
            tokio::spawn(async move {
                let reply = add_stock(&app, &long, &[]).await;
                (reply.status, answered.fetch_add(1, Ordering::SeqCst))
            })
        })
        .collect();
    // The queued commands reach the commands topic before the other partition's one is sent.
    let commands = kafka.topics().commands(AggregateKind::InventoryItem);
    for _ in 0..600 {
        if count(&kafka, &commands) >= QUEUED as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        count(&kafka, &commands) >= QUEUED as i64,
        "the queued commands did not reach the commands topic"
    );

    let other = add_stock(&app, &short, &[]).await;
    let other_answered = answered.fetch_add(1, Ordering::SeqCst);
    assert_eq!(other.status, StatusCode::OK, "{:?}", other.body);
    let metrics = app.metrics_text().await;
    let still_replaying = metrics.lines().any(|line| {
        line.starts_with("writer_replay_remaining{")
            && line.contains("aggregate=\"inventory\"")
            && line.contains("partition=\"0\"")
            && !line.ends_with(" 0")
    });
    assert!(
        still_replaying,
        "the long partition had replayed before the other one answered: the history is too short \
         for this machine to tell whether one waits for the other"
    );
    let mut first_queued_answer = usize::MAX;
    for task in queued {
        let (status, order) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "a queued command was not applied");
        first_queued_answer = first_queued_answer.min(order);
    }
    assert!(
        other_answered < first_queued_answer,
        "the other partition's command (answer {other_answered}) waited for the rebuilding one (first answer {first_queued_answer})"
    );
    let after = add_stock(&app, &long, &[]).await;
    assert_eq!(
        after.body["version"],
        HISTORY + QUEUED as u64 + 1,
        "every queued command applied once, after the whole history"
    );
    Arc::try_unwrap(app)
        .ok()
        .expect("every request is done")
        .stop()
        .await;
}
