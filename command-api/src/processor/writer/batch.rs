//! A batch of commands in one transaction: plan each, then send the command offsets, the
//! events and the answers for requesters in other processes at once (each answer names the
//! positions its events must get: right after what this writer has read, in order; a handler
//! of this process is answered in place once the batch commits), check the events landed
//! exactly there and that the log-order rule accepts them, commit. A batch that cannot commit
//! is aborted (nothing of it becomes visible, no answer is seen) and tried again on the log as
//! it then is, until it commits, the partition is revoked, or the writer is fenced. Every
//! abort waits for the offsets call first (librdkafka runs one transactional call at a time).

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use platform::envelope::EventEnvelope;
use platform::polled_producer::DeliveryFuture;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use schemas::wire::reply::Position;
use schemas::CommandReply;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::processor::write_model::WriteModel;
use crate::processor::IncomingCommand;

use super::transaction::{self, TransactionFailure};
use super::{Recovery, Writer, WriterError};
use crate::processor::partition::{accepted, command_id, Batch, Plan};

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

/// An attempt that did not commit, and what the writer must do before the next one.
struct Failed {
    failure: TransactionFailure,
    recovery: Recovery,
}

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Commits the batch, trying again after every abort, until it commits, the partition is
    /// revoked, or the writer is fenced. Commands below the committed floor are left out: a
    /// transaction that committed them (this writer's, settled by a restart, or an earlier
    /// owner's) holds their events, and their answers unless a handler of that writer's process
    /// was answered in place.
    pub(super) async fn handle(
        &mut self,
        mut batch: Vec<IncomingCommand>,
        revoked: &CancellationToken,
    ) -> Handled {
        let mut pause = Duration::from_millis(50);
        loop {
            if self.recovery != Recovery::None {
                if let Err(error) = self.recover().await {
                    warn!(kind = %A::KIND, partition = self.partition, %error, ?self.recovery, "could not recover the partition's state; trying again");
                    if !pause_or_revoked(&mut pause, revoked).await {
                        return Handled::Abandoned;
                    }
                    continue;
                }
            }
            batch.retain(|command| command.offset >= self.command_floor);
            if batch.is_empty() {
                return Handled::Committed;
            }
            let Failed { failure, recovery } = match self.attempt(&batch).await {
                Ok(()) => return Handled::Committed,
                Err(failed) => failed,
            };
            if matches!(failure, TransactionFailure::Fenced(_)) {
                return Handled::Fenced;
            }
            self.recovery = self.recovery.and(recovery);
            metrics::counter!("writer_transactions_aborted_total", "aggregate" => A::KIND.as_str())
                .increment(1);
            warn!(kind = %A::KIND, partition = self.partition, error = %failure, ?recovery, "batch not committed; trying again on the log as it is now");
            if !pause_or_revoked(&mut pause, revoked).await {
                return Handled::Abandoned;
            }
        }
    }

    /// One transaction for the whole batch, in as few broker round trips in series as the
    /// guarantees allow: the command offsets, the events and the answers all go out at once,
    /// then the commit. Each answer carries the positions its events must get (right after what
    /// this writer has read, in order); if the broker put them anywhere else, the transaction
    /// is aborted and none of those answers is ever seen (they are read `read_committed`).
    async fn attempt(&mut self, batch: &[IncomingCommand]) -> Result<(), Failed> {
        let restart = |error: WriterError| {
            warn!(kind = %A::KIND, %error, "the writer's view cannot be completed; restarting it");
            Failed {
                failure: TransactionFailure::Incomplete,
                recovery: Recovery::Restart,
            }
        };
        self.await_last_marker().await.map_err(restart)?;
        self.absorb_pending().await.map_err(restart)?;
        // Taken before the batch is planned: the model as the log holds it up to `known_end`,
        // so the batch's own events come after the checkpoint. A snapshot written on its own
        // here lets old aggregates go, so the batch's are taken back only after it.
        let snapshot = self.due_snapshot().await;
        if self.recovery == Recovery::Restart {
            return Err(restart(WriterError::Spilling));
        }
        self.take_back_targets(batch).map_err(restart)?;
        let mut scratch = Batch::default();
        let plans: Vec<Plan> = batch
            .iter()
            .enumerate()
            .map(|(index, command)| self.plan(index, command, &mut scratch))
            .collect();
        drop(scratch);
        let command_offsets = self.command_offsets(batch).map_err(|e| Failed {
            failure: TransactionFailure::Abortable(e),
            recovery: Recovery::None,
        })?;
        transaction::begin(&self.producer).map_err(|failure| Failed {
            failure,
            recovery: Recovery::Restart,
        })?;

        let offsets_sent = tokio::spawn(transaction::send_offsets(
            self.producer.clone(),
            self.ctx.group.clone(),
            command_offsets,
        ));
        let expected = self.expected_offsets(&plans);
        let events = self.send_events(&plans);
        let replies = self.replies(batch, &plans, &expected);
        let replies_queued = self.send_replies(batch, &replies);
        let snapshot_queued = snapshot.as_ref().map(|s| self.send_snapshot(&s.records));
        let (offsets, acknowledged) = events_acknowledged(events).await;
        let replies_acknowledged = replies_acknowledged(replies_queued).await;
        let snapshot_acknowledged = match snapshot_queued {
            None => true,
            Some(None) => false,
            Some(Some(deliveries)) => super::snapshot::acknowledged(deliveries).await,
        };
        // librdkafka refuses a second transactional call while one runs: the offsets call has
        // ended before any abort or commit.
        let offsets_sent = offsets_sent
            .await
            .unwrap_or(Err(TransactionFailure::Abortable(
                rdkafka::error::KafkaError::Canceled,
            )));
        // Past this writer's own aborted records and the abort marker after them.
        let past = offsets.values().flatten().max().map_or(0, |last| last + 2);
        if !acknowledged {
            let failure = TransactionFailure::NotAcknowledged;
            return Err(self.aborted(failure, Recovery::CatchUp { past }).await);
        }
        if offsets != expected {
            metrics::counter!("writer_interleaved_appends_total", "aggregate" => A::KIND.as_str())
                .increment(1);
            let failure = TransactionFailure::Interleaved;
            return Err(self.aborted(failure, Recovery::CatchUp { past }).await);
        }
        if let Err(failure) = offsets_sent {
            return Err(self.aborted(failure, Recovery::CatchUp { past }).await);
        }
        if !snapshot_acknowledged {
            self.snapshot_failed();
        }
        if !replies_acknowledged || !snapshot_acknowledged {
            let failure = TransactionFailure::NotAcknowledged;
            return Err(self.aborted(failure, Recovery::CatchUp { past }).await);
        }
        // Nothing lies between what this writer has read and its events: the log holds exactly
        // these records there, in this order, so they are judged here as if read back.
        let appended = self.appended_in_order(&plans, &offsets);
        let last_appended = appended.last().map(|(offset, _)| *offset);
        // Every event is absorbed, accepted or not, so the model holds what the log holds.
        let verdicts: Result<Vec<bool>, WriterError> = appended
            .iter()
            .map(|(offset, (envelope, payload))| {
                let timestamp = Some(record_timestamp(envelope));
                self.absorb_record(*offset, envelope, Some(payload), timestamp)
                    .map(|(_, accepted)| accepted)
            })
            .collect();
        drop(appended);
        let verdicts = match verdicts {
            Ok(verdicts) => verdicts,
            Err(error) => {
                warn!(kind = %A::KIND, %error, "the writer's view cannot be completed; restarting it");
                return Err(self
                    .aborted(TransactionFailure::Incomplete, Recovery::Restart)
                    .await);
            }
        };
        let all_accepted = verdicts.iter().all(|accepted| *accepted);
        // From here on the model holds the batch's events: if the batch does not commit, the
        // model is rebuilt from the log.
        let then = if last_appended.is_some() {
            Recovery::Rebuild
        } else {
            Recovery::None
        };
        if !all_accepted {
            // The plans extend exactly the chains the model holds, so the log-order rule can
            // only refuse them if the model and the log disagree: start again from the log.
            error!(kind = %A::KIND, partition = self.partition, "the log-order rule refused events planned on this writer's own view; rebuilding");
            return Err(self
                .aborted(TransactionFailure::Refused, Recovery::Rebuild)
                .await);
        }
        match transaction::commit(&self.producer).await {
            Ok(()) => {}
            Err(failure @ TransactionFailure::Abortable(_)) => {
                return Err(self.aborted(failure, then).await)
            }
            Err(failure) => {
                return Err(Failed {
                    failure,
                    recovery: Recovery::Restart,
                })
            }
        }
        if let Some(snapshot) = &snapshot {
            self.snapshot_committed(snapshot);
        }
        // The commit marker follows the batch's last event in the partition.
        if let Some(last) = last_appended {
            self.known_end = last + 2;
            self.marker_end = last + 2;
        }
        if let Some(last) = batch.iter().map(|c| c.offset).max() {
            self.command_floor = self.command_floor.max(last + 1);
        }
        self.answer_requesters_here(batch, &replies);
        for (command, reply) in batch.iter().zip(&replies) {
            let command_type = command
                .envelope
                .as_ref()
                .map_or_else(|_| "unknown".to_owned(), |e| e.command_type.clone());
            metrics::counter!(
                "commands_total",
                "aggregate" => A::KIND.as_str(),
                "command" => command_type,
                "outcome" => reply.outcome.as_str()
            )
            .increment(1);
        }
        Ok(())
    }

    /// Aborts the open transaction after `failure`; `then` is what the writer does next. A
    /// producer that cannot abort (fenced, or the abort timed out) is replaced.
    async fn aborted(&self, failure: TransactionFailure, then: Recovery) -> Failed {
        if matches!(
            failure,
            TransactionFailure::Fenced(_) | TransactionFailure::Unknown(_)
        ) {
            return Failed {
                failure,
                recovery: Recovery::Restart,
            };
        }
        match transaction::abort(&self.producer).await {
            Ok(()) => Failed {
                failure,
                recovery: then,
            },
            Err(failure) => Failed {
                failure,
                recovery: Recovery::Restart,
            },
        }
    }

    /// Where each command's events must land: one after another from the end of what this
    /// writer has read, in the order of the batch.
    fn expected_offsets(&self, plans: &[Plan]) -> HashMap<usize, Vec<i64>> {
        let mut next = self.known_end;
        let mut expected = HashMap::new();
        for (index, plan) in plans.iter().enumerate() {
            if let Plan::Append { events, .. } = plan {
                let at: Vec<i64> = (next..).take(events.len()).collect();
                next += i64::try_from(events.len()).unwrap_or(i64::MAX);
                expected.insert(index, at);
            }
        }
        expected
    }

    /// Queues every event, in order, in the open transaction.
    fn send_events(&self, plans: &[Plan]) -> Vec<(usize, Option<DeliveryFuture>)> {
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
                        .timestamp(record_timestamp(&event.envelope))
                        .headers(event.envelope.to_headers());
                    deliveries.push((index, self.producer.send_result(record).ok()));
                }
            }
        }
        deliveries
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

    /// One answer per command: the plan's own, or "accepted" with the positions its events must
    /// get (the batch commits only if they get exactly those).
    fn replies(
        &self,
        batch: &[IncomingCommand],
        plans: &[Plan],
        expected: &HashMap<usize, Vec<i64>>,
    ) -> Vec<CommandReply> {
        let mut replies: Vec<CommandReply> = Vec::with_capacity(plans.len());
        for (index, plan) in plans.iter().enumerate() {
            let command = &batch[index];
            let reply = match plan {
                Plan::Reply(reply) => (**reply).clone(),
                Plan::SameAs(first) => CommandReply {
                    command_id: command_id(command),
                    ..replies[*first].clone()
                },
                Plan::Append {
                    aggregate_id,
                    version,
                    events,
                } => {
                    let positions = expected
                        .get(&index)
                        .into_iter()
                        .flatten()
                        .map(|offset| Position {
                            partition: self.partition,
                            offset: *offset,
                        })
                        .collect();
                    let event_types = events
                        .iter()
                        .map(|e| e.envelope.event_type.clone())
                        .collect();
                    accepted(command, aggregate_id, *version, event_types, positions)
                }
            };
            replies.push(reply);
        }
        replies
    }

    /// Queues the answers in the open transaction: a requester reads them `read_committed`, so
    /// it sees an answer only once the batch has committed. `None` when one could not be queued
    /// (the batch is then aborted and tried again). An answer a handler of this process waits
    /// for is not queued: the writer gives it once the batch commits (`answer_requesters_here`),
    /// and the replies partition stays out of the transaction (one partition fewer to add, to
    /// produce to and to mark per batch).
    fn send_replies(
        &self,
        batch: &[IncomingCommand],
        replies: &[CommandReply],
    ) -> Option<Vec<DeliveryFuture>> {
        let topic = self.ctx.topics.replies();
        let mut deliveries = Vec::new();
        for (command, reply) in batch.iter().zip(replies) {
            let Some((reply_to, ticket)) = requester(command) else {
                continue;
            };
            if self.ctx.waiters.waits_for(reply_to, reply, ticket) {
                continue;
            }
            let payload = match schemas::encode(reply) {
                Ok(payload) => payload,
                Err(error) => {
                    error!(%error, "reply does not fit its schema");
                    continue;
                }
            };
            let record = FutureRecord::to(&topic)
                .key(reply_to.as_bytes())
                .payload(&payload)
                .headers(platform::envelope::reply_headers(ticket));
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => {
                    platform::kafka::count_producer_error("command-replies");
                    warn!(%error, "reply not queued");
                    return None;
                }
            }
        }
        Some(deliveries)
    }

    /// Answers the commands sent by this process's own HTTP handlers straight away, once the
    /// batch has committed: the commit returned, so the coordinator has decided it and the
    /// answer is the one the log holds, without the replies topic's round trip (commit markers,
    /// the reply listener's fetch). Requesters elsewhere read their replies from the topic.
    fn answer_requesters_here(&self, batch: &[IncomingCommand], replies: &[CommandReply]) {
        for (command, reply) in batch.iter().zip(replies) {
            if let Some((reply_to, ticket)) = requester(command) {
                if self.ctx.waiters.answer(reply_to, reply, ticket) {
                    metrics::counter!("replies_answered_in_process_total", "aggregate" => A::KIND.as_str())
                        .increment(1);
                }
            }
        }
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

/// Who waits for `command`'s answer: the requester's reply key and the ticket of the wait
/// that sent this copy.
fn requester(command: &IncomingCommand) -> Option<(&str, Option<u64>)> {
    let envelope = command.envelope.as_ref().ok()?;
    Some((envelope.reply_to.as_deref()?, envelope.reply_ticket))
}

/// Waits for the broker's acknowledgement of every event: the offsets of each command's events
/// that were acknowledged, and whether all were. Waiting for every acknowledgement before the
/// commit also spares it rdkafka's flush, which sleeps a whole 100 ms poll whenever a message
/// is still in flight.
async fn events_acknowledged(
    deliveries: Vec<(usize, Option<DeliveryFuture>)>,
) -> (HashMap<usize, Vec<i64>>, bool) {
    let futures = deliveries.into_iter().map(|(index, queued)| async move {
        match queued {
            Some(future) => (
                index,
                future.await.ok().and_then(Result::ok).map(|d| d.offset),
            ),
            None => (index, None),
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
    (offsets, all)
}

/// Whether the broker acknowledged every answer.
async fn replies_acknowledged(queued: Option<Vec<DeliveryFuture>>) -> bool {
    let Some(deliveries) = queued else {
        return false;
    };
    let delivered = join_all(deliveries)
        .await
        .into_iter()
        .all(|d| matches!(d, Ok(Ok(_))));
    if !delivered {
        platform::kafka::count_producer_error("command-replies");
    }
    delivered
}

/// Sleeps `pause` (doubling it for next time, up to `MAX_RETRY_PAUSE`); false when the
/// partition was revoked meanwhile.
async fn pause_or_revoked(pause: &mut Duration, revoked: &CancellationToken) -> bool {
    if revoked.is_cancelled() {
        return false;
    }
    let waited = tokio::select! {
        _ = tokio::time::sleep(*pause) => true,
        _ = revoked.cancelled() => false,
    };
    *pause = (*pause * 2).min(MAX_RETRY_PAUSE);
    waited
}

/// The Kafka timestamp of an event's record: its `occurred_at`, set explicitly, so the writer
/// judges its own events with the timestamp every reader will see (the log-order rule's clock).
fn record_timestamp(envelope: &EventEnvelope) -> i64 {
    envelope.occurred_at.timestamp_millis()
}
