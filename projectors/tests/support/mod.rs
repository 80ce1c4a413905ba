//! Writes events to the real broker exactly as a partition writer does (envelope headers, Avro
//! single-object values, versions chained by predecessor), or deliberately broken ones, and
//! runs projections against a fresh database.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use domain::{AggregateKind, Version};
use platform::envelope::{EventEnvelope, Trace};
use platform::partitioner::partition_for;
use projectors::app::MIGRATOR;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::WireRecord;
use sqlx::PgPool;
use test_harness::{TestDatabase, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod workload;

pub const PARTITIONS: i32 = 3;

/// A test's broker namespace and database, with the read topics created.
pub struct World {
    pub kafka: TestKafka,
    pub db: TestDatabase,
    pub log: EventLog,
}

impl World {
    pub async fn new() -> Self {
        let mut kafka = TestKafka::new();
        kafka.settings.partitions = PARTITIONS;
        projectors::app::ensure_read_topics(&kafka.settings)
            .await
            .unwrap();
        for topic in kafka.topics().all_events() {
            test_harness::kafka::wait_for_partitions(&kafka.settings.brokers, &topic, PARTITIONS)
                .await;
        }
        let db = TestDatabase::create(Some(&MIGRATOR)).await;
        let log = EventLog::new(&kafka);
        Self { kafka, db, log }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Waits until every projection has applied everything written so far.
    pub async fn caught_up(&self) {
        let topics = self.kafka.topics();
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.settings.brokers)
            .create()
            .unwrap();
        for _ in 0..600 {
            let mut behind = false;
            for name in projectors::projections::ALL {
                let kind = projectors::projections::kind_of(name).unwrap();
                let topic = topics.events(kind);
                for partition in 0..PARTITIONS {
                    let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(
                        &consumer,
                        &topic,
                        partition,
                        Duration::from_secs(5),
                    )
                    .unwrap();
                    let stored: Option<i64> = sqlx::query_scalar("SELECT o.next_offset FROM projection_offsets o JOIN projection_generations g ON o.projection = projection_key(g.projection, g.generation) WHERE g.projection = $1 AND o.topic = $2 AND o.partition = $3")
                        .bind(name)
                        .bind(&topic)
                        .bind(partition)
                        .fetch_optional(self.pool())
                        .await
                        .unwrap();
                    behind |= stored.unwrap_or(0) < high;
                }
            }
            if !behind {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("projections did not catch up");
    }
}

/// Appends events as a writer would.
pub struct EventLog {
    producer: FutureProducer,
    kafka: TestKafka,
    heads: HashMap<(AggregateKind, String), (u64, Uuid)>,
}

impl EventLog {
    /// A second writer on the same namespace (its own version bookkeeping).
    pub fn detached(kafka: &TestKafka) -> Self {
        Self::new(kafka)
    }

    fn new(kafka: &TestKafka) -> Self {
        Self {
            producer: kafka.producer(),
            kafka: kafka.clone(),
            heads: HashMap::new(),
        }
    }

    /// The envelope the next event of this aggregate gets.
    pub fn next_envelope<E: WireRecord>(
        &mut self,
        kind: AggregateKind,
        id: &str,
        event: &E,
    ) -> EventEnvelope {
        let head = self.heads.get(&(kind, id.to_owned())).copied();
        let envelope = EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            aggregate_kind: kind,
            aggregate_id: id.to_owned(),
            version: Version::new(head.map_or(1, |h| h.0 + 1)),
            predecessor: head.map(|h| h.1),
            command_id: Uuid::now_v7().to_string(),
            request_hash: None,
            occurred_at: Utc::now(),
            trace: Trace {
                correlation_id: "test".into(),
                causation_id: "test".into(),
                traceparent: None,
            },
        };
        self.heads.insert(
            (kind, id.to_owned()),
            (envelope.version.get(), envelope.event_id),
        );
        envelope
    }

    pub async fn append<E: WireRecord>(&mut self, kind: AggregateKind, id: &str, event: E) -> i64 {
        let envelope = self.next_envelope(kind, id, &event);
        let payload = schemas::encode(&event).unwrap();
        self.raw(kind, Some(id), Some(envelope.to_headers()), &payload)
            .await
    }

    /// Any record at all, on the aggregate's partition (or partition 0 without a key).
    pub async fn raw(
        &self,
        kind: AggregateKind,
        key: Option<&str>,
        headers: Option<OwnedHeaders>,
        payload: &[u8],
    ) -> i64 {
        let topic = self.kafka.topics().events(kind);
        let partition = key.map_or(0, |k| partition_for(k.as_bytes(), PARTITIONS));
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
            .partition(partition)
            .payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|d| d.offset)
            .map_err(|(e, _)| e)
            .unwrap()
    }

    /// Headers of a well-formed next event, for records whose value is then broken.
    pub fn headers_for<E: WireRecord>(
        &mut self,
        kind: AggregateKind,
        id: &str,
        event: &E,
    ) -> OwnedHeaders {
        self.next_envelope(kind, id, event).to_headers()
    }
}

pub fn header(headers: OwnedHeaders, key: &str, value: &str) -> OwnedHeaders {
    headers.insert(Header {
        key,
        value: Some(value),
    })
}

/// Runs every projection in this process until the returned token is cancelled.
pub fn run_projectors(world: &World) -> CancellationToken {
    let settings = projectors::app::Settings {
        database_url: world.db.url.clone(),
        kafka: world.kafka.settings.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        limits: projectors::runner::BatchLimits::default(),
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move { projectors::app::run(settings, token).await.unwrap() });
    stop
}

/// Runs the `projectors` CLI against this world: (succeeded, stdout + stderr).
pub fn cli_result(world: &World, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_projectors"))
        .args(args)
        .env("DATABASE_URL", &world.db.url)
        .env("KAFKA_BROKERS", &world.kafka.settings.brokers)
        .env("KAFKA_TOPIC_PREFIX", &world.kafka.settings.topic_prefix)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs the `projectors` CLI and returns its output; it must succeed.
pub fn cli(world: &World, args: &[&str]) -> String {
    let (ok, output) = cli_result(world, args);
    assert!(ok, "{output}");
    output
}

/// (dlq partition, dlq offset) of the dead letter of `key`'s record at `source_offset` of
/// `topic`, as `projectors dlq list` shows it (what `projectors dlq skip` takes).
pub fn dead_letter_of(
    world: &World,
    topic: &str,
    key: &str,
    source_offset: i64,
) -> (String, String) {
    let listed = cli(world, &["dlq", "list"]);
    let partition = partition_for(key.as_bytes(), PARTITIONS).to_string();
    let row = listed
        .lines()
        .filter(|l| l.contains(".dlq"))
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| {
            cols[3] == topic && cols[4] == partition && cols[5] == source_offset.to_string()
        })
        .unwrap_or_else(|| panic!("no dead letter of {key} at {source_offset}:\n{listed}"));
    (row[1].clone(), row[2].clone())
}

/// `projectors dlq skip` of the dead letter of `key`'s record at `source_offset` on `topic`.
pub fn skip_dead_letter(
    world: &World,
    topic: &str,
    key: &str,
    source_offset: i64,
) -> (bool, String) {
    let (partition, offset) = dead_letter_of(world, topic, key, source_offset);
    cli_result(
        world,
        &[
            "dlq",
            "skip",
            topic,
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
    )
}

/// How many records the dead-letter topics hold, as `projectors dlq list` shows them.
pub fn dead_letter_count(world: &World) -> usize {
    cli(world, &["dlq", "list"])
        .lines()
        .filter(|l| l.contains(".dlq"))
        .count()
}

/// Runs the `projectors` CLI and kills it if it has not finished within `limit`:
/// (succeeded, stdout + stderr).
pub async fn cli_within(world: &World, args: &[&str], limit: Duration) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_projectors"));
    command
        .args(args)
        .env("DATABASE_URL", &world.db.url)
        .env("KAFKA_BROKERS", &world.kafka.settings.brokers)
        .env("KAFKA_TOPIC_PREFIX", &world.kafka.settings.topic_prefix)
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("projectors {} took over {limit:?}", args.join(" ")))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
