//! Runs one projection: a consumer group member on the projection's events topic that applies
//! batches of events in single Postgres transactions.
//!
//! Per batch, in one transaction: lock the projection's offsets, skip what is below them, apply
//! the log-order rule against each row's chain head, fold the events, store the changed rows
//! (one UNNEST upsert), record anomalies and parked events, move the offsets. Dead letters are
//! acknowledged by Kafka before the transaction commits. A projector killed at any instant
//! therefore loses nothing and applies nothing twice: the offsets and the effects are one commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use platform::config::KafkaSettings;
use platform::envelope::EventEnvelope;
use platform::topics::Topics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::projection::{Projection, Stamp};

/// Batches are bounded by size and by time.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_wait: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_events: 2000,
            max_wait: Duration::from_millis(20),
        }
    }
}

/// How often a failing batch is retried before its events are tried one by one, and how often
/// one event is tried before it is dead-lettered.
const ATTEMPTS: u32 = 3;

#[derive(Debug)]
pub struct AssignmentContext {
    assigned: mpsc::UnboundedSender<Vec<i32>>,
    projection: &'static str,
}

impl ClientContext for AssignmentContext {
    /// librdkafka's statistics carry each partition's consumer lag: published as a gauge.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("projector_consumer_lag", "projection" => self.projection, "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for AssignmentContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = list.elements().iter().map(|e| e.partition()).collect();
            let _ = self.assigned.send(partitions);
        }
    }
}

/// Which generation of the read model a runner writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Whatever generation is current, read in every batch under a share lock, so a rebuild's
    /// switch waits for the batch in progress and the next batch follows the switch.
    Live,
    /// A rebuild's own generation.
    Fixed(i32),
}

/// The key a generation's offsets, parking and anomalies are stored under.
pub fn generation_key(projection: &str, generation: i32) -> String {
    format!("{projection}@g{generation}")
}

/// The physical table of a generation.
pub fn generation_table(projection: &str, generation: i32) -> String {
    format!("{projection}_g{generation}")
}

/// One projection's consumer loop.
pub struct Runner<P: Projection> {
    pool: PgPool,
    consumer: StreamConsumer<AssignmentContext>,
    assigned: mpsc::UnboundedReceiver<Vec<i32>>,
    dead_letters: DeadLetters,
    topic: String,
    limits: BatchLimits,
    generation: Generation,
    _projection: PhantomData<P>,
}

impl<P: Projection> std::fmt::Debug for Runner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("projection", &P::NAME)
            .finish()
    }
}

/// A message with what the batch needs to know about it.
struct Incoming<'a> {
    message: &'a OwnedMessage,
    key: Option<String>,
}

/// An event not applied because it does not extend its aggregate's chain.
struct Anomaly {
    partition: i32,
    offset: i64,
    aggregate_id: String,
    kind: &'static str,
    detail: String,
}

/// An event held back because an earlier event of its aggregate was dead-lettered.
struct ParkedEvent {
    partition: i32,
    offset: i64,
    aggregate_id: String,
    payload: Option<Vec<u8>>,
    headers: serde_json::Value,
}

/// Everything one batch decided, written in its transaction.
#[derive(Default)]
struct Outcome {
    applied: u64,
    anomalies: Vec<Anomaly>,
    parked_events: Vec<ParkedEvent>,
    /// (aggregate id, reason)
    new_parks: Vec<(String, String)>,
    dead: Vec<DeadLetter>,
}

impl<P: Projection> Runner<P> {
    /// A live runner (the projection's consumer group, the current generation).
    pub fn new(
        pool: PgPool,
        kafka: &KafkaSettings,
        producer: FutureProducer,
        limits: BatchLimits,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let group = format!("{}.projector.{}", kafka.topic_prefix, P::NAME);
        Self::with_generation(pool, kafka, producer, limits, Generation::Live, &group)
    }

