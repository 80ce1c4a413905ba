//! Applies batches of one projection's events in single Postgres transactions. Needs no
//! consumer: the [`crate::runner::Runner`] feeds it what it consumes, and operators' commands
//! (`dlq redrive`, `dlq skip`) use it directly.
//!
//! Per batch, in one transaction: lock the projection's offsets, skip what is below them and
//! what operators skipped (`operator_skips`, honoured by every generation), apply the log-order
//! rule against each row's chain head (or the skipped records after it), fold the events, store
//! the changed rows (one UNNEST upsert), record anomalies and parked events, move the offsets.
//! Dead letters are acknowledged by Kafka before the transaction commits. A projector killed at
//! any instant therefore loses nothing and applies nothing twice: the offsets and the effects
//! are one commit.

mod cache;
mod commands;
mod error;
mod fresh;
mod operator;
mod skips;
mod sql;

use domain::Version;
use platform::log_order::{
    advance, extends_chain, CommandUse, CommandWindow, LoserReason, Verdict,
};
use platform::telemetry::exporting_traces;
use platform::telemetry::propagation::{record_span, SpanRole};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use platform::config::KafkaSettings;
use platform::envelope::{EnvelopeError, EventEnvelope};
use platform::topics::Topics;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use schemas::WireRecord;
use sqlx::{PgConnection, PgPool, Row};
use tracing::error;

use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::projection::{Projection, Stamp};
use cache::RowCache;
pub use error::ApplyError;
pub use operator::{Redriven, Skipped};
use skips::Skips;
use sql::{headers_json, lock_offsets, parked_aggregates, record, store_offsets, Progress};

/// Which generation of the read model a runner writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Whatever generation is current, read in every batch under a share lock, so a rebuild's
    /// switch waits for the batch in progress and the next batch follows the switch.
    Live,
    /// A rebuild's own generation: a new, empty table this applier alone writes until the
    /// switch (which lets it keep what it wrote in memory, see `cache`).
    Fixed(i32),
}

pub use read_models::CHECKPOINT_CHANNEL;

/// The key a generation's offsets, parking and anomalies are stored under.
pub fn generation_key(projection: &str, generation: i32) -> String {
    format!("{projection}@g{generation}")
}

/// The physical table of a generation.
pub fn generation_table(projection: &str, generation: i32) -> String {
    format!("{projection}_g{generation}")
}

/// A record with everything the batch needs to know about it, worked out before the batch's
/// transaction: the runner prepares the next batch while the current one is being written.
pub struct Incoming<E> {
    message: OwnedMessage,
    key: Option<String>,
    envelope: Result<EventEnvelope, EnvelopeError>,
    event: Result<E, schemas::DecodeError>,
}

impl<E: WireRecord> Incoming<E> {
    /// Reads the key, the envelope and the event (pure; what fails is judged in the batch).
    pub fn prepare(message: OwnedMessage) -> Self {
        let key = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned);
        let envelope = EventEnvelope::from_headers(message.headers().map(|h| h.as_borrowed()));
        let event = message
            .payload()
            .ok_or(schemas::DecodeError::TooShort { len: 0 })
            .and_then(schemas::decode::<E>);
        Self {
            message,
            key,
            envelope,
            event,
        }
    }

    /// The record as consumed.
    pub fn message(&self) -> &OwnedMessage {
        &self.message
    }
}

impl<E> std::fmt::Debug for Incoming<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("partition", &self.message.partition())
            .field("offset", &self.message.offset())
            .field("key", &self.key)
            .finish()
    }
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
    /// Records an operator skipped (`operator_skips`), passed over without a trace.
    skipped: u64,
    /// One span per applied event while traces are exported, continuing the event's trace and
    /// held until the batch's transaction ends.
    spans: Vec<tracing::Span>,
}

/// What a batch has sorted so far, event by event: the rows as they stand, which of them
/// changed, which aggregates are parked, what to record, and which commands the log has shown
/// (for the repeated-command part of the log-order rule).
struct Sorted<R> {
    rows: HashMap<String, R>,
    changed: HashSet<String>,
    parked: HashSet<String>,
    outcome: Outcome,
    commands: commands::CommandUses,
    commands_changed: HashSet<(i32, String)>,
    /// The log-order rule's clock of each partition, after the records sorted so far. `None`
    /// when records are sorted away from their place in the log (an operator's redrive or skip
    /// of parked events): each is then judged at its own timestamp, the closest stand-in for the
    /// clock at it.
    clocks: Option<HashMap<i32, i64>>,
}

