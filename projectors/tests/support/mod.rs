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
use platform::log_end::{Extent, Gap, LogEnds};
use platform::partitioner::partition_for;
use projectors::startup::MIGRATOR;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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
        projectors::startup::ensure_read_topics(&kafka.settings)
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

    /// Waits until every projection has applied everything written so far: each checkpoint
    /// reaches the partition's end, or only transaction markers and aborted records lie between
    /// (a checkpoint is the last applied record's offset + 1, so it stays below an end that a
    /// commit marker takes). The ends are read once the topics settle, so a transaction whose
    /// commit returned but whose markers are not written yet is waited for.
    pub async fn caught_up(&self) {
        let ends = std::sync::Arc::new(LogEnds::new(&self.kafka.settings).unwrap());
        for _ in 0..600 {
            if self.all_applied(&ends).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("projections did not catch up");
    }

    /// Waits (up to 10 s per topic) until no transaction is open on any events topic: a
    /// transaction's commit returns before its markers are written, and until they are, its
    /// records lie past the end a `read_committed` reader (or a rebuild) gets to.
    pub async fn settle(&self) {
        let ends = std::sync::Arc::new(LogEnds::new(&self.kafka.settings).unwrap());
        for topic in self.kafka.topics().all_events() {
            settled(&ends, &topic).await;
        }
    }

    /// Whether every projection's checkpoint is at the end of every partition.
    async fn all_applied(&self, ends: &std::sync::Arc<LogEnds>) -> bool {
        let topics = self.kafka.topics();
        for name in projectors::projections::ALL {
            let kind = projectors::projections::kind_of(name).unwrap();
            let topic = topics.events(kind);
            let extents = settled(ends, &topic).await;
            if extents.is_empty() {
                return false; // metadata not read: every topic has partitions
            }
            for extent in extents {
                let stored: Option<i64> = sqlx::query_scalar("SELECT o.next_offset FROM projection_offsets o JOIN projection_generations g ON o.projection = projection_key(g.projection, g.generation) WHERE g.projection = $1 AND o.topic = $2 AND o.partition = $3")
                    .bind(name)
                    .bind(&topic)
                    .bind(extent.partition)
                    .fetch_optional(self.pool())
                    .await
                    .unwrap();
                if !at_end(ends, &topic, extent, stored.unwrap_or(0)).await {
                    return false;
                }
            }
        }
        true
    }
}

/// The extents of `topic` once no transaction is open on it (or as they are after 10 s).
async fn settled(ends: &std::sync::Arc<LogEnds>, topic: &str) -> Vec<Extent> {
    let (ends, topic) = (ends.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || ends.settled(&topic, Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap()
}

/// Whether a checkpoint `stored` is at the end of `extent`: nothing committed lies between.
async fn at_end(ends: &std::sync::Arc<LogEnds>, topic: &str, extent: Extent, stored: i64) -> bool {
    if stored >= extent.end {
        return true;
    }
    let (ends, topic) = (ends.clone(), topic.to_owned());
    let gap = tokio::task::spawn_blocking(move || {
        ends.gap(
            &topic,
            extent.partition,
            stored,
            extent.end,
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap()
    .unwrap();
    gap == Gap::Empty
}

/// Appends events as a writer would.
pub struct EventLog {
    producer: FutureProducer,
    /// Every append is a transaction of its own, as partition writers append (see
    /// [`EventLog::transactional`]); otherwise records are appended plainly.
    transactional: bool,
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
            transactional: false,
            kafka: kafka.clone(),
            heads: HashMap::new(),
        }
    }

    /// A writer that appends each record in a Kafka transaction of its own, as partition
    /// writers do: a commit marker follows every record, so offsets are not contiguous and every
    /// partition written ends with a marker.
    pub async fn transactional(kafka: &TestKafka) -> Self {
        let id = format!(
            "{}.test-writer-{}",
            kafka.settings.topic_prefix,
            Uuid::new_v4()
        );
        let producer: FutureProducer = platform::kafka::producer_config(&kafka.settings)
            .set("transactional.id", &id)
            .create()
            .unwrap();
        let init = producer.clone();
        tokio::task::spawn_blocking(move || init.init_transactions(Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap();
        Self {
            producer,
            transactional: true,
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

    /// Any record at all, on the aggregate's partition (or partition 0 without a key), in a
    /// transaction of its own if the log is transactional.
    pub async fn raw(
        &self,
        kind: AggregateKind,
        key: Option<&str>,
        headers: Option<OwnedHeaders>,
        payload: &[u8],
    ) -> i64 {
        self.raw_at(kind, key, headers, payload, None).await
    }

    /// [`Self::raw`] with the record's Kafka timestamp set to `timestamp` (milliseconds).
    pub async fn raw_at(
        &self,
        kind: AggregateKind,
        key: Option<&str>,
        headers: Option<OwnedHeaders>,
        payload: &[u8],
        timestamp: Option<i64>,
    ) -> i64 {
        if self.transactional {
            self.producer.begin_transaction().unwrap();
        }
        let offset = self.send(kind, key, headers, payload, timestamp).await;
        if self.transactional {
            self.end_transaction(true).await;
        }
        offset
    }

    /// Appends `event` in a transaction that is then aborted, as a fenced or failed writer
    /// leaves its batch: the record and the abort marker take offsets that no reader is handed,
    /// and the aggregate's next event gets the same version. Only on a transactional log.
    pub async fn append_aborted<E: WireRecord>(
        &mut self,
        kind: AggregateKind,
        id: &str,
        event: E,
    ) -> i64 {
        assert!(self.transactional, "only a transactional log aborts");
        let head = (kind, id.to_owned());
        let before = self.heads.get(&head).copied();
        let envelope = self.next_envelope(kind, id, &event);
        match before {
            Some(before) => self.heads.insert(head, before),
            None => self.heads.remove(&head),
        };
        let payload = schemas::encode(&event).unwrap();
        self.producer.begin_transaction().unwrap();
        let offset = self
            .send(kind, Some(id), Some(envelope.to_headers()), &payload, None)
            .await;
        self.end_transaction(false).await;
        offset
    }

    /// Commits or aborts the open transaction (librdkafka blocks until the broker answered).
    async fn end_transaction(&self, commit: bool) {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            if commit {
                producer.commit_transaction(Duration::from_secs(30))
            } else {
                producer.abort_transaction(Duration::from_secs(30))
            }
        })
        .await
        .unwrap()
        .unwrap();
    }

    async fn send(
        &self,
        kind: AggregateKind,
        key: Option<&str>,
        headers: Option<OwnedHeaders>,
        payload: &[u8],
        timestamp: Option<i64>,
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
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
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
    let settings = projectors::startup::Settings {
        database_url: world.db.url.clone(),
        kafka: world.kafka.settings.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        limits: projectors::runner::BatchLimits::default(),
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        projectors::startup::Application::build(settings)
            .await
            .unwrap()
            .run_until(async move { token.cancelled().await })
            .await
            .unwrap()
    });
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