    /// A runner for one generation with its own consumer group (a rebuild).
    pub fn with_generation(
        pool: PgPool,
        kafka: &KafkaSettings,
        producer: FutureProducer,
        limits: BatchLimits,
        generation: Generation,
        group: &str,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let topics = Topics::new(kafka.topic_prefix.clone());
        let topic = topics.events(P::KIND);
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer: StreamConsumer<AssignmentContext> =
            platform::kafka::consumer_config(kafka, group)
                .set("fetch.wait.max.ms", "20")
                .set("statistics.interval.ms", "5000")
                .create_with_context(AssignmentContext {
                    assigned: tx,
                    projection: P::NAME,
                })?;
        consumer.subscribe(&[&topic])?;
        Ok(Self {
            pool,
            consumer,
            assigned: rx,
            dead_letters: DeadLetters::new(producer, P::NAME),
            topic,
            limits,
            generation,
            _projection: PhantomData,
        })
    }

    /// Runs until `shutdown`; the batch in progress is finished and committed first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        info!(projection = P::NAME, topic = %self.topic, "projection running");
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(partitions) = self.assigned.recv() => {
                    self.resume_from_stored_offsets(&partitions).await;
                    continue;
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => message.detach(),
                    Err(error) => {
                        warn!(projection = P::NAME, %error, "consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            self.process(first, &shutdown).await;
        }
        self.consumer.unsubscribe();
        info!(projection = P::NAME, "projection stopped");
    }

    /// Applies the batch that starts with `first`, however long it takes.
    async fn process(&self, first: OwnedMessage, shutdown: &CancellationToken) {
        let batch = self.collect(first).await;
        self.apply_with_retries(&batch, shutdown).await;
        self.commit_to_kafka(&batch);
    }

    /// One batch, or nothing if none arrives within `wait` (rebuilds drive themselves with this).
    pub async fn step(&self, wait: Duration, shutdown: &CancellationToken) -> bool {
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Ok(Ok(message)) => {
                self.process(message.detach(), shutdown).await;
                true
            }
            _ => false,
        }
    }

    /// The events topic this runner reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The generation a batch writes: fixed, or the current one under a share lock.
    async fn generation_in(&self, connection: &mut PgConnection) -> Result<i32, sqlx::Error> {
        match self.generation {
            Generation::Fixed(generation) => Ok(generation),
            Generation::Live => {
                sqlx::query_scalar(
                    "SELECT generation FROM projection_generations WHERE projection = $1 FOR SHARE",
                )
                .bind(P::NAME)
                .fetch_one(connection)
                .await
            }
        }
    }

