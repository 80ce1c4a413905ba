//! Guarantee: idempotency keys and command ids are remembered for the deployment's window
//! (`IDEMPOTENCY_WINDOW_SECONDS`, a day by default; decision 0008), and what falls out of it
//! costs nothing. Within the window a retry gets the first answer and another request with the
//! key is 422; after it the key is free and the same request is a new one, like a payment API's
//! expired key. Every reader applying the log-order rule with the same window counts what the
//! writers answered: the events of a command run again after the window are not judged repeats.
//!
//! A use a writer keeps on disk (decision 0015) is forgotten there when the window passes, and
//! its record deleted from the snapshot.
//!
//! The window here is six seconds, so the test waits it out for real.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use domain::AggregateKind;
use platform::log_order::{CommandWindow, LogOrder, Verdict};
use platform::partitioner::partition_for;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

/// Long enough that a retry sent right after its first answer is decided within it, even on a
/// loaded machine.
const WINDOW: Duration = Duration::from_secs(6);

async fn spawn_with_short_window() -> TestApp {
    TestApp::spawn_on(&kafka(), |settings| {
        settings.kafka.command_window = CommandWindow::new(WINDOW);
    })
    .await
}

/// Sleeps until the window has passed since `since` (taken once an answer arrived, so after
/// the events it answers for were stamped), with a margin for clock steps.
async fn wait_out_the_window(since: Instant) {
    let until = since + WINDOW + Duration::from_millis(300);
    tokio::time::sleep_until(until.into()).await;
}

/// Two customer ids on one partition: the second registration, keyed like the first, carries
/// the first's command id, which its writer remembers until the window has passed.
fn on_one_partition() -> (String, String) {
    let first = "w-1".to_owned();
    let home = partition_for(first.as_bytes(), PARTITIONS);
    let second = (2..100)
        .map(|n| format!("w-{n}"))
        .find(|id| partition_for(id.as_bytes(), PARTITIONS) == home)
        .expect("an id on the same partition");
    (first, second)
}

fn customer(id: &str) -> Value {
    json!({"customer_id": id, "name": "Ada", "credit_limit": money(10_000)})
}

/// Whether each of `kind`'s events counts, as every reader with this window judges the log
/// (the rule holds per partition).
async fn verdicts(app: &TestApp, kind: AggregateKind) -> Vec<(String, bool)> {
    let mut logs: HashMap<i32, LogOrder> = HashMap::new();
    events(&app.kafka, kind)
        .await
        .into_iter()
        .filter_map(|record| {
            let log = logs
                .entry(record.partition)
                .or_insert_with(|| LogOrder::new(CommandWindow::new(WINDOW)));
            let Some(envelope) = record.envelope else {
                log.pass(record.timestamp);
                return None;
            };
            let counts = log.judge(&envelope, record.offset, record.timestamp) == Verdict::Accepted;
            Some((envelope.event_type, counts))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_is_remembered_for_the_window_and_free_after_it() {
    let app = spawn_with_short_window().await;
    let (first, second) = on_one_partition();
    let key = [("idempotency-key", "window-1")];
    let created = app
        .post("/v1/customers", Some(&admin()), &customer(&first), &key)
        .await;
    let first_answered = Instant::now();
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let reused = app
        .post("/v1/customers", Some(&admin()), &customer(&second), &key)
        .await;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "within the window another request with the key is refused: {:?}",
        reused.body
    );

    wait_out_the_window(first_answered).await;
    let after = app
        .post("/v1/customers", Some(&admin()), &customer(&second), &key)
        .await;
    assert_eq!(
        after.status,
        StatusCode::CREATED,
        "after the window the key is free: {:?}",
        after.body
    );
    assert_eq!(
        verdicts(&app, AggregateKind::Customer).await,
        [
            ("CustomerRegistered".to_owned(), true),
            ("CustomerRegistered".to_owned(), true)
        ],
        "both registrations count for every reader"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_request_after_the_window_is_a_new_command_and_counts_again() {
    let app = spawn_with_short_window().await;
    let key = [("idempotency-key", "restock-1")];
    let body = json!({"quantity": 5});
    let first = app
        .post("/v1/inventory/pear/stock", Some(&admin()), &body, &key)
        .await;
    let first_answered = Instant::now();
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let retried = app
        .post("/v1/inventory/pear/stock", Some(&admin()), &body, &key)
        .await;
    assert_eq!(
        (retried.status, &retried.body),
        (StatusCode::OK, &first.body),
        "within the window the retry gets the first answer"
    );

    wait_out_the_window(first_answered).await;
    let again = app
        .post("/v1/inventory/pear/stock", Some(&admin()), &body, &key)
        .await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_ne!(
        again.body["version"], first.body["version"],
        "a new command, at a new version: {:?}",
        again.body
    );
    assert_eq!(
        verdicts(&app, AggregateKind::InventoryItem).await,
        [
            ("StockAdded".to_owned(), true),
            ("StockAdded".to_owned(), true)
        ],
        "the 200 after the window counts once, like the first"
    );
    app.stop().await;
}

/// Longer than the writers' snapshot interval (5 s).
const PAST_THE_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(5_500);

/// The records of `key` in the inventory snapshots topic, oldest first.
async fn snapshot_records(app: &TestApp, key: &str) -> Vec<Stored> {
    let topic = app.kafka.topics().snapshots(AggregateKind::InventoryItem);
    read_all(&app.kafka, &topic)
        .await
        .into_iter()
        .filter(|record| record.key.as_deref() == Some(key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_use_on_disk_is_forgotten_when_the_window_passes_and_its_snapshot_record_deleted() {
    let app = TestApp::spawn_on(&kafka(), |settings| {
        settings.kafka.command_window = CommandWindow::new(WINDOW);
    })
    .await;
    let sku = "expiring-1";
    let first = stock_added_with_key(&app, sku, 1, "expiring-key").await;
    let first_answered = Instant::now();
    assert_eq!(first.0, StatusCode::OK, "{first:?}");
    let command_id = events(&app.kafka, AggregateKind::InventoryItem)
        .await
        .into_iter()
        .filter_map(|record| record.envelope)
        .find(|envelope| envelope.aggregate_id == sku)
        .map(|envelope| envelope.command_id)
        .expect("the first command's event");
    let key = format!("~command/{command_id}");

    // The next snapshot holds its use, which then leaves memory for the writer's file.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    one_command_per_partition(&app, "a").await;
    // Once the window has passed, a snapshot after it forgets the use in the file (when its
    // batch has moved the partition's clock past the window) and the one after that deletes
    // its record.
    tokio::time::sleep_until((first_answered + WINDOW + Duration::from_millis(300)).into()).await;
    for round in ["b", "c", "d", "e"] {
        tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
        one_command_per_partition(&app, round).await;
        let records = snapshot_records(&app, &key).await;
        if records.last().is_some_and(|r| r.payload.is_empty()) {
            break;
        }
    }
    let records = snapshot_records(&app, &key).await;
    assert!(
        records.first().is_some_and(|r| !r.payload.is_empty()),
        "a snapshot held the use: {records:?}"
    );
    assert!(
        records.last().is_some_and(|r| r.payload.is_empty()),
        "a later snapshot deleted it: {records:?}"
    );

    let again = stock_added_with_key(&app, sku, 1, "expiring-key").await;
    assert_eq!(again.0, StatusCode::OK, "{again:?}");
    assert_eq!(
        again.1["version"], 2,
        "after the window the key is free, and the request a new command: {again:?}"
    );
    app.stop().await;
}
