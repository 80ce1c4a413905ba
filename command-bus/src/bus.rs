//! The command bus: the one path every write takes, for HTTP handlers and the saga alike.
//! A command goes onto its aggregate's commands topic (keyed by aggregate id, so it reaches the
//! partition's writer); the writer's reply comes back on the replies topic, keyed by this
//! requester's reply key, so each requester reads a single partition of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::AggregateKind;
use platform::config::KafkaSettings;
use platform::envelope::{Actor, CommandEnvelope, Trace};
use platform::partitioner::partition_for;
use platform::resilience::{Breaker, BreakerPolicy};
use platform::telemetry::propagation as telemetry;
use platform::topics::Topics;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schemas::{CommandReply, ReplyOutcome, WireRecord};
use thiserror::Error;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// Why a command could not be handed over.
#[derive(Debug, Error)]
pub enum BusError {
    /// The command never reached the broker's log: nothing was appended.
    #[error("the broker did not take the command")]
    NotSent(#[source] rdkafka::error::KafkaError),
    /// The send failed in a way that leaves open whether the broker wrote the command (a
    /// produce request timed out in flight, a connection dropped before its answer): a writer
    /// may still handle it. Only a retry with the same command id can tell.
    #[error("the broker may or may not have taken the command")]
    OutcomeUnknown(#[source] rdkafka::error::KafkaError),
    /// The broker failed the last few sends: refused at once until a trial send succeeds.
    #[error("the broker is failing; not tried")]
    CircuitOpen,
    #[error("the command could not be encoded")]
    Encode(#[from] schemas::EncodeError),
}

/// Hands commands to their writers and waits for the replies.
#[derive(Clone)]
pub struct CommandBus {
    producer: FutureProducer,
    topics: Topics,
    partitions: i32,
    send_timeout: Duration,
    waiters: ReplyWaiters,
    broker: Breaker,
}

/// The requests of one requester (one reply key) that wait for their answer, by command id.
/// The reply listener completes them from the replies topic; a partition writer in the same
/// process completes them straight after its transaction commits ([`ReplyWaiters::answer`]),
/// a topic round trip sooner. Whichever comes first answers; the other finds nobody waiting.
/// Several requests may wait for one command (a client's retry while its first attempt still
/// waits), each having sent its own copy under its ticket. An accepted command's answer goes
/// to every one of them (the log holds the command, whichever copy it took); any other answer
/// says nothing was appended *for that copy*, and a later copy may still be accepted, so it
/// goes to the wait that sent that copy alone.
#[derive(Clone, Default)]
pub struct ReplyWaiters {
    reply_key: String,
    pending: Arc<Mutex<Pending>>,
    tickets: Arc<AtomicU64>,
}

/// Waiting requests by command id, each with the ticket of the wait that registered it.
type Pending = HashMap<String, Vec<(u64, oneshot::Sender<CommandReply>)>>;

/// One request's wait for its answer. Its entry leaves the map when the wait ends: answered,
/// given up, or dropped with its handler because the client went away (a wait left behind
/// would stay for ever, and a writer would keep skipping the reply nobody can receive). A
/// wait removes only its own entry, never another request's for the same command id.
#[derive(Debug)]
struct Wait {
    waiters: ReplyWaiters,
    command_id: String,
    ticket: u64,
    answer: oneshot::Receiver<CommandReply>,
}

impl Drop for Wait {
    fn drop(&mut self) {
        let mut pending = self.waiters.lock();
        if let Some(waits) = pending.get_mut(&self.command_id) {
            waits.retain(|(ticket, _)| *ticket != self.ticket);
            if waits.is_empty() {
                pending.remove(&self.command_id);
            }
        }
    }
}

impl std::fmt::Debug for ReplyWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyWaiters")
            .field("reply_key", &self.reply_key)
            .finish()
    }
}

impl ReplyWaiters {
    fn new(reply_key: String) -> Self {
        Self {
            reply_key,
            ..Self::default()
        }
    }

    /// Answers the requests that `reply` is for (see [`ReplyWaiters`]; `ticket` names the wait
    /// that sent the replied copy), if it is addressed to this requester (`reply_to`); whether
    /// anyone was still there to take it. Only for a reply whose transaction has committed:
    /// the answer must never be one the log could contradict.
    pub fn answer(&self, reply_to: &str, reply: &CommandReply, ticket: Option<u64>) -> bool {
        if reply_to != self.reply_key {
            return false;
        }
        let takes = takes(reply, ticket);
        let theirs: Vec<_> = {
            let mut pending = self.lock();
            let Some(waits) = pending.get_mut(&reply.command_id) else {
                return false;
            };
            let (theirs, others) = std::mem::take(waits)
                .into_iter()
                .partition(|(t, _)| takes(*t));
            *waits = others;
            if waits.is_empty() {
                pending.remove(&reply.command_id);
            }
            theirs
        };
        let mut taken = false;
        for (_, waiter) in theirs {
            taken |= waiter.send(reply.clone()).is_ok();
        }
        taken
    }