    /// Kafka's committed offsets only speed up a restart; the stored offsets are the truth.
    async fn resume_from_stored_offsets(&self, partitions: &[i32]) {
        let stored = match self.stored_offsets(partitions).await {
            Ok(stored) => stored,
            Err(error) => {
                warn!(projection = P::NAME, %error, "could not read stored offsets; relying on skip-below-offset");
                return;
            }
        };
        for partition in partitions {
            let offset = stored
                .get(partition)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            for _ in 0..20 {
                if self
                    .consumer
                    .seek(&self.topic, *partition, offset, Duration::from_secs(2))
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn stored_offsets(&self, partitions: &[i32]) -> Result<HashMap<i32, i64>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let key = generation_key(P::NAME, self.generation_in(&mut connection).await?);
        let rows = sqlx::query("SELECT partition, next_offset FROM projection_offsets WHERE projection = $1 AND topic = $2 AND partition = ANY($3)")
            .bind(&key).bind(&self.topic).bind(partitions).fetch_all(&mut *connection)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i32, _>("partition")?,
                    r.try_get::<i64, _>("next_offset")?,
                ))
            })
            .collect()
    }

    async fn collect(&self, first: OwnedMessage) -> Vec<OwnedMessage> {
        let deadline = Instant::now() + self.limits.max_wait;
        let mut batch = vec![first];
        while batch.len() < self.limits.max_events {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                _ => break,
            }
        }
        batch
    }

    /// Applies a batch. Transient failures (database down) are retried until they pass or the
    /// process stops; a batch that keeps failing is split into single events, and an event that
    /// keeps failing on its own is dead-lettered.
    async fn apply_with_retries(&self, batch: &[OwnedMessage], shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut statement_failures = 0;
        loop {
            match self.apply(batch, 0).await {
                Ok(()) => return,
                Err(error) if is_statement_failure(&error) => {
                    statement_failures += 1;
                    warn!(projection = P::NAME, %error, attempt = statement_failures, "batch failed");
                    if statement_failures >= ATTEMPTS {
                        break;
                    }
                }
                Err(error) => warn!(projection = P::NAME, %error, "database unavailable; retrying"),
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        for message in batch {
            let single = std::slice::from_ref(message);
            let mut attempts = 0;
            loop {
                attempts += 1;
                match self.apply(single, 0).await {
                    Ok(()) => break,
                    Err(error) if attempts >= ATTEMPTS && is_statement_failure(&error) => {
                        error!(projection = P::NAME, offset = message.offset(), %error, "event keeps failing; dead-lettering it");
                        while let Err(error) = self
                            .dead_letter_alone(message, &error.to_string(), attempts)
                            .await
                        {
                            warn!(projection = P::NAME, %error, "could not dead-letter; retrying");
                            if shutdown.is_cancelled() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        break;
                    }
                    Err(_) if shutdown.is_cancelled() => return,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts))).await
                    }
                }
            }
        }
    }

    /// One batch, one transaction.
    async fn apply(&self, batch: &[OwnedMessage], attempts: u32) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        let partitions: Vec<i32> = batch
            .iter()
            .map(Message::partition)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let stored = lock_offsets(&mut tx, &key, &self.topic, &partitions).await?;
        let fresh: Vec<Incoming<'_>> = batch
            .iter()
            .filter(|m| m.offset() >= stored.get(&m.partition()).copied().unwrap_or(0))
            .map(|m| Incoming {
                message: m,
                key: m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .map(str::to_owned),
            })
            .collect();
        if fresh.is_empty() {
            return tx.commit().await;
        }
        let ids: Vec<String> = fresh
            .iter()
            .filter_map(|i| i.key.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut parked = parked_aggregates(&mut tx, &key, &ids).await?;
        let mut rows = P::load(&mut tx, &table, &ids).await?;
        let mut changed: HashSet<String> = HashSet::new();
        let mut outcome = Outcome::default();
        for incoming in &fresh {
            self.decide(
                incoming,
                &mut rows,
                &mut changed,
                &mut parked,
                &mut outcome,
                attempts,
            );
        }
        let changed_rows: Vec<P::Row> = changed
            .iter()
            .filter_map(|id| rows.get(id).cloned())
            .collect();
        P::store(&mut tx, &table, &changed_rows).await?;
        record(&mut tx, &key, &self.topic, &outcome).await?;
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for incoming in &fresh {
            let entry = next.entry(incoming.message.partition()).or_insert(0);
            *entry = (*entry).max(incoming.message.offset() + 1);
        }
        store_offsets(&mut tx, &key, &self.topic, &next).await?;
        // Dead letters must be durable before the offsets move past them.
        self.dead_letters
            .publish(&outcome.dead)
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("dead-letter topic unavailable: {e}")))?;
        tx.commit().await?;
        metrics::counter!("projector_events_applied_total", "projection" => P::NAME)
            .increment(outcome.applied);
        metrics::histogram!("projector_batch_size", "projection" => P::NAME)
            .record(fresh.len() as f64);
        metrics::histogram!("projector_batch_seconds", "projection" => P::NAME)
            .record(started.elapsed().as_secs_f64());
        if !outcome.dead.is_empty() {
            metrics::counter!("projector_dead_letters_total", "projection" => P::NAME)
                .increment(outcome.dead.len() as u64);
        }
        for anomaly in &outcome.anomalies {
            metrics::counter!("projector_anomalies_total", "projection" => P::NAME, "kind" => anomaly.kind).increment(1);
        }
        Ok(())
    }

    /// What to do with one event: apply, park, report or dead-letter.
    fn decide(
        &self,
        incoming: &Incoming<'_>,
        rows: &mut HashMap<String, P::Row>,
        changed: &mut HashSet<String>,
        parked: &mut HashSet<String>,
        outcome: &mut Outcome,
        attempts: u32,
    ) {
        let message = incoming.message;
        let (partition, offset) = (message.partition(), message.offset());
        let dead = |reason: String| {
            DeadLetter::from_message(&self.topic, message, reason, attempts.max(1))
        };
        let Some(key) = incoming.key.clone() else {
            outcome
                .dead
                .push(dead("record has no key: its aggregate is unknown".into()));
            return;
        };
        if parked.contains(&key) {
            outcome.parked_events.push(ParkedEvent {
                partition,
                offset,
                aggregate_id: key,
                payload: message.payload().map(<[u8]>::to_vec),
                headers: headers_json(message),
            });
            return;
        }
        let mut park = |reason: String, outcome: &mut Outcome| {
            outcome.dead.push(dead(reason.clone()));
            outcome.new_parks.push((key.clone(), reason));
            parked.insert(key.clone());
        };
        let envelope = match EventEnvelope::from_headers(message.headers().map(|h| h.as_borrowed()))
        {
            Ok(envelope) if envelope.aggregate_id == key => envelope,
            Ok(_) => {
                return park(
                    "envelope names another aggregate than the record key".into(),
                    outcome,
                )
            }
            Err(error) => return park(format!("invalid envelope: {error}"), outcome),
        };
        let head = rows.get(&key).map(P::head);
        let expected = head.map_or(1, |h| h.version + 1);
        let version = i64::try_from(envelope.version.get()).unwrap_or(i64::MAX);
        if version != expected || envelope.predecessor != head.map(|h| h.last_event_id) {
            let kind = if version > expected {
                "version-gap"
            } else {
                "inert-loser"
            };
            let detail = format!("version {version}, expected {expected}");
            if kind == "version-gap" {
                error!(projection = P::NAME, aggregate_id = %key, %detail, "version gap: event not applied");
            }
            outcome.anomalies.push(Anomaly {
                partition,
                offset,
                aggregate_id: key,
                kind,
                detail,
            });
            return;
        }
        let event = match message
            .payload()
            .ok_or(schemas::DecodeError::TooShort { len: 0 })
            .and_then(schemas::decode::<P::Event>)
        {
            Ok(event) => event,
            Err(error) => return park(format!("cannot decode: {error}"), outcome),
        };
        match P::fold(rows.get(&key).cloned(), &key, event, Stamp::of(&envelope)) {
            Ok(row) => {
                rows.insert(key.clone(), row);
                changed.insert(key);
                outcome.applied += 1;
            }
            Err(error) => park(format!("handler failed: {error}"), outcome),
        }
    }

    /// Re-applies dead-lettered events (rebuilt from their DLQ records) and everything parked
    /// behind them, on the current generation, in one transaction per aggregate. An aggregate is
    /// unparked only if all of it now applies; otherwise nothing changes and the error is returned.
    pub async fn redrive(
        &self,
        letters: &[OwnedMessage],
    ) -> Result<Vec<(String, Result<usize, String>)>, sqlx::Error> {
        let mut by_aggregate: BTreeMap<String, Vec<&OwnedMessage>> = BTreeMap::new();
        for letter in letters {
            if let Some(key) = letter.key().and_then(|k| std::str::from_utf8(k).ok()) {
                by_aggregate.entry(key.to_owned()).or_default().push(letter);
            }
        }
        let mut results = Vec::new();
        for (aggregate, mut dead) in by_aggregate {
            dead.sort_by_key(|m| (m.partition(), m.offset()));
            let dead: Vec<OwnedMessage> = dead.into_iter().cloned().collect();
            let result = self.redrive_with(&aggregate, &dead).await?;
            results.push((aggregate, result));
        }
        Ok(results)
    }

    /// Re-applies `dead` (in order) and then the aggregate's parked events, in one transaction;
    /// unparks the aggregate only if all of them apply.
    async fn redrive_with(
        &self,
        aggregate: &str,
        dead: &[OwnedMessage],
    ) -> Result<Result<usize, String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        let still_parked: Option<String> = sqlx::query_scalar("SELECT aggregate_id FROM parked_aggregates WHERE projection = $1 AND aggregate_id = $2 FOR UPDATE")
            .bind(&key)
            .bind(aggregate)
            .fetch_optional(&mut *tx)
            .await?;
        if still_parked.is_none() {
            return Ok(Ok(0));
        }
        let parked_rows = sqlx::query("SELECT partition, \"offset\", payload, headers FROM parked_events WHERE projection = $1 AND aggregate_id = $2 ORDER BY partition, \"offset\"")
            .bind(&key)
            .bind(aggregate)
            .fetch_all(&mut *tx)
            .await?;
        let mut messages: Vec<OwnedMessage> = dead.to_vec();
        for row in &parked_rows {
            let headers: serde_json::Value = row.try_get("headers")?;
            messages.push(OwnedMessage::new(
                row.try_get::<Option<Vec<u8>>, _>("payload")?,
                Some(aggregate.as_bytes().to_vec()),
                self.topic.clone(),
                rdkafka::Timestamp::NotAvailable,
                row.try_get("partition")?,
                row.try_get("offset")?,
                Some(headers_from_json(&headers)),
            ));
        }
        let mut rows = P::load(&mut tx, &table, &[aggregate.to_owned()]).await?;
        let (mut changed, mut parked, mut outcome) =
            (HashSet::new(), HashSet::new(), Outcome::default());
        for message in &messages {
            let incoming = Incoming {
                message,
                key: Some(aggregate.to_owned()),
            };
            self.decide(
                &incoming,
                &mut rows,
                &mut changed,
                &mut parked,
                &mut outcome,
                1,
            );
        }
        if let Some(failure) = outcome.dead.first() {
            tx.rollback().await?;
            return Ok(Err(failure.error.clone()));
        }
        let changed_rows: Vec<P::Row> = changed
            .iter()
            .filter_map(|id| rows.get(id).cloned())
            .collect();
        match P::store(&mut tx, &table, &changed_rows).await {
            Ok(()) => {}
            Err(error) if is_statement_failure(&error) => {
                tx.rollback().await?;
                return Ok(Err(error.to_string()));
            }
            Err(error) => return Err(error),
        }
        for statement in [
            "DELETE FROM parked_events WHERE projection = $1 AND aggregate_id = $2",
            "DELETE FROM parked_aggregates WHERE projection = $1 AND aggregate_id = $2",
        ] {
            sqlx::query(statement)
                .bind(&key)
                .bind(aggregate)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(outcome.applied as usize))
    }

    /// Skips a dead-lettered event explicitly: its aggregate's chain head moves past it (its
    /// effect is never applied, and the skip is recorded as an anomaly), then the events parked
    /// behind it are applied in order and the aggregate is unparked. Refused when the event has
    /// no valid envelope, does not follow the row's head, or would be the aggregate's first.
    pub async fn skip(&self, letter: &OwnedMessage) -> Result<Result<usize, String>, sqlx::Error> {
        let Some(aggregate) = letter
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
        else {
            return Ok(Err(
                "the record has no key: no aggregate is parked behind it".into(),
            ));
        };
        let envelope = match EventEnvelope::from_headers(letter.headers().map(|h| h.as_borrowed())) {
            Ok(envelope) => envelope,
            Err(error) => return Ok(Err(format!("no valid envelope ({error}): nothing says which version to skip; rebuild after fixing the cause"))),
        };
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        let mut rows = P::load(&mut tx, &table, std::slice::from_ref(&aggregate)).await?;
        let Some(row) = rows.remove(&aggregate) else {
            return Ok(Err(
                "it is the aggregate's first event: there is no row to skip it on".into(),
            ));
        };
        let head = P::head(&row);
        let version = i64::try_from(envelope.version.get()).unwrap_or(i64::MAX);
        if version != head.version + 1 || envelope.predecessor != Some(head.last_event_id) {
            return Ok(Err(format!(
                "it does not follow the read model (version {version} after {})",
                head.version
            )));
        }
        let moved = P::with_head(
            row,
            crate::projection::RowHead {
                version,
                last_event_id: envelope.event_id,
            },
        );
        P::store(&mut tx, &table, std::slice::from_ref(&moved)).await?;
        sqlx::query(
            "INSERT INTO projection_anomalies (projection, topic, partition, \"offset\", aggregate_id, kind, detail, seen_at) \
             VALUES ($1, $2, $3, $4, $5, 'skipped', 'dead letter skipped by an operator', now()) ON CONFLICT DO NOTHING",
        )
        .bind(&key)
        .bind(&self.topic)
        .bind(letter.partition())
        .bind(letter.offset())
        .bind(&aggregate)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // What was parked behind it now follows the moved head.
        Ok(match self.redrive_with(&aggregate, &[]).await? {
            Ok(applied) => Ok(applied),
            Err(error) => Err(format!("skipped, but a parked event still fails: {error}")),
        })
    }

    /// Dead-letters one event on its own (after it failed every attempt) and moves past it.
    async fn dead_letter_alone(
        &self,
        message: &OwnedMessage,
        error: &str,
        attempts: u32,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let key = generation_key(P::NAME, self.generation_in(&mut tx).await?);
        let stored = lock_offsets(&mut tx, &key, &self.topic, &[message.partition()]).await?;
        if message.offset() < stored.get(&message.partition()).copied().unwrap_or(0) {
            return tx.commit().await;
        }
        let mut outcome = Outcome::default();
        outcome.dead.push(DeadLetter::from_message(
            &self.topic,
            message,
            format!("handler failed: {error}"),
            attempts,
        ));
        if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
            outcome
                .new_parks
                .push((key.to_owned(), format!("handler failed: {error}")));
        }
        record(&mut tx, &key, &self.topic, &outcome).await?;
        store_offsets(
            &mut tx,
            &key,
            &self.topic,
            &BTreeMap::from([(message.partition(), message.offset() + 1)]),
        )
        .await?;
        self.dead_letters
            .publish(&outcome.dead)
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("dead-letter topic unavailable: {e}")))?;
        tx.commit().await?;
        metrics::counter!("projector_dead_letters_total", "projection" => P::NAME).increment(1);
        Ok(())
    }

    fn commit_to_kafka(&self, batch: &[OwnedMessage]) {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for message in batch {
            let entry = next.entry(message.partition()).or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if self.consumer.store_offsets(&list).is_ok() {
            let _ = self.consumer.commit_consumer_state(CommitMode::Async);
        }
    }
}

