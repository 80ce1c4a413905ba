//! The writer of one partition of one aggregate kind: the only process that normally appends to
//! events partition p. It rebuilds state by reading the partition (applying the log-order rule),
//! then handles commands in batches: decide on the current state, append, learn the log's
//! verdict on its own events, and answer only once the log shows them accepted. Its state is
//! always what the log says: decisions within a batch use a scratch overlay that is thrown away
//! afterwards.
//!
//! Layout: this file holds the partition's lifecycle (rebuild, reading the tail); `batch` the
//! handling of a batch of commands; `plan` the decision for one command; `replies` the answers.

mod batch;
mod plan;
mod replies;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::{Current, Versioned};
use platform::envelope::EventEnvelope;
use platform::kafka::LagContext;
use platform::log_order::{LogOrder, Verdict};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::models::WriteModel;
use super::{IncomingCommand, WriterContext};

/// At most this many commands are decided and appended together.
const MAX_BATCH: usize = 256;

/// How long an empty fetch of a partition's tail waits at the broker.
const TAIL_FETCH_WAIT_MS: &str = "100";

pub(super) struct Writer<A: WriteModel>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    ctx: Arc<WriterContext>,
    partition: i32,
    events_topic: String,
    commands_topic: String,
    tail: Arc<StreamConsumer<LagContext>>,
    next_offset: i64,
    log: LogOrder,
    states: HashMap<String, Current<A>>,
    /// Aggregates with an accepted event this build cannot decode: refused until fixed.
    unreadable: std::collections::HashSet<String>,
    /// The previous batch's replies, still being delivered (see `batch::send_replies`).
    replies_in_flight: Option<tokio::task::JoinHandle<()>>,
}

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Serves commands for one partition until the channel closes (partition revoked or shutdown).
    pub(super) async fn run(
        ctx: Arc<WriterContext>,
        partition: i32,
        mut commands: mpsc::Receiver<IncomingCommand>,
    ) {
        let kind = A::KIND;
        let mut writer = loop {
            match Self::start(ctx.clone(), partition).await {
                Ok(writer) => break writer,
                Err(error) => {
                    warn!(%kind, partition, %error, "could not rebuild partition state; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        closed = commands.recv() => if closed.is_none() { return },
                    }
                }
            }
        };
        ctx.writers_ready
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while let Some(first) = commands.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            writer.handle(batch).await;
        }
        writer.replies_delivered().await;
        ctx.writers_ready
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        debug!(%kind, partition, "writer stopped");
    }

    async fn start(ctx: Arc<WriterContext>, partition: i32) -> Result<Self, WriterError> {
        let events_topic = ctx.topics.events(A::KIND);
        let commands_topic = ctx.topics.commands(A::KIND);
        // The tail is waited on only when another writer appended during a handover (a batch
        // whose appends are contiguous is judged without reading it back), so it need not poll
        // at the request path's 5 ms: every partition's tail is a client of its own, and idle
        // fetches at 5 ms from all of them cost the broker more than the commands do.
        let mut tail_config = platform::kafka::consumer_config(
            &ctx.kafka,
            &format!("{}.writer-tail", ctx.kafka.topic_prefix),
        );
        tail_config.set("fetch.wait.max.ms", TAIL_FETCH_WAIT_MS);
        let tail: StreamConsumer<LagContext> = tail_config
            .create_with_context(LagContext {
                consumer: "command-writer-tail",
            })
            .map_err(WriterError::Kafka)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&events_topic, partition, Offset::Beginning)
            .map_err(WriterError::Kafka)?;
        tail.assign(&assignment).map_err(WriterError::Kafka)?;
        let mut writer = Self {
            ctx,
            partition,
            events_topic,
            commands_topic,
            tail: Arc::new(tail),
            next_offset: 0,
            log: LogOrder::default(),
            states: HashMap::new(),
            unreadable: Default::default(),
            replies_in_flight: None,
        };
        let started = std::time::Instant::now();
        let high = writer.high_watermark().await?;
        writer.read_until(high, Duration::from_secs(60)).await?;
        info!(kind = %A::KIND, partition, events = high, elapsed_ms = started.elapsed().as_millis() as u64, "partition state rebuilt");
        Ok(writer)
    }

    async fn high_watermark(&self) -> Result<i64, WriterError> {
        let (tail, topic, partition) =
            (self.tail.clone(), self.events_topic.clone(), self.partition);
        tokio::task::spawn_blocking(move || {
            tail.fetch_watermarks(&topic, partition, Duration::from_secs(5))
        })
        .await
        .map_err(|_| WriterError::Timeout)?
        .map(|(_, high)| high)
        .map_err(WriterError::Kafka)
    }

    /// Reads the partition until `next_offset >= target`, applying the log-order rule.
    /// Returns the verdict on every event read, by event id.
    async fn read_until(
        &mut self,
        target: i64,
        timeout: Duration,
    ) -> Result<HashMap<Uuid, bool>, WriterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut verdicts = HashMap::new();
        while self.next_offset < target {
            let tail = self.tail.clone();
            let message = tokio::time::timeout_at(deadline, tail.recv())
                .await
                .map_err(|_| WriterError::Timeout)?
                .map_err(WriterError::Kafka)?;
            if let Some((event_id, accepted)) = self.absorb(&message) {
                verdicts.insert(event_id, accepted);
            }
        }
        Ok(verdicts)
    }

    /// Absorbs one record read from the tail. Records below `next_offset` were already judged
    /// (a batch whose appends were contiguous judges them as it appends, see `batch`) and are
    /// skipped.
    fn absorb(&mut self, message: &BorrowedMessage<'_>) -> Option<(Uuid, bool)> {
        if message.offset() < self.next_offset {
            return None;
        }
        let envelope = match EventEnvelope::from_headers(message.headers()) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.next_offset = message.offset() + 1;
                warn!(topic = %self.events_topic, partition = self.partition, offset = message.offset(), %error, "event without a valid envelope ignored");
                return None;
            }
        };
        Some(self.absorb_record(message.offset(), &envelope, message.payload()))
    }

    /// Judges the record at `offset` (the next one in the partition) by the log-order rule and,
    /// when accepted, applies it to the aggregate's state. Returns the event id and the verdict.
    fn absorb_record(
        &mut self,
        offset: i64,
        envelope: &EventEnvelope,
        payload: Option<&[u8]>,
    ) -> (Uuid, bool) {
        self.next_offset = offset + 1;
        let verdict = self.log.judge(envelope, offset);
        let accepted = verdict == Verdict::Accepted;
        if let Verdict::Loser(reason) = verdict {
            metrics::counter!("log_order_losers_total", "aggregate" => A::KIND.as_str())
                .increment(1);
            warn!(aggregate_id = %envelope.aggregate_id, version = %envelope.version, offset, ?reason, "inert event (lost in log order)");
        } else {
            let decoded = payload
                .ok_or(schemas::DecodeError::TooShort { len: 0 })
                .and_then(schemas::decode::<A::Event>);
            match decoded {
                Ok(event) => {
                    let current = self
                        .states
                        .entry(envelope.aggregate_id.clone())
                        .or_default();
                    let _ = current.apply(&Versioned {
                        version: envelope.version,
                        event,
                    });
                }
                Err(error) => {
                    error!(aggregate_id = %envelope.aggregate_id, offset, %error, "accepted event cannot be decoded; aggregate refused until fixed");
                    self.unreadable.insert(envelope.aggregate_id.clone());
                }
            }
        }
        (envelope.event_id, accepted)
    }

    /// Whatever the tail already has (foreign appends since the last batch), without waiting.
    async fn absorb_pending(&mut self) {
        loop {
            let tail = self.tail.clone();
            match tokio::time::timeout(Duration::from_millis(0), tail.recv()).await {
                Ok(Ok(message)) => {
                    self.absorb(&message);
                }
                _ => return,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum WriterError {
    #[error("kafka")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error("timed out reading the partition")]
    Timeout,
}
