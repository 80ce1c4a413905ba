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

use chrono::{DateTime, Utc};
use domain::AggregateKind;
use platform::log_order::{LogOrder, Verdict};
use platform::partitioner::partition_for;
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;
use schemas::wire::snapshots::{Snapshot, COMMAND_KEY_PREFIX};
use serde_json::{json, Value};
use support::*;

/// Longer than the writers' snapshot interval (5 s).
const PAST_THE_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(5_500);

const SKUS: [&str; 3] = ["apple", "pear", "plum"];

/// The restore counters are the process's: the tests of this file take turns, so each one's
/// restores are its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One unit of stock added, which must succeed.
async fn stock_added(app: &TestApp, sku: &str, headers: &[(&str, &str)]) -> Reply {
    let reply = add_stock(app, sku, headers).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply
}

/// Every record of the inventory snapshots topic.
async fn inventory_snapshots(kafka: &test_harness::TestKafka) -> Vec<Stored> {
    read_all(
        kafka,
        &kafka.topics().snapshots(AggregateKind::InventoryItem),
    )
    .await
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
    let _turn = ONE_AT_A_TIME.lock().await;
    let kafka = kafka();
    let first_owner = TestApp::spawn_on(&kafka, |_| {}).await;
    let keyed = [("idempotency-key", "restock-apple-1")];
    let first_answer = stock_added(&first_owner, "apple", &keyed).await;
    for sku in SKUS {
        stock_added(&first_owner, sku, &[]).await;
        stock_added(&first_owner, sku, &[]).await;
    }
    // The next batch of each partition finds a snapshot due and carries it.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    for sku in SKUS {
        stock_added(&first_owner, sku, &[]).await;
    }
    let before = restores(&first_owner).await;
    first_owner.stop().await;

    let snapshots = inventory_snapshots(&kafka).await;
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
    let retried = stock_added(&second_owner, "apple", &keyed).await;
    assert_eq!(
        retried.body, first_answer.body,
        "the retry gets its first answer"
    );
    let versions = chains_are_whole(&kafka).await;
    let apple = versions["apple"].to_string();
    let current = stock_added(&second_owner, "apple", &[("if-match", apple.as_str())]).await;
    assert_eq!(current.body["version"], versions["apple"] + 1);
    let added = restores_after(&second_owner, before).await;
    assert!(added[0] >= 1.0, "{added:?}");
    assert_eq!(added[2], 0.0, "{added:?}");
    let before = restores(&second_owner).await;
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
    let current = stock_added(&third_owner, "apple", &[("if-match", apple.as_str())]).await;
    assert_eq!(
        current.body["version"],
        versions["apple"] + 1,
        "the full replay knows the real version"
    );
    let retried = stock_added(&third_owner, "apple", &keyed).await;
    assert_eq!(retried.body, first_answer.body);
    let added = restores_after(&third_owner, before).await;
    assert!(added[2] >= 1.0, "{added:?}");
    third_owner.stop().await;
    chains_are_whole(&kafka).await;
}