/// A statement the database refused (a constraint, a type): retrying the same input will fail
/// again, unlike a lost connection.
fn is_statement_failure(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)
    )
}

/// Headers as parked (JSON), back into Kafka headers.
fn headers_from_json(json: &serde_json::Value) -> rdkafka::message::OwnedHeaders {
    let mut headers = rdkafka::message::OwnedHeaders::new();
    if let Some(map) = json.as_object() {
        for (key, value) in map {
            headers = headers.insert(rdkafka::message::Header {
                key: key.as_str(),
                value: value.as_str(),
            });
        }
    }
    headers
}

fn headers_json(message: &OwnedMessage) -> serde_json::Value {
    use rdkafka::message::Headers;
    let mut map = serde_json::Map::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned());
            map.insert(
                header.key.to_owned(),
                value.map_or(serde_json::Value::Null, serde_json::Value::String),
            );
        }
    }
    serde_json::Value::Object(map)
}

async fn lock_offsets(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    // Make sure the rows exist, so FOR UPDATE serialises concurrent batches on a partition.
    sqlx::query(
        "INSERT INTO projection_offsets (projection, topic, partition, next_offset, updated_at) \
         SELECT $1, $2, p, 0, now() FROM UNNEST($3::int4[]) AS p ON CONFLICT DO NOTHING",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .execute(&mut *connection)
    .await?;
    let rows = sqlx::query(
        "SELECT partition, next_offset FROM projection_offsets \
         WHERE projection = $1 AND topic = $2 AND partition = ANY($3) FOR UPDATE",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i32, _>("partition")?,
                r.try_get::<i64, _>("next_offset")?,
            ))
        })
        .collect()
}

