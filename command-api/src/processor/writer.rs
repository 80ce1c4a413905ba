//! The writer of one partition of one aggregate kind: the only process that normally appends to
//! events partition p. It rebuilds state by reading the partition (applying the log-order rule),
//! then handles commands in batches: decide on the current state, append, read its own events
//! back, and answer only once the log shows them accepted. Its state is always what the log
//! says: decisions within a batch use a scratch overlay that is thrown away afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{Current, Version, Versioned};
use futures::future::join_all;
use platform::envelope::{EventEnvelope, Trace};
use platform::log_order::{LogOrder, Verdict};
use platform::partitioner::partition_for;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use schemas::wire::reply::Position;
use schemas::{CommandReply, ReplyOutcome};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::models::{rejection_code, WriteModel};
use super::{IncomingCommand, WriterContext};

/// At most this many commands are decided and appended together.
const MAX_BATCH: usize = 256;
/// How long the writer waits to read its own events back before answering "unavailable".
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One planned answer per command of a batch.
enum Plan {
    Reply(Box<CommandReply>),
    /// A second copy of a command earlier in the same batch (a concurrent retry).
    SameAs(usize),
    Append {
        aggregate_id: String,
        version: Version,
        events: Vec<PendingEvent>,
    },
}

struct PendingEvent {
    envelope: EventEnvelope,
    payload: Vec<u8>,
}

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
    tail: Arc<StreamConsumer>,
    next_offset: i64,
    log: LogOrder,
    states: HashMap<String, Current<A>>,
    /// Aggregates with an accepted event this build cannot decode: refused until fixed.
    unreadable: std::collections::HashSet<String>,
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
        ctx.writers_ready
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        debug!(%kind, partition, "writer stopped");
    }

    async fn start(ctx: Arc<WriterContext>, partition: i32) -> Result<Self, WriterError> {
        let events_topic = ctx.topics.events(A::KIND);
        let commands_topic = ctx.topics.commands(A::KIND);
        let tail: StreamConsumer = platform::kafka::consumer_config(
            &ctx.kafka,
            &format!("{}.writer-tail", ctx.kafka.topic_prefix),
        )
        .create()
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

    fn absorb(&mut self, message: &BorrowedMessage<'_>) -> Option<(Uuid, bool)> {
        self.next_offset = message.offset() + 1;
        let envelope = match EventEnvelope::from_headers(message.headers()) {
            Ok(envelope) => envelope,
            Err(error) => {
                warn!(topic = %self.events_topic, partition = self.partition, offset = message.offset(), %error, "event without a valid envelope ignored");
                return None;
            }
        };
        let verdict = self.log.judge(&envelope, message.offset());
        let accepted = verdict == Verdict::Accepted;
        if let Verdict::Loser(reason) = verdict {
            metrics::counter!("log_order_losers_total", "aggregate" => A::KIND.as_str())
                .increment(1);
            warn!(aggregate_id = %envelope.aggregate_id, version = %envelope.version, offset = message.offset(), ?reason, "inert event (lost in log order)");
        } else {
            let decoded = message
                .payload()
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
                    error!(aggregate_id = %envelope.aggregate_id, offset = message.offset(), %error, "accepted event cannot be decoded; aggregate refused until fixed");
                    self.unreadable.insert(envelope.aggregate_id.clone());
                }
            }
        }
        Some((envelope.event_id, accepted))
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

    async fn handle(&mut self, batch: Vec<IncomingCommand>) {
        self.absorb_pending().await;
        let mut overlay: HashMap<String, (Current<A>, Option<Uuid>)> = HashMap::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let plans: Vec<Plan> = batch
            .iter()
            .enumerate()
            .map(|(index, command)| self.plan(index, command, &mut overlay, &mut seen))
            .collect();
        drop(overlay);

        // Append everything, in order, then wait for the broker's acknowledgements.
        let mut deliveries = Vec::new();
        for (index, plan) in plans.iter().enumerate() {
            if let Plan::Append {
                aggregate_id,
                events,
                ..
            } = plan
            {
                for event in events {
                    let record = FutureRecord::to(&self.events_topic)
                        .partition(self.partition)
                        .key(aggregate_id.as_bytes())
                        .payload(&event.payload)
                        .headers(event.envelope.to_headers());
                    deliveries.push((
                        index,
                        self.ctx.producer.send_result(record).map_err(|(e, _)| e),
                    ));
                }
            }
        }
        let mut offsets: HashMap<usize, Vec<i64>> = HashMap::new();
        let mut failed: std::collections::HashSet<usize> = Default::default();
        let futures: Vec<_> = deliveries
            .into_iter()
            .map(|(index, queued)| async move {
                match queued {
                    Ok(future) => (
                        index,
                        future.await.ok().and_then(Result::ok).map(|d| d.offset),
                    ),
                    Err(_) => (index, None),
                }
            })
            .collect();
        for (index, offset) in join_all(futures).await {
            match offset {
                Some(offset) => offsets.entry(index).or_default().push(offset),
                None => {
                    failed.insert(index);
                }
            }
        }

        // Read our own events back: only the log decides whether they count.
        let last = offsets.values().flatten().copied().max();
        let verdicts = match last {
            Some(last) => self
                .read_until(last + 1, READ_BACK_TIMEOUT)
                .await
                .unwrap_or_else(|error| {
                    warn!(partition = self.partition, %error, "could not read own events back");
                    HashMap::new()
                }),
            None => HashMap::new(),
        };

        let mut replies: Vec<CommandReply> = Vec::with_capacity(plans.len());
        for (index, plan) in plans.into_iter().enumerate() {
            let command = &batch[index];
            let reply = match plan {
                Plan::Reply(reply) => *reply,
                Plan::SameAs(first) => CommandReply {
                    command_id: command_id(command),
                    ..replies[first].clone()
                },
                Plan::Append {
                    aggregate_id,
                    version,
                    events,
                } => {
                    let event_types = events
                        .iter()
                        .map(|e| e.envelope.event_type.clone())
                        .collect();
                    if failed.contains(&index) {
                        unavailable(
                            command,
                            &aggregate_id,
                            "the broker did not acknowledge the events; the outcome is unknown",
                        )
                    } else {
                        let outcomes: Vec<Option<&bool>> = events
                            .iter()
                            .map(|e| verdicts.get(&e.envelope.event_id))
                            .collect();
                        if outcomes.iter().all(|v| v == &Some(&true)) {
                            let positions = offsets
                                .remove(&index)
                                .unwrap_or_default()
                                .into_iter()
                                .map(|offset| Position {
                                    partition: self.partition,
                                    offset,
                                })
                                .collect();
                            accepted(command, &aggregate_id, version, event_types, positions)
                        } else if outcomes.iter().any(|v| v == &Some(&false)) {
                            self.after_losing(command, &aggregate_id)
                        } else {
                            unavailable(
                                command,
                                &aggregate_id,
                                "the events could not be read back in time; the outcome is unknown",
                            )
                        }
                    }
                }
            };
            let command_type = command
                .envelope
                .as_ref()
                .map_or_else(|_| "unknown".to_owned(), |e| e.command_type.clone());
            metrics::counter!(
                "commands_total",
                "aggregate" => A::KIND.as_str(),
                "command" => command_type,
                "outcome" => outcome_label(reply.outcome)
            )
            .increment(1);
            replies.push(reply);
        }
        // Answer only as the partition's owner: the commit carries the group generation, so a
        // writer that lost the partition is refused here and stays silent. The new owner then
        // handles these commands again and answers from the log, never contradicting us.
        if let Err(error) = self.commit(&batch).await {
            warn!(kind = %A::KIND, partition = self.partition, %error, "offset commit refused (partition moved?): replies withheld");
            metrics::counter!("writer_replies_withheld_total", "aggregate" => A::KIND.as_str())
                .increment(replies.len() as u64);
            return;
        }
        self.send_replies(&batch, &replies).await;
    }

    /// Our event lost in log order. If the log nevertheless shows this command accepted (another
    /// writer handled the same command first), that is its outcome; otherwise it had no effect.
    fn after_losing(&self, command: &IncomingCommand, aggregate_id: &str) -> CommandReply {
        let recorded = command
            .envelope
            .as_ref()
            .ok()
            .and_then(|e| self.log.command(&e.command_id));
        match recorded {
            Some(recorded) => accepted(
                command,
                &recorded.aggregate_id,
                recorded.version,
                recorded.event_types.clone(),
                recorded
                    .offsets
                    .iter()
                    .map(|offset| Position {
                        partition: self.partition,
                        offset: *offset,
                    })
                    .collect(),
            ),
            None => {
                let current = self.states.get(aggregate_id).map_or(0, |c| c.version.get());
                answer(
                    command,
                    ReplyOutcome::Conflict,
                    aggregate_id,
                    current,
                    Some("concurrent-append"),
                    "another writer appended to this aggregate first; nothing was applied, retry",
                )
            }
        }
    }

    /// Decides one command against the state the batch has reached so far.
    fn plan(
        &self,
        index: usize,
        incoming: &IncomingCommand,
        overlay: &mut HashMap<String, (Current<A>, Option<Uuid>)>,
        seen: &mut HashMap<String, usize>,
    ) -> Plan {
        let reject = |outcome, aggregate: &str, version: u64, code: &str, detail: &str| {
            Plan::Reply(Box::new(answer(
                incoming,
                outcome,
                aggregate,
                version,
                Some(code),
                detail,
            )))
        };
        let envelope = match &incoming.envelope {
            Ok(envelope) => envelope,
            Err(error) => {
                return reject(
                    ReplyOutcome::Rejected,
                    "",
                    0,
                    "invalid-command",
                    &error.to_string(),
                )
            }
        };
        let aggregate_id = envelope.aggregate_id.as_str();
        if let Some(&first) = seen.get(&envelope.command_id) {
            return Plan::SameAs(first);
        }
        seen.insert(envelope.command_id.clone(), index);
        if let Some(recorded) = self.log.command(&envelope.command_id) {
            if envelope.request_hash.is_some() && recorded.request_hash != envelope.request_hash {
                return reject(
                    ReplyOutcome::Rejected,
                    &recorded.aggregate_id,
                    recorded.version.get(),
                    "idempotency-key-reused",
                    "this Idempotency-Key was used with a different request",
                );
            }
            let positions = recorded
                .offsets
                .iter()
                .map(|offset| Position {
                    partition: self.partition,
                    offset: *offset,
                })
                .collect();
            return Plan::Reply(Box::new(accepted(
                incoming,
                &recorded.aggregate_id,
                recorded.version,
                recorded.event_types.clone(),
                positions,
            )));
        }
        if envelope
            .deadline
            .is_some_and(|deadline| deadline < Utc::now())
        {
            return reject(
                ReplyOutcome::Unavailable,
                aggregate_id,
                0,
                "expired",
                "the requester gave up before this command was handled",
            );
        }
        let command = match incoming
            .payload
            .as_deref()
            .map(schemas::decode::<A::Command>)
        {
            Some(Ok(command)) => command,
            Some(Err(error)) => {
                return reject(
                    ReplyOutcome::Rejected,
                    aggregate_id,
                    0,
                    "invalid-command",
                    &error.to_string(),
                )
            }
            None => {
                return reject(
                    ReplyOutcome::Rejected,
                    aggregate_id,
                    0,
                    "invalid-command",
                    "empty command record",
                )
            }
        };
        if A::aggregate_id(&command) != aggregate_id
            || partition_for(aggregate_id.as_bytes(), self.ctx.partitions) != self.partition
        {
            return reject(
                ReplyOutcome::Rejected,
                aggregate_id,
                0,
                "misrouted",
                "command is not for this partition's aggregate",
            );
        }
        if self.unreadable.contains(aggregate_id) {
            return reject(
                ReplyOutcome::Unavailable,
                aggregate_id,
                0,
                "unreadable-aggregate",
                "this aggregate's history cannot be read by this version",
            );
        }
        let (current, head) = overlay.entry(aggregate_id.to_owned()).or_insert_with(|| {
            let current = self.states.get(aggregate_id).cloned().unwrap_or_default();
            let head = self.log.head(aggregate_id).map(|h| h.event_id);
            (current, head)
        });
        let version = current.version.get();
        if !A::authorize(&current.state, &command, &envelope.actor) {
            return reject(
                ReplyOutcome::Forbidden,
                aggregate_id,
                version,
                "forbidden",
                "not allowed to act on this aggregate",
            );
        }
        if let Some(expected) = envelope.expected_version {
            if expected != current.version {
                return reject(
                    ReplyOutcome::Conflict,
                    aggregate_id,
                    version,
                    "version-conflict",
                    &format!("expected version {expected}, but it is at {version}"),
                );
            }
        }
        let events = match current.decide(command) {
            Ok(events) => events,
            Err(error) => {
                let (code, field) = rejection_code(&error);
                let mut reply = answer(
                    incoming,
                    ReplyOutcome::Rejected,
                    aggregate_id,
                    version,
                    Some(code),
                    &error.to_string(),
                );
                if let Some(field) = field {
                    reply.field_errors.insert(field, error.to_string());
                }
                return Plan::Reply(Box::new(reply));
            }
        };
        if events.is_empty() {
            let positions = self
                .log
                .head(aggregate_id)
                .map(|h| Position {
                    partition: self.partition,
                    offset: h.offset,
                })
                .into_iter()
                .collect();
            return Plan::Reply(Box::new(accepted(
                incoming,
                aggregate_id,
                current.version,
                vec![],
                positions,
            )));
        }
        let mut pending = Vec::with_capacity(events.len());
        let mut last_version = current.version;
        for event in events {
            let payload = match schemas::encode(&event.event) {
                Ok(payload) => payload,
                Err(error) => {
                    error!(%error, "event does not fit its schema");
                    return reject(
                        ReplyOutcome::Unavailable,
                        aggregate_id,
                        version,
                        "encode-failed",
                        "internal error",
                    );
                }
            };
            let envelope = EventEnvelope {
                event_id: Uuid::now_v7(),
                event_type: schemas::WireRecord::event_type(&event.event).to_owned(),
                aggregate_kind: A::KIND,
                aggregate_id: aggregate_id.to_owned(),
                version: event.version,
                predecessor: *head,
                command_id: envelope.command_id.clone(),
                request_hash: envelope.request_hash.clone(),
                occurred_at: Utc::now(),
                trace: Trace {
                    correlation_id: envelope.trace.correlation_id.clone(),
                    causation_id: envelope.command_id.clone(),
                    traceparent: envelope.trace.traceparent.clone(),
                },
            };
            *head = Some(envelope.event_id);
            last_version = event.version;
            let _ = current.apply(&event);
            pending.push(PendingEvent { envelope, payload });
        }
        Plan::Append {
            aggregate_id: aggregate_id.to_owned(),
            version: last_version,
            events: pending,
        }
    }

    async fn send_replies(&self, batch: &[IncomingCommand], replies: &[CommandReply]) {
        let topic = self.ctx.topics.replies();
        let mut sends = Vec::new();
        for (command, reply) in batch.iter().zip(replies) {
            let Some(reply_to) = command
                .envelope
                .as_ref()
                .ok()
                .and_then(|e| e.reply_to.clone())
            else {
                continue;
            };
            let payload = match schemas::encode(reply) {
                Ok(payload) => payload,
                Err(error) => {
                    error!(%error, "reply does not fit its schema");
                    continue;
                }
            };
            let producer = self.ctx.producer.clone();
            let topic = topic.clone();
            sends.push(async move {
                let record = FutureRecord::to(&topic)
                    .key(reply_to.as_bytes())
                    .payload(&payload);
                if let Err((error, _)) = producer.send(record, Duration::from_secs(5)).await {
                    warn!(%error, "reply not delivered; the requester will time out");
                }
            });
        }
        join_all(sends).await;
    }

    /// The commands are handled: commit synchronously so the group moves past them. Fails when
    /// this process is no longer the partition's owner (stale group generation).
    async fn commit(&self, batch: &[IncomingCommand]) -> Result<(), rdkafka::error::KafkaError> {
        let Some(last) = batch.iter().map(|c| c.offset).max() else {
            return Ok(());
        };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &self.commands_topic,
            self.partition,
            Offset::Offset(last + 1),
        )?;
        let group = self.ctx.group.clone();
        tokio::task::spawn_blocking(move || {
            group.commit(&list, rdkafka::consumer::CommitMode::Sync)
        })
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)?
    }
}