impl<R: Clone> Sorted<R> {
    fn new(
        rows: HashMap<String, R>,
        parked: HashSet<String>,
        commands: commands::CommandUses,
        clocks: Option<HashMap<i32, i64>>,
    ) -> Self {
        Self {
            rows,
            changed: HashSet::new(),
            parked,
            outcome: Outcome::default(),
            commands,
            commands_changed: HashSet::new(),
            clocks,
        }
    }

    /// Moves the partition's clock past `message`: the clock it is judged at.
    fn tick(&mut self, message: &OwnedMessage) -> i64 {
        let stamp = message.timestamp().to_millis();
        match &mut self.clocks {
            Some(clocks) => {
                let clock = clocks.entry(message.partition()).or_insert(0);
                *clock = advance(*clock, stamp);
                *clock
            }
            None => stamp.unwrap_or(0),
        }
    }

    /// The rows the batch changed, to store.
    fn changed_rows(&self) -> Vec<R> {
        self.changed
            .iter()
            .filter_map(|id| self.rows.get(id).cloned())
            .collect()
    }

    /// The command uses the batch added or moved, to store.
    fn changed_commands(&self) -> commands::CommandUses {
        self.commands_changed
            .iter()
            .filter_map(|id| Some((id.clone(), self.commands.get(id)?.clone())))
            .collect()
    }
}

/// The (partition, command id) of `records`' envelopes.
fn command_ids<'a, E: 'a>(
    records: impl IntoIterator<Item = &'a Incoming<E>>,
) -> Vec<(i32, String)> {
    records
        .into_iter()
        .filter_map(|i| {
            let envelope = i.envelope.as_ref().ok()?;
            Some((i.message.partition(), envelope.command_id.clone()))
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect()
}

/// A statement the database refused (a constraint, a type): retrying the same input will fail
/// again, unlike a lost connection.
pub(crate) fn is_statement_failure(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)
    )
}

/// Applies one projection's events to one generation (or the live one).
pub struct Applier<P: Projection> {
    pool: PgPool,
    dead_letters: DeadLetters,
    topic: String,
    generation: Generation,
    /// How long the log-order rule remembers a command id.
    window: CommandWindow,
    /// A rebuild's rows as written (none for the live generation, which others write too).
    cache: Option<Mutex<RowCache<P::Row>>>,
    /// Records whose offsets this applier's committed transactions moved past (applied, inert,
    /// parked, skipped or dead-lettered): what a rebuild reports as its events. Stored offsets
    /// cannot say it: transaction markers and aborted records take offsets too.
    handled: AtomicU64,
    _projection: PhantomData<P>,
}

/// Rows a rebuild keeps in memory at most (about 20 MB of inventory rows); past it the cache is
/// emptied and rows are read back from the table.
const REBUILD_CACHE_ROWS: usize = 100_000;

impl<P: Projection> std::fmt::Debug for Applier<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("projection", &P::NAME)
            .finish()
    }
}

impl<P: Projection> Applier<P> {
    pub fn new(
        pool: PgPool,
        kafka: &KafkaSettings,
        producer: FutureProducer,
        generation: Generation,
        window: CommandWindow,
    ) -> Self {
        Self {
            pool,
            dead_letters: DeadLetters::new(producer, P::NAME),
            topic: Topics::new(kafka.topic_prefix.clone()).events(P::KIND),
            generation,
            window,
            cache: match generation {
                Generation::Live => None,
                Generation::Fixed(_) => {
                    Some(Mutex::new(RowCache::for_empty_table(REBUILD_CACHE_ROWS)))
                }
            },
            handled: AtomicU64::new(0),
            _projection: PhantomData,
        }
    }

    /// Records this applier has moved past so far (see the field).
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// The events topic this projection reads.
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

