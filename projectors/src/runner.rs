//! Runs one projection: a consumer group member on the projection's events topic that hands
//! batches (bounded by size and time) to its [`Applier`], retries what fails, dead-letters what
//! keeps failing, and resumes from the stored offsets on every assignment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use platform::config::KafkaSettings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{error, info, warn};

use crate::applier::{Applier, Generation, Incoming};
use crate::projection::Projection;
use schemas::WireRecord;

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
        platform::kafka::publish_lag(self.projection, &statistics);
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

type ProjectionConsumer = StreamConsumer<AssignmentContext>;

/// One projection's consumer loop.
pub struct Runner<P: Projection> {
    applier: Applier<P>,
    consumer: Arc<ProjectionConsumer>,
    assigned: mpsc::UnboundedReceiver<Vec<i32>>,
    /// Batches consumed and prepared (envelopes read, events decoded) by the collector task
    /// while the previous batch is being written: the database and our own work overlap
    /// instead of taking turns.
    batches: mpsc::Receiver<Vec<Incoming<P::Event>>>,
    /// Stops the collector when the runner goes.
    _collector: DropGuard,
}

impl<P: Projection> std::fmt::Debug for Runner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("projection", &P::NAME)
            .finish()
    }
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

    /// A runner for one generation with its own consumer group (a rebuild). Starts its
    /// collector task, so it must be created inside the runtime.
    pub fn with_generation(
        pool: PgPool,
        kafka: &KafkaSettings,
        producer: FutureProducer,
        limits: BatchLimits,
        generation: Generation,
        group: &str,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let applier = Applier::new(pool, kafka, producer, generation, kafka.command_window);
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer: ProjectionConsumer = platform::kafka::consumer_config(kafka, group)
            .set("fetch.wait.max.ms", "20")
            .create_with_context(AssignmentContext {
                assigned: tx,
                projection: P::NAME,
            })?;
        consumer.subscribe(&[applier.topic()])?;
        let consumer = Arc::new(consumer);
        // One batch waiting while one is written, one being prepared, one consumed batch waiting
        // for it and one being consumed: bounded memory.
        let (batches_tx, batches) = mpsc::channel(1);
        let stop = CancellationToken::new();
        tokio::spawn(collect_batches::<P::Event>(
            consumer.clone(),
            limits,
            batches_tx,
            stop.clone(),
        ));
        Ok(Self {
            applier,
            consumer,
            assigned: rx,
            batches,
            _collector: stop.drop_guard(),
        })
    }

    /// Runs until `shutdown`; the batch in progress is finished and committed first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        info!(projection = P::NAME, topic = %self.applier.topic(), "projection running");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(partitions) = self.assigned.recv() => {
                    self.resume_from_stored_offsets(&partitions).await;
                }
                // A batch consumed before a seek may repeat what was applied: the stored
                // offsets skip it.
                Some(batch) = self.batches.recv() => self.process(&batch, &shutdown).await,
                else => break,
            }
        }
        self.consumer.unsubscribe();
        info!(projection = P::NAME, "projection stopped");
    }

    /// Applies a batch, however long it takes, and then commits its offsets to Kafka. A batch
    /// left unapplied (the process is stopping while the database is down) commits nothing:
    /// Kafka's committed offsets must never be ahead of the stored ones, or a later assignment
    /// could start past records the read model never got.
    async fn process(&self, batch: &[Incoming<P::Event>], shutdown: &CancellationToken) {
        if self.apply_with_retries(batch, shutdown).await == Applied::Yes {
            self.commit_to_kafka(batch);
        }
    }

    /// One batch, or nothing if none arrives within `wait` (rebuilds drive themselves with this).
    pub async fn step(&mut self, wait: Duration, shutdown: &CancellationToken) -> bool {
        match tokio::time::timeout(wait, self.batches.recv()).await {
            Ok(Some(batch)) => {
                self.process(&batch, shutdown).await;
                true
            }
            _ => false,
        }
    }

    /// The events topic this runner reads.
    pub fn topic(&self) -> &str {
        self.applier.topic()
    }

    /// Records this runner has moved its stored offsets past (applied, inert, parked, skipped or
    /// dead-lettered). Not derivable from the offsets: transaction markers take offsets too.
    pub fn records_handled(&self) -> u64 {
        self.applier.handled()
    }

    /// How far this runner's consumer has read `partition`: the offset after the last record
    /// or transaction marker it served (markers are never handed over, but move the position
    /// past them). `None` before it read anything there. Not what is applied: consumed batches
    /// may still be on their way to the database.
    pub fn position(&self, partition: i32) -> Option<i64> {
        platform::log_end::position(&*self.consumer, self.applier.topic(), partition)
    }

    /// Kafka's committed offsets only speed up a restart; the stored offsets are the truth.
    async fn resume_from_stored_offsets(&self, partitions: &[i32]) {
        let stored = match self.applier.stored_offsets(partitions).await {
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
                    .seek(
                        self.applier.topic(),
                        *partition,
                        offset,
                        Duration::from_secs(2),
                    )
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Applies a batch. Transient failures (database down) are retried until they pass or the
    /// process stops; a batch that keeps failing is split into single events, and an event that
    /// keeps failing on its own is dead-lettered. [`Applied::No`] when the process stopped
    /// first: some or all of the batch is not in the database.
    async fn apply_with_retries(
        &self,
        batch: &[Incoming<P::Event>],
        shutdown: &CancellationToken,
    ) -> Applied {
        let mut backoff = Duration::from_millis(50);
        let mut statement_failures = 0;
        loop {
            match self.applier.apply(batch, 0).await {
                Ok(()) => return Applied::Yes,
                Err(error) if error.is_statement_failure() => {
                    statement_failures += 1;
                    warn!(projection = P::NAME, %error, attempt = statement_failures, "batch failed");
                    if statement_failures >= ATTEMPTS {
                        break;
                    }
                }
                Err(error) => warn!(projection = P::NAME, %error, "batch not applied; retrying"),
            }
            if shutdown.is_cancelled() {
                return Applied::No;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        for incoming in batch {
            let single = std::slice::from_ref(incoming);
            let message = incoming.message();
            let mut attempts = 0;
            loop {
                attempts += 1;
                match self.applier.apply(single, 0).await {
                    Ok(()) => break,
                    Err(error) if attempts >= ATTEMPTS && error.is_statement_failure() => {
                        error!(projection = P::NAME, offset = message.offset(), %error, "event keeps failing; dead-lettering it");
                        while let Err(error) = self
                            .applier
                            .dead_letter_alone(message, &error.to_string(), attempts)
                            .await
                        {
                            warn!(projection = P::NAME, %error, "could not dead-letter; retrying");
                            if shutdown.is_cancelled() {
                                return Applied::No;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        break;
                    }
                    Err(_) if shutdown.is_cancelled() => return Applied::No,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts))).await
                    }
                }
            }
        }
        Applied::Yes
    }

    fn commit_to_kafka(&self, batch: &[Incoming<P::Event>]) {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for message in batch.iter().map(Incoming::message) {
            let entry = next.entry(message.partition()).or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            let _ =
                list.add_partition_offset(self.applier.topic(), partition, Offset::Offset(offset));
        }
        if self.consumer.store_offsets(&list).is_ok() {
            let _ = self.consumer.commit_consumer_state(CommitMode::Async);
        }
    }
}

/// Whether a whole batch reached the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Yes,
    No,
}

