//! A batch of commands: plan each, append every event, learn what the log made of them, commit,
//! answer.

use std::collections::HashMap;
use std::time::Duration;

use domain::{Current, Version};
use futures::future::join_all;
use platform::envelope::EventEnvelope;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use schemas::wire::reply::Position;
use schemas::{CommandReply, ReplyOutcome};
use tracing::{error, warn};
use uuid::Uuid;

use crate::processor::models::WriteModel;
use crate::processor::IncomingCommand;

use super::replies::{accepted, answer, command_id, outcome_label, unavailable};
use super::Writer;

/// How long the writer waits to read its own events back before answering "unavailable".
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One planned answer per command of a batch.
pub(super) enum Plan {
    Reply(Box<CommandReply>),
    /// A second copy of a command earlier in the same batch (a concurrent retry).
    SameAs(usize),
    Append {
        aggregate_id: String,
        version: Version,
        events: Vec<PendingEvent>,
    },
}

pub(super) struct PendingEvent {
    pub(super) envelope: EventEnvelope,
    pub(super) payload: Vec<u8>,
}

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    pub(super) async fn handle(&mut self, batch: Vec<IncomingCommand>) {
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
                    platform::kafka::count_producer_error("command-writer");
                    failed.insert(index);
                }
            }
        }

        let verdicts = self.verdicts(&plans, &offsets, failed.is_empty()).await;

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

    /// The log's verdict on every event of the batch, by event id: only the log decides whether
    /// they count. When the broker acknowledged all of them at the offsets right after the last
    /// one this writer has read (`next_offset`, no gap), nothing else lies between: the log holds
    /// exactly these records there, in this order, so they are judged here as if read back,
    /// which saves a fetch round trip. Otherwise (another writer appended in between during a
    /// handover, or a send failed) they are read back from the partition.
    async fn verdicts(
        &mut self,
        plans: &[Plan],
        offsets: &HashMap<usize, Vec<i64>>,
        all_acknowledged: bool,
    ) -> HashMap<Uuid, bool> {
        let mut appended: Vec<(i64, &PendingEvent)> = Vec::new();
        for (index, plan) in plans.iter().enumerate() {
            if let (Plan::Append { events, .. }, Some(at)) = (plan, offsets.get(&index)) {
                appended.extend(at.iter().copied().zip(events));
            }
        }
        appended.sort_by_key(|(offset, _)| *offset);
        let contiguous = appended
            .iter()
            .zip(self.next_offset..)
            .all(|((offset, _), expected)| *offset == expected);
        if all_acknowledged && contiguous {
            return appended
                .into_iter()
                .map(|(offset, event)| {
                    self.absorb_record(offset, &event.envelope, Some(&event.payload))
                })
                .collect();
        }
        let Some(last) = appended.last().map(|(offset, _)| *offset) else {
            return HashMap::new();
        };
        self.read_until(last + 1, READ_BACK_TIMEOUT)
            .await
            .unwrap_or_else(|error| {
                warn!(partition = self.partition, %error, "could not read own events back");
                HashMap::new()
            })
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

    /// Hands the replies to the producer and lets them travel while the next batch is decided
    /// and appended: a batch waits only for the previous batch's replies to be delivered
    /// (`replies_delivered`), so replies never pile up and a stopping writer delivers what it
    /// answered before it goes.
    async fn send_replies(&mut self, batch: &[IncomingCommand], replies: &[CommandReply]) {
        self.replies_delivered().await;
        let addressed: Vec<(String, Vec<u8>)> = batch
            .iter()
            .zip(replies)
            .filter_map(|(command, reply)| {
                let reply_to = command.envelope.as_ref().ok()?.reply_to.clone()?;
                match schemas::encode(reply) {
                    Ok(payload) => Some((reply_to, payload)),
                    Err(error) => {
                        error!(%error, "reply does not fit its schema");
                        None
                    }
                }
            })
            .collect();
        let (producer, topic) = (self.ctx.producer.clone(), self.ctx.topics.replies());
        self.replies_in_flight = Some(tokio::spawn(async move {
            let sends = addressed.iter().map(|(reply_to, payload)| {
                let record = FutureRecord::to(&topic)
                    .key(reply_to.as_bytes())
                    .payload(payload);
                producer.send(record, Duration::from_secs(5))
            });
            for sent in join_all(sends).await {
                if let Err((error, _)) = sent {
                    platform::kafka::count_producer_error("command-replies");
                    warn!(%error, "reply not delivered; the requester will time out");
                }
            }
        }));
    }

    /// Waits until the replies of the previous batch are delivered (or failed).
    pub(super) async fn replies_delivered(&mut self) {
        if let Some(in_flight) = self.replies_in_flight.take() {
            let _ = in_flight.await;
        }
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
