//! A batch of commands in one transaction: plan each, append every event, check they landed
//! right after what the writer has read, answer, commit the command offsets, commit. A batch
//! that cannot commit is aborted (nothing of it becomes visible, no answer is seen) and tried
//! again on the log as it then is, until it commits, the partition is revoked, or the writer is
//! fenced.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use platform::envelope::EventEnvelope;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use schemas::wire::reply::Position;
use schemas::{CommandReply, ReplyOutcome};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use uuid::Uuid;

use crate::processor::models::WriteModel;
use crate::processor::IncomingCommand;

use super::transaction::{self, TransactionFailure};
use super::Writer;
use crate::processor::partition::{accepted, answer, command_id, Batch, Plan};

/// The longest pause between two attempts of a batch that did not commit.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How a batch ended.
pub(super) enum Handled {
    /// Committed: its events count and its answers are visible.
    Committed,
    /// The partition was revoked before the batch could commit: nothing of it is visible; the
    /// new owner handles its commands.
    Abandoned,
    /// A newer writer fenced this one: nothing of the batch is visible.
    Fenced,
}

/// An attempt that did not commit, and whether it changed the writer's state (then the state
/// is rebuilt from the log before the next attempt).
struct Failed {
    failure: TransactionFailure,
    state_touched: bool,
}

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    pub(super) async fn handle(
        &mut self,
        batch: Vec<IncomingCommand>,
        revoked: &CancellationToken,
    ) -> Handled {
        let mut pause = Duration::from_millis(50);
        loop {
            let Failed {
                failure,
                state_touched,
            } = match self.attempt(&batch).await {
                Ok(()) => return Handled::Committed,
                Err(failed) => failed,
            };
            if matches!(failure, TransactionFailure::Fenced(_)) {
                return Handled::Fenced;
            }
            metrics::counter!("writer_transactions_aborted_total", "aggregate" => A::KIND.as_str())
                .increment(1);
            warn!(kind = %A::KIND, partition = self.partition, error = %failure, "batch aborted; trying again on the log as it is now");
            if revoked.is_cancelled() {
                return Handled::Abandoned;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = revoked.cancelled() => return Handled::Abandoned,
            }
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
            if let Err(error) = self.resynchronise(state_touched).await {
                warn!(kind = %A::KIND, partition = self.partition, %error, "could not read the partition again");
            }
        }
    }

    /// After an abort: a state that judged the aborted events is rebuilt from the log (a fresh
    /// writer, which also fences this producer's own leftovers); otherwise reading what others
    /// appended is enough.
    async fn resynchronise(&mut self, state_touched: bool) -> Result<(), super::WriterError> {
        if state_touched {
            *self = Self::start(self.ctx.clone(), self.partition).await?;
            Ok(())
        } else {
            self.catch_up(Duration::from_secs(10)).await
        }
    }

    /// One transaction for the whole batch.
    async fn attempt(&mut self, batch: &[IncomingCommand]) -> Result<(), Failed> {
        self.absorb_pending().await;
        let mut scratch = Batch::default();
        let plans: Vec<Plan> = batch
            .iter()
            .enumerate()
            .map(|(index, command)| self.plan(index, command, &mut scratch))
            .collect();
        drop(scratch);
        let untouched = |failure| Failed {
            failure,
            state_touched: false,
        };
        let command_offsets = self
            .command_offsets(batch)
            .map_err(|e| untouched(TransactionFailure::Commit(e)))?;
        transaction::begin(&self.producer).map_err(untouched)?;

        let Some(mut offsets) = self.append(&plans).await else {
            return Err(self
                .aborted(TransactionFailure::NotAcknowledged, false)
                .await);
        };
        let appended = self.appended_in_order(&plans, &offsets);
        if !appended
            .iter()
            .zip(self.known_end..)
            .all(|((offset, _), expected)| *offset == expected)
        {
            metrics::counter!("writer_interleaved_appends_total", "aggregate" => A::KIND.as_str())
                .increment(1);
            return Err(self.aborted(TransactionFailure::Interleaved, false).await);
        }
        // Nothing lies between what this writer has read and its events: the log holds exactly
        // these records there, in this order, so they are judged here as if read back.
        let verdicts: HashMap<Uuid, bool> = appended
            .iter()
            .map(|(offset, (envelope, payload))| {
                self.absorb_record(*offset, envelope, Some(payload))
            })
            .collect();
        let last_appended = appended.last().map(|(offset, _)| *offset);
        drop(appended);

        let replies = self.replies(batch, plans, &verdicts, &mut offsets);
        if !self.send_replies(batch, &replies) {
            return Err(self
                .aborted(TransactionFailure::NotAcknowledged, true)
                .await);
        }
        if let Err(failure) =
            transaction::commit(&self.producer, &self.ctx.group, command_offsets).await
        {
            return Err(self.aborted(failure, true).await);
        }
        // The commit marker follows the batch's last event in the partition.
        if let Some(last) = last_appended {
            self.known_end = last + 2;
        }
        for (command, reply) in batch.iter().zip(&replies) {
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
        }
        Ok(())
    }

    /// Aborts the open transaction after `failure` (a producer that cannot abort is fenced).
    async fn aborted(&self, failure: TransactionFailure, state_touched: bool) -> Failed {
        if matches!(failure, TransactionFailure::Fenced(_)) {
            return Failed {
                failure,
                state_touched,
            };
        }
        match transaction::abort(&self.producer).await {
            Ok(()) => Failed {
                failure,
                state_touched,
            },
            Err(fenced) => Failed {
                failure: fenced,
                state_touched,
            },
        }
    }

    /// Sends every event, in order, and waits for the broker's acknowledgements: the offsets
    /// of each command's events, or `None` when any send failed.
    async fn append(&self, plans: &[Plan]) -> Option<HashMap<usize, Vec<i64>>> {
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
                    deliveries.push((index, self.producer.send_result(record).map_err(|(e, _)| e)));
                }
            }
        }
        let futures = deliveries.into_iter().map(|(index, queued)| async move {
            match queued {
                Ok(future) => (
                    index,
                    future.await.ok().and_then(Result::ok).map(|d| d.offset),
                ),
                Err(_) => (index, None),
            }
        });
        let mut offsets: HashMap<usize, Vec<i64>> = HashMap::new();
        let mut all = true;
        for (index, offset) in join_all(futures).await {
            match offset {
                Some(offset) => offsets.entry(index).or_default().push(offset),
                None => {
                    platform::kafka::count_producer_error("command-writer");
                    all = false;
                }
            }
        }
        all.then_some(offsets)
    }

    /// The batch's events with their offsets, in log order.
    fn appended_in_order<'p>(
        &self,
        plans: &'p [Plan],
        offsets: &HashMap<usize, Vec<i64>>,
    ) -> Vec<(i64, (&'p EventEnvelope, &'p [u8]))> {
        let mut appended = Vec::new();
        for (index, plan) in plans.iter().enumerate() {
            if let (Plan::Append { events, .. }, Some(at)) = (plan, offsets.get(&index)) {
                appended.extend(
                    at.iter()
                        .copied()
                        .zip(events.iter().map(|e| (&e.envelope, e.payload.as_slice()))),
                );
            }
        }
        appended.sort_by_key(|(offset, _)| *offset);
        appended
    }

    /// One answer per command, from the plans and the log's verdict on their events.
    fn replies(
        &self,
        batch: &[IncomingCommand],
        plans: Vec<Plan>,
        verdicts: &HashMap<Uuid, bool>,
        offsets: &mut HashMap<usize, Vec<i64>>,
    ) -> Vec<CommandReply> {
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
                    let accepted_all = events
                        .iter()
                        .all(|e| verdicts.get(&e.envelope.event_id) == Some(&true));
                    if accepted_all {
                        let positions = offsets
                            .remove(&index)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|offset| Position {
                                partition: self.partition,
                                offset,
                            })
                            .collect();
                        let event_types = events
                            .iter()
                            .map(|e| e.envelope.event_type.clone())
                            .collect();
                        accepted(command, &aggregate_id, version, event_types, positions)
                    } else {
                        self.after_losing(command, &aggregate_id)
                    }
                }
            };
            replies.push(reply);
        }
        replies
    }

    /// Our event lost in log order. If the log nevertheless shows this command accepted (another
    /// writer handled the same command first), that is its outcome; otherwise it had no effect.
    fn after_losing(&self, command: &IncomingCommand, aggregate_id: &str) -> CommandReply {
        let recorded = command
            .envelope
            .as_ref()
            .ok()
            .and_then(|e| self.model.recorded(&e.command_id));
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
                let current = self.model.version_of(aggregate_id);
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

    /// Adds the replies to the transaction: a requester reads them `read_committed`, so it
    /// sees an answer only once the batch has committed. False when the producer refused one
    /// (then the batch is aborted and tried again; a reply that fails in flight fails the
    /// commit the same way).
    fn send_replies(&self, batch: &[IncomingCommand], replies: &[CommandReply]) -> bool {
        let topic = self.ctx.topics.replies();
        for (command, reply) in batch.iter().zip(replies) {
            let Some(reply_to) = command
                .envelope
                .as_ref()
                .ok()
                .and_then(|e| e.reply_to.as_deref())
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
            let record = FutureRecord::to(&topic)
                .key(reply_to.as_bytes())
                .payload(&payload);
            if let Err((error, _)) = self.producer.send_result(record) {
                platform::kafka::count_producer_error("command-replies");
                warn!(%error, "reply not queued");
                return false;
            }
        }
        true
    }

    /// The offsets the group moves to once the batch commits.
    fn command_offsets(
        &self,
        batch: &[IncomingCommand],
    ) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
        let mut list = TopicPartitionList::new();
        if let Some(last) = batch.iter().map(|c| c.offset).max() {
            list.add_partition_offset(
                &self.commands_topic,
                self.partition,
                Offset::Offset(last + 1),
            )?;
        }
        Ok(list)
    }
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