    pub(crate) async fn stored_offsets(
        &self,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, sqlx::Error> {
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

    /// One batch, one transaction.
    pub(crate) async fn apply(
        &self,
        batch: &[Incoming<P::Event>],
        attempts: u32,
    ) -> Result<(), ApplyError> {
        let result = self.apply_batch(batch, attempts).await;
        if result.is_err() {
            if let Some(cache) = &self.cache {
                cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget();
            }
        }
        result
    }

    /// The rows of `ids` as they are in `table` (absent ones missing): from the rebuild's cache
    /// where it can, else read in the batch's transaction.
    async fn rows_of(
        &self,
        connection: &mut PgConnection,
        table: &str,
        ids: &[String],
    ) -> Result<HashMap<String, P::Row>, sqlx::Error> {
        let Some(cache) = &self.cache else {
            return P::load(connection, table, ids).await;
        };
        let (mut rows, missing) = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lookup(ids);
        if !missing.is_empty() {
            rows.extend(P::load(connection, table, &missing).await?);
        }
        Ok(rows)
    }

    async fn apply_batch(
        &self,
        batch: &[Incoming<P::Event>],
        attempts: u32,
    ) -> Result<(), ApplyError> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        let partitions: Vec<i32> = batch
            .iter()
            .map(|i| i.message.partition())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let stored = lock_offsets(&mut tx, &key, &self.topic, &partitions).await?;
        let fresh = fresh::records(batch, &stored);
        if fresh.is_empty() {
            return Ok(tx.commit().await?);
        }
        let ids: Vec<String> = fresh
            .iter()
            .filter_map(|i| i.key.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let parked = parked_aggregates(&mut tx, &key, &ids).await?;
        let skips = skips::load(&mut tx, P::NAME, &self.topic, &ids).await?;
        let rows = self.rows_of(&mut tx, &table, &ids).await?;
        let used = commands::load(&mut tx, &key, &command_ids(fresh.iter().copied())).await?;
        let clocks = stored.iter().map(|(p, progress)| (*p, progress.clock));
        let mut sorted = Sorted::new(rows, parked, used, Some(clocks.collect()));
        for incoming in fresh.iter().copied() {
            self.sort_event(incoming, &skips, &mut sorted, attempts);
        }
        P::store(&mut tx, &table, &sorted.changed_rows()).await?;
        commands::store(&mut tx, &key, &sorted.changed_commands()).await?;
        let Sorted {
            mut rows,
            changed,
            outcome,
            clocks,
            ..
        } = sorted;
        record(&mut tx, &key, &self.topic, &outcome).await?;
        let clocks = clocks.unwrap_or_default();
        let mut next: BTreeMap<i32, Progress> = BTreeMap::new();
        for incoming in &fresh {
            let partition = incoming.message.partition();
            let entry = next.entry(partition).or_default();
            entry.next_offset = entry.next_offset.max(incoming.message.offset() + 1);
            entry.clock = clocks.get(&partition).copied().unwrap_or(0);
        }
        store_offsets(&mut tx, &key, &self.topic, &next).await?;
        let oldest: Vec<(i32, i64)> = next
            .iter()
            .map(|(p, progress)| (*p, self.window.oldest_remembered(progress.clock)))
            .collect();
        commands::forget_expired(&mut tx, &key, &oldest).await?;
        // Dead letters must be durable before the offsets move past them.
        self.dead_letters
            .publish(&outcome.dead)
            .await
            .map_err(ApplyError::DeadLetters)?;
        tx.commit().await?;
        self.handled
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        if let Some(cache) = &self.cache {
            cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .committed(
                    changed
                        .into_iter()
                        .filter_map(|id| rows.remove(&id).map(|row| (id, row))),
                );
        }
        if self.generation == Generation::Live {
            for (partition, progress) in &next {
                metrics::gauge!("projection_checkpoint", "projection" => P::NAME, "topic" => self.topic.clone(), "partition" => partition.to_string())
                    .set(progress.next_offset as f64);
            }
        }
        metrics::counter!("projector_events_applied_total", "projection" => P::NAME)
            .increment(outcome.applied);
        metrics::histogram!("projector_batch_size", "projection" => P::NAME)
            .record(fresh.len() as f64);
        metrics::histogram!("projector_batch_seconds", "projection" => P::NAME)
            .record(started.elapsed().as_secs_f64());
        if outcome.skipped > 0 {
            metrics::counter!("projector_operator_skips_honoured_total", "projection" => P::NAME)
                .increment(outcome.skipped);
        }
        if !outcome.dead.is_empty() {
            metrics::counter!("dead_letters_total", "consumer" => P::NAME)
                .increment(outcome.dead.len() as u64);
        }
        for anomaly in &outcome.anomalies {
            metrics::counter!("projector_anomalies_total", "projection" => P::NAME, "kind" => anomaly.kind).increment(1);
        }
        Ok(())
    }

    /// Sorts one event: apply it, park it, report it as an anomaly or dead-letter it; or nothing
    /// at all when an operator skipped it.
    fn sort_event(
        &self,
        incoming: &Incoming<P::Event>,
        skips: &Skips,
        sorted: &mut Sorted<P::Row>,
        attempts: u32,
    ) {
        // Every record moves the clock, whatever becomes of it: every reader sees them all.
        let clock = sorted.tick(&incoming.message);
        let Sorted {
            rows,
            changed,
            parked,
            outcome,
            commands: used,
            commands_changed,
            ..
        } = sorted;
        let message = &incoming.message;
        let (partition, offset) = (message.partition(), message.offset());
        if skips.contains(partition, offset) {
            outcome.skipped += 1;
            return;
        }
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
        let envelope = match &incoming.envelope {
            Ok(envelope) if envelope.aggregate_id == key => envelope,
            Ok(_) => {
                return park(
                    "envelope names another aggregate than the record key".into(),
                    outcome,
                )
            }
            Err(error) => return park(format!("invalid envelope: {error}"), outcome),
        };
        let version = i64::try_from(envelope.version.get()).unwrap_or(i64::MAX);
        // The row's head, or the last of the skipped records the event follows.
        let head = skips.head_for(
            &key,
            offset,
            rows.get(&key).map(P::head),
            version,
            envelope.predecessor,
        );
        let chain_head = head.map(|h| {
            (
                Version::new(u64::try_from(h.version).unwrap_or(0)),
                h.last_event_id,
            )
        });
        let command = (partition, envelope.command_id.clone());
        let earlier = used
            .get(&command)
            .filter(|u| self.window.remembers(u.used_at, clock))
            .map(|u| (u.aggregate_id.as_str(), u.last_version));
        let remembered = earlier.is_some();
        if let Verdict::Loser(reason) = extends_chain(chain_head, envelope, earlier) {
            let expected = head.map_or(1, |h| h.version + 1);
            let (kind, detail) = match reason {
                LoserReason::Version { .. } if version > expected => (
                    "version-gap",
                    format!("version {version}, expected {expected}"),
                ),
                LoserReason::RepeatedCommand => (
                    "inert-loser",
                    format!(
                        "version {version}: command {} was already used",
                        envelope.command_id
                    ),
                ),
                _ => (
                    "inert-loser",
                    format!("version {version}, expected {expected}"),
                ),
            };
            if kind == "version-gap" {
                error!(projection = P::NAME, aggregate_id = %key, %detail, "version gap: event not applied");
            }
            // With fenced writers this never fires; it is the alarm for a deployment that lets
            // two writers append to one partition.
            metrics::counter!("log_order_rejections_total", "reader" => P::NAME, "reason" => kind)
                .increment(1);
            outcome.anomalies.push(Anomaly {
                partition,
                offset,
                aggregate_id: key,
                kind,
                detail,
            });
            return;
        }
        let event = match &incoming.event {
            Ok(event) => event.clone(),
            Err(error) => return park(format!("cannot decode: {error}"), outcome),
        };
        match P::fold(rows.get(&key).cloned(), &key, event, Stamp::of(envelope)) {
            Ok(row) => {
                if exporting_traces() {
                    outcome.spans.push(record_span(
                        &format!("project {} {}", P::NAME, envelope.event_type),
                        SpanRole::Consumer,
                        &key,
                        &envelope.trace,
                    ));
                }
                let used_at = match used.get(&command) {
                    Some(earlier) if remembered => earlier.used_at,
                    _ => clock,
                };
                used.insert(
                    command.clone(),
                    CommandUse {
                        aggregate_id: key.clone(),
                        last_version: envelope.version,
                        used_at,
                    },
                );
                commands_changed.insert(command);
                rows.insert(key.clone(), row);
                changed.insert(key);
                outcome.applied += 1;
            }
            Err(error) => park(format!("handler failed: {error}"), outcome),
        }
    }

    /// Dead-letters one event on its own (after it failed every attempt) and moves past it.
    pub(crate) async fn dead_letter_alone(
        &self,
        message: &OwnedMessage,
        error: &str,
        attempts: u32,
    ) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await?;
        let key = generation_key(P::NAME, self.generation_in(&mut tx).await?);
        let stored = lock_offsets(&mut tx, &key, &self.topic, &[message.partition()]).await?;
        let progress = stored
            .get(&message.partition())
            .copied()
            .unwrap_or_default();
        if message.offset() < progress.next_offset {
            return Ok(tx.commit().await?);
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
            &BTreeMap::from([(
                message.partition(),
                Progress {
                    next_offset: message.offset() + 1,
                    clock: advance(progress.clock, message.timestamp().to_millis()),
                },
            )]),
        )
        .await?;
        self.dead_letters
            .publish(&outcome.dead)
            .await
            .map_err(ApplyError::DeadLetters)?;
        tx.commit().await?;
        self.handled.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("dead_letters_total", "consumer" => P::NAME).increment(1);
        Ok(())
    }
}