/// Batches at least this large (a rebuild's) are prepared on a blocking thread, beside the
/// consumer; a live projector's (at most 2,000 events) are prepared inline on the collector, as
/// before: measured, moving them apart made the live projector slower on 2 cores.
const PREPARE_APART: usize = 5000;

/// The collector task: consumes records and hands them over in batches (bounded by size and by
/// time from the first record), prepared, until `stop` or until the runner is gone. Consuming
/// and preparing (reading the envelope, decoding the event) are two stages, so a large batch is
/// decoded while the next one is consumed: in a rebuild, preparing on the consuming task was
/// the slowest stage of the pipeline.
async fn collect_batches<E: WireRecord + Send + 'static>(
    consumer: Arc<ProjectionConsumer>,
    limits: BatchLimits,
    batches: mpsc::Sender<Vec<Incoming<E>>>,
    stop: CancellationToken,
) {
    let (raw_tx, raw_rx) = mpsc::channel(1);
    tokio::select! {
        () = stop.cancelled() => {}
        () = consume_batches(consumer, limits, raw_tx) => {}
        () = prepare_batches(raw_rx, batches) => {}
    }
}

/// Consumes records into batches of detached messages.
async fn consume_batches(
    consumer: Arc<ProjectionConsumer>,
    limits: BatchLimits,
    raw: mpsc::Sender<Vec<OwnedMessage>>,
) {
    loop {
        let first = match consumer.recv().await {
            Ok(message) => message.detach(),
            Err(error) => {
                warn!(%error, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut batch = Vec::with_capacity(limits.max_events.min(4096));
        batch.push(first);
        let deadline = tokio::time::sleep(limits.max_wait);
        tokio::pin!(deadline);
        while batch.len() < limits.max_events {
            tokio::select! {
                biased;
                received = consumer.recv() => match received {
                    Ok(message) => {
                        batch.push(message.detach());
                        platform::runtime::take_turn().await;
                    }
                    Err(_) => break,
                },
                () = &mut deadline => break,
            }
        }
        if raw.send(batch).await.is_err() {
            return;
        }
    }
}

/// Prepares consumed batches and hands them to the runner.
async fn prepare_batches<E: WireRecord + Send + 'static>(
    mut raw: mpsc::Receiver<Vec<OwnedMessage>>,
    batches: mpsc::Sender<Vec<Incoming<E>>>,
) {
    while let Some(batch) = raw.recv().await {
        let prepared = if batch.len() < PREPARE_APART {
            batch.into_iter().map(Incoming::prepare).collect()
        } else {
            match tokio::task::spawn_blocking(move || {
                batch.into_iter().map(Incoming::prepare).collect::<Vec<_>>()
            })
            .await
            {
                Ok(prepared) => prepared,
                Err(error) => {
                    error!(%error, "preparing a batch failed");
                    return;
                }
            }
        };
        if batches.send(prepared).await.is_err() {
            return;
        }
    }
}
