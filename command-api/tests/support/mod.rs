//! Spawns real `command-api` applications against the real broker, each test in its own topic
//! namespace, and reads back what reached the topics.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::time::Duration;

use command_api::auth::Auth;
use command_api::config::Settings;
use command_api::startup::Application;
use domain::AggregateKind;
use platform::envelope::EventEnvelope;
use platform::log_end::LogEnds;
use rdkafka::message::Message;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use test_harness::TestKafka;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-not-for-production";
pub const PARTITIONS: i32 = 3;

/// A running command-api.
pub struct TestApp {
    pub addr: SocketAddr,
    pub kafka: TestKafka,
    pub client: reqwest::Client,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The response of a request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub fn kafka() -> TestKafka {
    let mut kafka = TestKafka::new();
    kafka.settings.partitions = PARTITIONS;
    kafka
}

pub fn settings(kafka: &TestKafka) -> Settings {
    Settings {
        circuit_breaker: platform::resilience::BreakerPolicy::default(),
        addr: "127.0.0.1:0".parse().unwrap(),
        kafka: kafka.settings.clone(),
        jwt_secret: SECRET.into(),
        command_wait: Duration::from_secs(10),
        rate_limit_per_second: 10_000,
        writer_group: format!("{}.command-writers", kafka.settings.topic_prefix),
        writer_kinds: command_api::processor::COMMAND_KINDS.to_vec(),
        // Every aggregate a snapshot holds leaves memory: the tests run the writers' disk path
        // (decision 0012) on every aggregate, not only past a production-sized threshold.
        writer_memory: command_api::processor::WriterMemory {
            state_dir: std::env::temp_dir().join("orderstream-writer-state"),
            resident_aggregates: 0,
        },
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_on(&kafka(), |_| {}).await
    }

    /// Starts an instance on `kafka`'s namespace (several instances may share it).
    pub async fn spawn_on(kafka: &TestKafka, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = settings(kafka);
        tweak(&mut settings);
        let app = Application::build(settings)
            .await
            .expect("build command-api");
        let addr = app.local_addr().unwrap();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            app.run_until(async move { signal.cancelled().await })
                .await
                .expect("serve");
        });
        let app = Self {
            addr,
            kafka: kafka.clone(),
            client: reqwest::Client::new(),
            stop,
            task,
        };
        app.wait_ready().await;
        app
    }

    pub async fn wait_ready(&self) {
        for _ in 0..300 {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("command-api did not become ready");
    }

    /// Graceful stop: returns once in-flight work is finished and offsets committed.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("app task");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        reply(request.send().await.expect("request")).await
    }

    /// The `/metrics` page, as Prometheus text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn get(&self, path: &str) -> Reply {
        reply(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }
}

pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

pub fn token(subject: &str, role: &str) -> String {
    Auth::new(SECRET, 1).sign(subject, &[role], 3600).unwrap()
}

pub fn admin() -> String {
    token("admin", "admin")
}

/// `POST /v1/inventory/{sku}/stock` of `quantity` units, as an admin, with `key` as its
/// idempotency key: the answer's status and body.
pub async fn stock_added_with_key(
    app: &TestApp,
    sku: &str,
    quantity: i64,
    key: &str,
) -> (StatusCode, Value) {
    let reply = app
        .post(
            &format!("/v1/inventory/{sku}/stock"),
            Some(&admin()),
            &serde_json::json!({"quantity": quantity}),
            &[("idempotency-key", key)],
        )
        .await;
    (reply.status, reply.body)
}

/// A keyed command on a SKU of each partition, new to the test (named after `round`): each
/// carries the next snapshot of its partition when one is due.
pub async fn one_command_per_partition(app: &TestApp, round: &str) {
    for p in 0..PARTITIONS {
        let sku = (0..)
            .map(|n| format!("trigger-{round}-{n}"))
            .find(|sku| platform::partitioner::partition_for(sku.as_bytes(), PARTITIONS) == p)
            .unwrap();
        let answer = stock_added_with_key(app, &sku, 1, &format!("key-{sku}")).await;
        assert_eq!(answer.0, StatusCode::OK, "{answer:?}");
    }
}