fn command_id(command: &IncomingCommand) -> String {
    command
        .envelope
        .as_ref()
        .map(|e| e.command_id.clone())
        .unwrap_or_default()
}

fn answer(
    command: &IncomingCommand,
    outcome: ReplyOutcome,
    aggregate_id: &str,
    version: u64,
    code: Option<&str>,
    detail: &str,
) -> CommandReply {
    CommandReply {
        command_id: command_id(command),
        outcome,
        aggregate_id: aggregate_id.to_owned(),
        version: i64::try_from(version).unwrap_or(i64::MAX),
        event_types: vec![],
        positions: vec![],
        error_code: code.map(str::to_owned),
        detail: detail.to_owned(),
        field_errors: HashMap::new(),
    }
}

fn accepted(
    command: &IncomingCommand,
    aggregate_id: &str,
    version: Version,
    event_types: Vec<String>,
    positions: Vec<Position>,
) -> CommandReply {
    CommandReply {
        event_types,
        positions,
        ..answer(
            command,
            ReplyOutcome::Accepted,
            aggregate_id,
            version.get(),
            None,
            "",
        )
    }
}

fn unavailable(command: &IncomingCommand, aggregate_id: &str, detail: &str) -> CommandReply {
    answer(
        command,
        ReplyOutcome::Unavailable,
        aggregate_id,
        0,
        Some("unavailable"),
        detail,
    )
}

fn outcome_label(outcome: ReplyOutcome) -> &'static str {
    match outcome {
        ReplyOutcome::Accepted => "accepted",
        ReplyOutcome::Rejected => "rejected",
        ReplyOutcome::Conflict => "conflict",
        ReplyOutcome::Forbidden => "forbidden",
        ReplyOutcome::Unavailable => "unavailable",
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum WriterError {
    #[error("kafka")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error("timed out reading the partition")]
    Timeout,
}