    /// Whether a request of this requester (`reply_to`) waits right now for `reply`, sent
    /// for the copy of `ticket`: a writer that will answer it in process writes no reply.
    pub fn waits_for(&self, reply_to: &str, reply: &CommandReply, ticket: Option<u64>) -> bool {
        if reply_to != self.reply_key {
            return false;
        }
        let takes = takes(reply, ticket);
        self.lock()
            .get(&reply.command_id)
            .is_some_and(|waits| waits.iter().any(|(t, _)| takes(*t)))
    }

    fn wait_for(&self, command_id: &str) -> Wait {
        let (tx, answer) = oneshot::channel();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(command_id.to_owned())
            .or_default()
            .push((ticket, tx));
        Wait {
            waiters: self.clone(),
            command_id: command_id.to_owned(),
            ticket,
            answer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned lock only means another task panicked mid-insert; the map is still usable.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Which waits (by ticket) `reply`, sent for the copy of `ticket`, answers: every wait for its
/// command when it was accepted (the log holds the command, whichever copy it took) or names
/// no ticket (a writer from before tickets, as it always was); otherwise the copy's own.
fn takes(reply: &CommandReply, ticket: Option<u64>) -> impl Fn(u64) -> bool {
    let every = reply.outcome == ReplyOutcome::Accepted || ticket.is_none();
    move |t| every || Some(t) == ticket
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("reply_key", &self.waiters.reply_key)
            .finish()
    }
}

impl CommandBus {
    /// Starts listening for replies addressed to `reply_key` (unique per process), from the
    /// replies partition's current end, before any command is sent. `breaker` says when the
    /// bus stops sending to a broker that keeps failing, and for how long.
    pub async fn start(
        kafka: &KafkaSettings,
        partitions: i32,
        producer: FutureProducer,
        reply_key: String,
        breaker: BreakerPolicy,
        shutdown: CancellationToken,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        platform::kafka::register_producer("command-bus");
        let topics = Topics::new(kafka.topic_prefix.clone());
        let replies = topics.replies();
        let partition = partition_for(reply_key.as_bytes(), partitions);
        let consumer: Arc<StreamConsumer> = Arc::new(
            platform::kafka::latency_consumer_config(
                kafka,
                &format!("{}.reply-listener", kafka.topic_prefix),
            )
            .create()?,
        );
        let (_, high) = {
            let (topic, consumer) = (replies.clone(), consumer.clone());
            tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))
            })
            .await
            .map_err(|_| rdkafka::error::KafkaError::Canceled)??
        };
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&replies, partition, Offset::Offset(high))?;
        consumer.assign(&assignment)?;
        let waiters = ReplyWaiters::new(reply_key.clone());
        tokio::spawn(listen(consumer, waiters.clone(), shutdown));
        Ok(Self {
            producer,
            topics,
            partitions,
            send_timeout: Duration::from_secs(5),
            waiters,
            broker: Breaker::new("kafka", breaker),
        })
    }

    /// This requester's reply key, to put in command envelopes.
    pub fn reply_key(&self) -> &str {
        &self.waiters.reply_key
    }

    /// The requests waiting for their answer, for a partition writer in this process to answer
    /// as soon as its transaction commits.
    pub fn waiters(&self) -> ReplyWaiters {
        self.waiters.clone()
    }

    /// The envelope of a command sent through this bus: its reply comes back here. The
    /// conditions a requester may add (`expected_version`, `request_hash`, `deadline`) start
    /// empty; one that has them sets them on the result. The one way envelopes are built.
    pub fn envelope(
        &self,
        command_id: String,
        command_type: &str,
        aggregate_id: String,
        actor: Actor,
        trace: Trace,
    ) -> CommandEnvelope {
        CommandEnvelope {
            command_id,
            command_type: command_type.to_owned(),
            aggregate_id,
            reply_to: Some(self.reply_key().to_owned()),
            reply_ticket: None,
            expected_version: None,
            request_hash: None,
            actor,
            deadline: None,
            trace,
        }
    }

    /// Partitions per topic (commands and events topics have the same count).
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Sends a command and waits up to `wait` for its outcome. `Ok(None)`: the command was
    /// handed over but no reply came in time (it may still be handled).
    pub async fn send<C: WireRecord>(
        &self,
        kind: AggregateKind,
        envelope: &CommandEnvelope,
        command: &C,
        wait: Duration,
    ) -> Result<Option<CommandReply>, BusError> {
        let payload = schemas::encode(command)?;
        if !self.broker.permits() {
            return Err(BusError::CircuitOpen);
        }
        let span = telemetry::send_span(
            &format!("send {}", envelope.command_type),
            &envelope.aggregate_id,
        );
        let mut pending = self.waiters.wait_for(&envelope.command_id);
        let headers = {
            let mut envelope = envelope.clone();
            envelope.reply_ticket = Some(pending.ticket);
            envelope.trace.traceparent =
                telemetry::outgoing(&span, envelope.trace.traceparent.as_deref());
            envelope.to_headers()
        };
        let topic = self.topics.commands(kind);
        let record = FutureRecord::to(&topic)
            .key(envelope.aggregate_id.as_bytes())
            .payload(&payload)
            .headers(headers);
        let sent = self
            .producer
            .send(record, self.send_timeout)
            .instrument(span)
            .await;
        if let Err((error, _)) = sent {
            self.broker.failed();
            platform::kafka::count_producer_error("command-bus");
            return Err(if never_reached_the_log(&error) {
                BusError::NotSent(error)
            } else {
                BusError::OutcomeUnknown(error)
            });
        }
        self.broker.succeeded();
        let reply = tokio::time::timeout(wait, &mut pending.answer)
            .await
            .ok()
            .and_then(Result::ok);
        Ok(reply)
    }
}