/// The sum over the inventory writers of the gauge `name` (every app of a test binary sets
/// the same gauges: read them in a binary with one test).
pub async fn inventory_gauge(app: &TestApp, name: &str) -> f64 {
    app.metrics_text()
        .await
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| line.contains("aggregate=\"inventory\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `POST /v1/inventory/{sku}/stock` of one unit, as an admin, with `headers`.
pub async fn add_stock(app: &TestApp, sku: &str, headers: &[(&str, &str)]) -> Reply {
    app.post(
        &format!("/v1/inventory/{sku}/stock"),
        Some(&admin()),
        &serde_json::json!({"quantity": 1}),
        headers,
    )
    .await
}

pub fn money(amount: i64) -> Value {
    serde_json::json!({"amount_minor": amount, "currency": "USD"})
}

/// Registers a customer and adds stock, the usual set-up.
pub async fn seed(app: &TestApp, customer: &str, sku: &str, stock: i64) {
    let created = app
        .post(
            "/v1/customers",
            Some(&admin()),
            &serde_json::json!({"customer_id": customer, "name": "Ada", "credit_limit": money(100_000)}),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let stocked = app
        .post(
            &format!("/v1/inventory/{sku}/stock"),
            Some(&admin()),
            &serde_json::json!({"quantity": stock}),
            &[],
        )
        .await;
    assert_eq!(stocked.status, StatusCode::OK, "{:?}", stocked.body);
}

/// The envelope and payload of `sku`'s `StockAdded` (one unit) at `version`, chained to
/// `predecessor` and stamped `at`, as its writer would have appended it: for tests that write
/// a history straight to the events topic.
pub fn stock_added_as_written(
    sku: &str,
    version: u64,
    predecessor: Option<uuid::Uuid>,
    at: chrono::DateTime<chrono::Utc>,
) -> (EventEnvelope, Vec<u8>) {
    let envelope = EventEnvelope {
        event_id: uuid::Uuid::now_v7(),
        event_type: "StockAdded".into(),
        aggregate_kind: AggregateKind::InventoryItem,
        aggregate_id: sku.to_owned(),
        version: domain::Version::new(version),
        predecessor,
        command_id: uuid::Uuid::new_v4().to_string(),
        request_hash: None,
        occurred_at: at,
        trace: platform::envelope::Trace {
            correlation_id: uuid::Uuid::new_v4().to_string(),
            causation_id: uuid::Uuid::new_v4().to_string(),
            traceparent: None,
        },
    };
    let payload = schemas::encode(&domain::inventory::InventoryEvent::StockAdded {
        sku: domain::values::Sku::try_from(sku).unwrap(),
        quantity: domain::values::Quantity::try_from(1).unwrap(),
    })
    .unwrap();
    (envelope, payload)
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The record's Kafka timestamp (the log-order rule's clock reads it).
    pub timestamp: Option<i64>,
    pub envelope: Option<EventEnvelope>,
    pub payload: Vec<u8>,
}

/// Every committed record currently in `topic` (all partitions), oldest first per partition.
pub async fn read_all(kafka: &TestKafka, topic: &str) -> Vec<Stored> {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_committed(&kafka, &topic))
        .await
        .expect("reader thread")
}

/// Every committed record in `topic` once no transaction is open on it (a commit returns
/// before its markers are written, and until then its records are past the end a
/// `read_committed` reader gets to), read until the reader's position reaches every
/// partition's end: commit markers and aborted records take offsets no record is read at, so
/// neither "a record at `high - 1` arrived" nor "`high - low` records arrived" ever holds.
fn read_committed(kafka: &TestKafka, topic: &str) -> Vec<Stored> {
    let ends = LogEnds::new(&kafka.settings).expect("reader");
    let extents = ends
        .settled(topic, Duration::from_secs(15))
        .expect("watermarks");
    assert!(
        !extents.is_empty(),
        "no partitions of {topic} in the metadata"
    );
    let mut out: Vec<Stored> = ends
        .read_to_end(topic, &extents, Duration::from_secs(20))
        .expect("records in time")
        .iter()
        .map(|message| Stored {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            timestamp: message.timestamp().to_millis(),
            envelope: EventEnvelope::from_headers(message.headers().map(|h| h.as_borrowed())).ok(),
            payload: message.payload().unwrap_or_default().to_vec(),
        })
        .collect();
    out.sort_by_key(|s| (s.partition, s.offset));
    out
}

pub async fn events(kafka: &TestKafka, kind: AggregateKind) -> Vec<Stored> {
    read_all(kafka, &kafka.topics().events(kind)).await
}

/// Committed records in a topic right now. Read and counted: `high - low` would count
/// transaction markers and aborted records too.
pub fn count(kafka: &TestKafka, topic: &str) -> i64 {
    read_committed(kafka, topic).len() as i64
}

/// Events appended across every aggregate topic.
pub fn all_events(kafka: &TestKafka) -> i64 {
    AggregateKind::ALL
        .iter()
        .map(|k| count(kafka, &kafka.topics().events(*k)))
        .sum()
}

/// Commands sent across every commands topic (key claims included).
pub fn all_commands(kafka: &TestKafka) -> i64 {
    command_api::processor::COMMAND_KINDS
        .iter()
        .map(|k| count(kafka, &kafka.topics().commands(*k)))
        .sum()
}