async fn store_offsets(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_offsets o SET next_offset = GREATEST(o.next_offset, n.next), updated_at = now() \
         FROM UNNEST($3::int4[], $4::int8[]) AS n(partition, next) \
         WHERE o.projection = $1 AND o.topic = $2 AND o.partition = n.partition",
    )
    .bind(projection)
    .bind(topic)
    .bind(next.keys().copied().collect::<Vec<_>>())
    .bind(next.values().copied().collect::<Vec<_>>())
    .execute(connection)
    .await?;
    Ok(())
}

async fn parked_aggregates(
    connection: &mut PgConnection,
    projection: &str,
    ids: &[String],
) -> Result<HashSet<String>, sqlx::Error> {
    let rows = sqlx::query("SELECT aggregate_id FROM parked_aggregates WHERE projection = $1 AND aggregate_id = ANY($2)")
        .bind(projection)
        .bind(ids)
        .fetch_all(connection)
        .await?;
    rows.iter().map(|r| r.try_get("aggregate_id")).collect()
}

async fn record(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    outcome: &Outcome,
) -> Result<(), sqlx::Error> {
    if !outcome.anomalies.is_empty() {
        sqlx::query(
            "INSERT INTO projection_anomalies (projection, topic, partition, \"offset\", aggregate_id, kind, detail, seen_at) \
             SELECT $1, $2, p, o, a, k, d, now() FROM UNNEST($3::int4[], $4::int8[], $5::text[], $6::text[], $7::text[]) AS t(p, o, a, k, d) \
             ON CONFLICT DO NOTHING",
        )
        .bind(projection)
        .bind(topic)
        .bind(outcome.anomalies.iter().map(|a| a.partition).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.offset).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.aggregate_id.clone()).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.kind.to_owned()).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.detail.clone()).collect::<Vec<_>>())
        .execute(&mut *connection)
        .await?;
    }
    for (aggregate_id, reason) in &outcome.new_parks {
        sqlx::query(
            "INSERT INTO parked_aggregates (projection, aggregate_id, dlq_topic, reason, parked_at) VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT DO NOTHING",
        )
        .bind(projection)
        .bind(aggregate_id)
        .bind(Topics::dead_letters(topic))
        .bind(reason)
        .execute(&mut *connection)
        .await?;
    }
    for parked in &outcome.parked_events {
        sqlx::query(
            "INSERT INTO parked_events (projection, topic, partition, \"offset\", aggregate_id, payload, headers, parked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, now()) ON CONFLICT DO NOTHING",
        )
        .bind(projection)
        .bind(topic)
        .bind(parked.partition)
        .bind(parked.offset)
        .bind(&parked.aggregate_id)
        .bind(&parked.payload)
        .bind(&parked.headers)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}