/// Whether a failed send certainly left nothing in the log. Only errors that mean the record
/// was never handed to the broker, or that the broker refused it before appending, qualify;
/// everything else (a timeout with the request in flight, a dropped connection, a broker error
/// after the append) may have been written, so the caller must hear "outcome unknown".
/// librdkafka knows a message's persistence status, but rdkafka does not expose it without
/// unsafe code; erring towards "unknown" is the safe side of the contract. Retriable broker
/// errors (not enough replicas, unknown partition, a corrupt batch) are "unknown" too: an
/// earlier attempt of the same batch may have been written before the one that failed last.
pub fn never_reached_the_log(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    matches!(
        error,
        KafkaError::MessageProduction(
            Code::QueueFull
                | Code::PurgeQueue
                | Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::MessageBatchTooLarge
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::InvalidRequiredAcks
        )
    )
}

async fn listen(consumer: Arc<StreamConsumer>, waiters: ReplyWaiters, shutdown: CancellationToken) {
    loop {
        // Between replies (never inside the select: a reply received there must not be lost).
        platform::runtime::take_turn().await;
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "reply consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if message.key() != Some(waiters.reply_key.as_bytes()) {
            continue;
        }
        let reply = match message.payload().map(schemas::decode::<CommandReply>) {
            Some(Ok(reply)) => reply,
            other => {
                warn!(offset = message.offset(), error = ?other.map(|r| r.err()), "undecodable reply skipped");
                continue;
            }
        };
        let ticket = platform::envelope::reply_ticket(message.headers());
        if !waiters.answer(&waiters.reply_key, &reply, ticket) {
            debug!(command_id = %reply.command_id, "reply for a command nobody waits for (answered already, or given up)");
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    use schemas::{CommandReply, ReplyOutcome};

    use super::{never_reached_the_log, ReplyWaiters};

    fn accepted(command_id: &str) -> CommandReply {
        CommandReply {
            command_id: command_id.to_owned(),
            outcome: ReplyOutcome::Accepted,
            aggregate_id: "a-1".into(),
            version: 1,
            event_types: vec!["StockAdded".into()],
            positions: Vec::new(),
            code: None,
            line: None,
            detail: String::new(),
        }
    }

    #[test]
    fn a_request_whose_handler_is_dropped_leaves_no_wait_behind() {
        let waiters = ReplyWaiters::new("me".into());
        let wait = waiters.wait_for("c-1");
        assert!(waiters.waits_for("me", &accepted("c-1"), None));
        // The HTTP handler's future is dropped when its client goes away.
        drop(wait);
        assert!(
            !waiters.waits_for("me", &accepted("c-1"), None),
            "a dropped wait stays in the map for ever (and a writer keeps skipping its reply)"
        );
    }

    #[test]
    fn a_wait_that_ends_leaves_a_later_wait_for_the_same_command_in_place() {
        let waiters = ReplyWaiters::new("me".into());
        let first = waiters.wait_for("c-1");
        let mut second = waiters.wait_for("c-1");
        drop(first);
        assert!(
            waiters.waits_for("me", &accepted("c-1"), None),
            "the later request still waits"
        );
        assert!(waiters.answer("me", &accepted("c-1"), None));
        assert_eq!(
            second.answer.try_recv().ok().map(|r| r.command_id),
            Some("c-1".to_owned())
        );
    }

    #[test]
    fn every_request_waiting_for_one_command_gets_its_answer() {
        let waiters = ReplyWaiters::new("me".into());
        let mut first = waiters.wait_for("c-1");
        let mut second = waiters.wait_for("c-1");
        assert!(waiters.answer("me", &accepted("c-1"), None));
        for wait in [&mut first, &mut second] {
            assert_eq!(
                wait.answer.try_recv().ok().map(|r| r.command_id),
                Some("c-1".to_owned()),
                "a request waiting for the same command as another was left without its answer"
            );
        }
        assert!(!waiters.waits_for("me", &accepted("c-1"), None));
        drop((first, second));
        assert!(!waiters.waits_for("me", &accepted("c-1"), None));
    }

    /// The outcome a wait has been answered with, if any.
    fn answered(wait: &mut super::Wait) -> Option<ReplyOutcome> {
        wait.answer.try_recv().ok().map(|r| r.outcome)
    }

    fn refused(command_id: &str) -> CommandReply {
        CommandReply {
            outcome: ReplyOutcome::Rejected,
            version: 0,
            event_types: Vec::new(),
            ..accepted(command_id)
        }
    }

    #[test]
    fn a_refusal_of_one_copy_answers_only_the_request_that_sent_it() {
        // A's copy expired in a backlog while B, a retry with the same key, still waits: the
        // refusal says nothing was appended for A's copy, yet B's copy may still be accepted.
        let waiters = ReplyWaiters::new("me".into());
        let mut a = waiters.wait_for("c-1");
        let mut b = waiters.wait_for("c-1");
        assert!(waiters.waits_for("me", &refused("c-1"), Some(a.ticket)));
        assert!(waiters.answer("me", &refused("c-1"), Some(a.ticket)));
        assert_eq!(answered(&mut a), Some(ReplyOutcome::Rejected));
        assert!(
            b.answer.try_recv().is_err(),
            "the other copy's request was told a refusal the log can contradict"
        );
        assert!(!waiters.waits_for("me", &refused("c-1"), Some(a.ticket)));
        assert!(waiters.waits_for("me", &refused("c-1"), Some(b.ticket)));
        assert!(waiters.answer("me", &accepted("c-1"), Some(b.ticket)));
        assert_eq!(answered(&mut b), Some(ReplyOutcome::Accepted));
        assert!(!waiters.waits_for("me", &accepted("c-1"), None));
    }

    #[test]
    fn an_acceptance_answers_every_copy_whichever_copy_it_took() {
        let waiters = ReplyWaiters::new("me".into());
        let mut a = waiters.wait_for("c-1");
        let mut b = waiters.wait_for("c-1");
        assert!(waiters.waits_for("me", &accepted("c-1"), Some(b.ticket)));
        assert!(waiters.answer("me", &accepted("c-1"), Some(b.ticket)));
        for wait in [&mut a, &mut b] {
            assert_eq!(answered(wait), Some(ReplyOutcome::Accepted));
        }
    }

    #[test]
    fn a_reply_addressed_to_another_requester_answers_nobody_here() {
        let waiters = ReplyWaiters::new("me".into());
        let _wait = waiters.wait_for("c-1");
        assert!(!waiters.answer("someone-else", &accepted("c-1"), None));
        assert!(waiters.waits_for("me", &accepted("c-1"), None));
        assert!(!waiters.waits_for("someone-else", &accepted("c-1"), None));
    }

    #[test]
    fn a_send_refused_before_the_append_left_nothing_in_the_log() {
        for code in [Code::QueueFull, Code::PurgeQueue, Code::MessageSizeTooLarge] {
            assert!(never_reached_the_log(&KafkaError::MessageProduction(code)));
        }
    }

    #[test]
    fn a_send_that_timed_out_or_failed_after_the_append_may_be_in_the_log() {
        for code in [
            Code::MessageTimedOut,
            Code::RequestTimedOut,
            Code::PurgeInflight,
            Code::NotEnoughReplicasAfterAppend,
            Code::NotEnoughReplicas,
            Code::UnknownTopicOrPartition,
            Code::NetworkException,
            Code::AllBrokersDown,
        ] {
            assert!(!never_reached_the_log(&KafkaError::MessageProduction(code)));
        }
        assert!(!never_reached_the_log(&KafkaError::Canceled));
    }
}