/// `StockAdded` (version 1) for each of `skus`, appended straight to the inventory events topic
/// as a writer would have, stamped `at`: a log no writer has snapshotted.
async fn first_events(kafka: &test_harness::TestKafka, skus: &[String], at: DateTime<Utc>) {
    let producer = kafka.producer();
    let topic = kafka.topics().events(AggregateKind::InventoryItem);
    let mut deliveries = Vec::new();
    for sku in skus {
        let (envelope, payload) = stock_added_as_written(sku, 1, None, at);
        let record = FutureRecord::to(&topic)
            .key(sku.as_str())
            .payload(&payload)
            .timestamp(at.timestamp_millis())
            .headers(envelope.to_headers());
        deliveries.push(producer.send_result(record).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_from_the_start_writes_each_command_use_once_and_leaves_a_restore_point() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let kafka = kafka();
    // Creates the topics; with no events, it writes no snapshot.
    let creator = TestApp::spawn_on(&kafka, |_| {}).await;
    let before = restores(&creator).await;
    creator.stop().await;
    // Two groups of aggregates of one partition, three days apart: more than a replay keeps
    // in memory (it snapshots as it goes), and the window forgets the first group's commands
    // while the replay reads the second.
    let partition = 0;
    let mut skus = (0..)
        .map(|n| format!("replayed-{n}"))
        .filter(|sku| partition_for(sku.as_bytes(), PARTITIONS) == partition);
    let (older, newer): (Vec<String>, Vec<String>) = (
        skus.by_ref().take(1_600).collect(),
        skus.take(1_600).collect(),
    );
    first_events(&kafka, &older, Utc::now() - chrono::Duration::days(3)).await;
    first_events(&kafka, &newer, Utc::now()).await;

    let replaying = TestApp::spawn_on(&kafka, |_| {}).await;
    let added = restores_after(&replaying, before).await;
    assert_eq!(added[0], 0.0, "there was no snapshot: {added:?}");
    let retried = stock_added(&replaying, &newer[0], &[]).await;
    assert_eq!(retried.body["version"], 2);
    // Nothing is left to read once the partition serves (the series is process-wide: the
    // creator's writer set it too, so this catches a count left above 0, not a missing one).
    let metrics = replaying.metrics_text().await;
    let remaining = metrics.lines().find(|line| {
        line.starts_with("writer_replay_remaining{")
            && line.contains("aggregate=\"inventory\"")
            && line.contains(&format!("partition=\"{partition}\""))
    });
    assert_eq!(
        remaining.and_then(|line| line.rsplit(' ').next()),
        Some("0"),
        "the replay's progress gauge: {remaining:?}"
    );
    let before = restores(&replaying).await;
    replaying.stop().await;

    let snapshots = inventory_snapshots(&kafka).await;
    let mut command_uses: HashMap<String, usize> = HashMap::new();
    for record in snapshots.iter().filter(|r| r.partition == partition) {
        let key = record.key.clone().expect("every snapshot record is keyed");
        if key.starts_with(COMMAND_KEY_PREFIX) {
            assert!(
                !record.payload.is_empty(),
                "a command use was written, then deleted: {key}"
            );
            *command_uses.entry(key).or_default() += 1;
        }
    }
    assert!(
        command_uses.values().all(|n| *n == 1),
        "a command use was written twice"
    );
    assert!(
        command_uses.len() >= newer.len(),
        "the window's command uses are in the restore point: {}",
        command_uses.len()
    );

    // The next owner restores from what the replay wrote, older aggregates included.
    let next_owner = TestApp::spawn_on(&kafka, |_| {}).await;
    let added = restores_after(&next_owner, before).await;
    assert_eq!(added[2], 0.0, "{added:?}");
    for (sku, version) in [(&older[0], "1"), (&older[1_599], "1"), (&newer[0], "2")] {
        let current = stock_added(&next_owner, sku, &[("if-match", version)]).await;
        assert_eq!(
            current.body["version"].to_string(),
            (version.parse::<u64>().unwrap() + 1).to_string()
        );
    }
    let restored = restores(&next_owner).await;
    assert!(
        restored[0] - before[0] >= 1.0,
        "{restored:?} after {before:?}"
    );
    next_owner.stop().await;
    chains_are_whole(&kafka).await;
}

/// One request of a random history, addressed by what both twins know: SKUs and customers by
/// index, an order by the index of its placing (each twin maps it to its own order id).
#[derive(Debug, Clone)]
enum Request {
    AddStock {
        sku: usize,
        quantity: i64,
        key: Option<u32>,
        if_match: Option<u64>,
    },
    Register {
        customer: usize,
        key: Option<u32>,
    },
    Place {
        customer: usize,
        sku: usize,
        quantity: i64,
        key: u32,
    },
    Cancel {
        order: usize,
        key: Option<u32>,
    },
}

/// Few keys, SKUs and customers, so keys are reused (with other bodies too), versions
/// conflict and orders are cancelled twice.
fn random_request(rng: &mut impl rand::Rng) -> Request {
    match rng.random_range(0..10) {
        0..=3 => Request::AddStock {
            sku: rng.random_range(0..SKUS.len()),
            quantity: rng.random_range(1..4),
            key: rng.random_bool(0.5).then(|| rng.random_range(0..12u32)),
            if_match: rng.random_bool(0.3).then(|| rng.random_range(0..8)),
        },
        4 => Request::Register {
            customer: rng.random_range(0..3),
            key: rng.random_bool(0.5).then(|| rng.random_range(0..12u32)),
        },
        5..=7 => Request::Place {
            customer: rng.random_range(0..3),
            sku: rng.random_range(0..SKUS.len()),
            quantity: rng.random_range(1..3),
            key: rng.random_range(0..12),
        },
        _ => Request::Cancel {
            order: rng.random_range(0..16),
            key: rng.random_bool(0.5).then(|| rng.random_range(0..12u32)),
        },
    }
}

/// A command-api on its own namespace, and the order ids it handed out, in order.
struct Twin {
    kafka: test_harness::TestKafka,
    app: Option<TestApp>,
    orders: Vec<String>,
}

impl Twin {
    async fn start() -> Self {
        let kafka = kafka();
        let app = TestApp::spawn_on(&kafka, |_| {}).await;
        Self {
            kafka,
            app: Some(app),
            orders: vec![],
        }
    }

    fn app(&self) -> &TestApp {
        self.app.as_ref().expect("the twin runs")
    }

    async fn restart(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
        self.app = Some(TestApp::spawn_on(&self.kafka, |_| {}).await);
    }

    /// Sends `request`; the answer as status and body, with what differs between twins by
    /// nature (order ids, consistency tokens, command ids) replaced or left out.
    async fn send(&mut self, request: &Request) -> (StatusCode, Value) {
        let keyed = |key: &Option<u32>| key.map(|k| format!("key-{k}"));
        let (path, token, body, key, if_match) = match request {
            Request::AddStock {
                sku,
                quantity,
                key,
                if_match,
            } => (
                format!("/v1/inventory/{}/stock", SKUS[*sku]),
                admin(),
                json!({"quantity": quantity}),
                keyed(key),
                *if_match,
            ),
            Request::Register { customer, key } => (
                "/v1/customers".to_owned(),
                admin(),
                json!({"customer_id": format!("c-{customer}"), "name": "Ada", "credit_limit": money(10_000)}),
                keyed(key),
                None,
            ),
            Request::Place {
                customer,
                sku,
                quantity,
                key,
            } => (
                "/v1/orders".to_owned(),
                token(&format!("c-{customer}"), "customer"),
                json!({"customer_id": format!("c-{customer}"), "lines": [{"sku": SKUS[*sku], "quantity": quantity, "unit_price": money(100)}]}),
                keyed(&Some(*key)),
                None,
            ),
            Request::Cancel { order, key } => {
                let Some(order_id) = self.orders.get(order % self.orders.len().max(1)) else {
                    return (StatusCode::NO_CONTENT, Value::Null);
                };
                (
                    format!("/v1/orders/{order_id}/cancel"),
                    admin(),
                    json!({}),
                    keyed(key),
                    None,
                )
            }
        };
        let if_match = if_match.map(|v| v.to_string());
        let mut headers = vec![];
        if let Some(key) = key.as_deref() {
            headers.push(("idempotency-key", key));
        }
        if let Some(version) = if_match.as_deref() {
            headers.push(("if-match", version));
        }
        let reply = self.app().post(&path, Some(&token), &body, &headers).await;
        if let Some(order_id) = reply.body["order_id"].as_str() {
            if !self.orders.iter().any(|o| o == order_id) {
                self.orders.push(order_id.to_owned());
            }
        }
        let mut text = reply.body.to_string();
        for (i, order_id) in self.orders.iter().enumerate() {
            text = text.replace(order_id, &format!("order#{i}"));
        }
        let mut body: Value = serde_json::from_str(&text).unwrap();
        if let Some(fields) = body.as_object_mut() {
            for varies in ["consistency_token", "command_id", "instance", "trace_id"] {
                fields.remove(varies);
            }
        }
        (reply.status, body)
    }
}

/// Partition writers per command-api instance (every kind, every partition).
const WRITERS: usize = command_api::processor::COMMAND_KINDS.len() * PARTITIONS as usize;

/// The writers' restores so far, by outcome: restored, none, fallback.
async fn restores(app: &TestApp) -> [f64; 3] {
    let text = app.metrics_text().await;
    ["restored", "none", "fallback"].map(|outcome| {
        text.lines()
            .filter(|line| line.starts_with("writer_snapshot_restores_total{"))
            .filter(|line| line.contains(&format!("outcome=\"{outcome}\"")))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
}

/// What the restores of one instance's writers added to `before`, once every writer restored.
async fn restores_after(app: &TestApp, before: [f64; 3]) -> [f64; 3] {
    for _ in 0..300 {
        let now = restores(app).await;
        let added: [f64; 3] = std::array::from_fn(|i| now[i] - before[i]);
        if added.iter().sum::<f64>() >= WRITERS as f64 {
            return added;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the writers did not all start within 30 s");
}

/// Sends `requests` to both twins; every answer must be the same.
async fn same_answers(twins: &mut [Twin; 2], requests: &[Request], seed: u64, phase: &str) {
    for (i, request) in requests.iter().enumerate() {
        let restored = twins[0].send(request).await;
        let replayed = twins[1].send(request).await;
        assert_eq!(
            restored, replayed,
            "seed {seed}, {phase} request {i}: {request:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_restored_from_its_snapshot_answers_every_command_as_one_that_replayed_every_event(
) {
    // Property (decision 0009): two command-apis on their own logs get the same random
    // history; one restarts from its snapshots, the other's snapshots are unreadable, so it
    // replays every event. Both must then answer every further command (new ones, retries,
    // reused keys, stale If-Match, repeated cancellations) the same. PROPERTY_SEED replays a
    // failing run.
    use rand::SeedableRng;
    let _turn = ONE_AT_A_TIME.lock().await;
    let seed = std::env::var("PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("PROPERTY_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let history: Vec<Request> = (0..60).map(|_| random_request(&mut rng)).collect();
    let after: Vec<Request> = (0..60).map(|_| random_request(&mut rng)).collect();

    let mut twins = [Twin::start().await, Twin::start().await];
    same_answers(&mut twins, &history[..40], seed, "history").await;
    // The next batches of each partition find a snapshot due and carry it.
    tokio::time::sleep(PAST_THE_SNAPSHOT_INTERVAL).await;
    same_answers(&mut twins, &history[40..], seed, "history").await;
    if let Some(app) = twins[1].app.take() {
        app.stop().await;
    }
    // Every snapshots partition of the second twin gets a record that cannot be read.
    let producer = twins[1].kafka.producer();
    for kind in command_api::processor::COMMAND_KINDS {
        let topic = twins[1].kafka.topics().snapshots(kind);
        for partition in 0..PARTITIONS {
            let corrupt = FutureRecord::to(&topic)
                .partition(partition)
                .key("~checkpoint")
                .payload(b"not a snapshot".as_slice());
            producer
                .send(corrupt, Duration::from_secs(10))
                .await
                .unwrap();
        }
    }
    // Counters are the process's (both twins run in it): each restart is told by what it adds.
    let before = restores(twins[0].app()).await;
    twins[0].restart().await;
    let first = restores_after(twins[0].app(), before).await;
    assert!(
        first[0] >= 1.0,
        "the first twin restored from snapshots: {first:?}"
    );
    assert_eq!(first[2], 0.0, "{first:?}");
    let before = restores(twins[0].app()).await;
    twins[1].restart().await;
    let second = restores_after(twins[1].app(), before).await;
    assert_eq!(
        (second[0], second[2]),
        (0.0, WRITERS as f64),
        "the second twin replayed every partition: {second:?}"
    );

    // What is asked after the restart: new commands and every request of the history again.
    let mut requests = after;
    requests.extend(history);
    same_answers(&mut twins, &requests, seed, "after the restart").await;
    for twin in twins {
        if let Some(app) = twin.app {
            app.stop().await;
        }
    }
}
