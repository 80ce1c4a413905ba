//! The decision for one command, as a chain of named steps. Each step either lets the command
//! through (with what it learned) or ends the decision with a plan; the order is the order of
//! the checks a caller can observe: a malformed record, a copy within the batch, a command the
//! log already holds (its recorded outcome, or 422 for a reused key), an expired deadline, an
//! undecodable or misrouted command, an unreadable aggregate, a forbidden actor, a stale
//! `If-Match`, a domain rejection, and only then events.

use domain::{Current, Versioned};
use platform::envelope::{CommandEnvelope, EventEnvelope, Trace};
use platform::partitioner::partition_for;
use schemas::wire::reply::Position;
use schemas::{CommandReply, RejectionCode, ReplyOutcome};
use uuid::Uuid;

use super::plan::refuse;
use super::rejection::rejection;
use super::{accepted, answer, last_version, Batch, Inputs, PartitionModel, PendingEvent, Plan};
use crate::processor::write_model::WriteModel;
use crate::processor::IncomingCommand;

/// A step's verdict: go on with `T`, or stop with this plan.
type Step<T> = Result<T, Plan>;

impl<A: WriteModel> PartitionModel<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Decides the batch's `index`-th command against the state the batch has reached.
    pub(crate) fn decide(
        &self,
        batch: &mut Batch<A>,
        index: usize,
        incoming: &IncomingCommand,
        inputs: &mut Inputs<'_>,
    ) -> Plan {
        match self.decision(batch, index, incoming, inputs) {
            Ok(plan) | Err(plan) => plan,
        }
    }

    fn decision(
        &self,
        batch: &mut Batch<A>,
        index: usize,
        incoming: &IncomingCommand,
        inputs: &mut Inputs<'_>,
    ) -> Step<Plan> {
        let envelope = well_formed(incoming)?;
        earlier_copy_in_batch(batch, incoming, envelope)?;
        self.not_in_the_log_yet(incoming, envelope, inputs)?;
        not_expired(incoming, envelope, inputs)?;
        // From here on this copy's answer is the command's, and a later copy in the batch gets
        // it. Not an expired copy's: that refusal is about its own requester, who gave up, and
        // a later copy (a retry still waiting) is decided itself.
        batch.seen.insert(
            envelope.command_id.clone(),
            (index, envelope.request_hash.clone()),
        );
        let command = decoded::<A>(incoming, envelope)?;
        self.routed_here(incoming, envelope, &command)?;
        self.readable(incoming, envelope)?;
        let (current, head) = batch.current(self, &envelope.aggregate_id);
        authorized(incoming, envelope, current, &command)?;
        if_match_holds(incoming, envelope, current)?;
        let events = decided(incoming, envelope, current, command)?;
        if events.is_empty() {
            return Ok(self.nothing_to_append(incoming, envelope, current));
        }
        stamped(incoming, envelope, current, head, events, inputs)
    }

    /// A command whose events the log already holds (within the command window, as the events
    /// this decision appends will be judged: at `now` at least) is answered with its recorded
    /// outcome; the same key with another request is 422. Past the window it is a new command.
    fn not_in_the_log_yet(
        &self,
        incoming: &IncomingCommand,
        envelope: &CommandEnvelope,
        inputs: &Inputs<'_>,
    ) -> Step<()> {
        let now = inputs.now.timestamp_millis();
        let Some(recorded) = self.log.command_at(&envelope.command_id, now) else {
            return Ok(());
        };
        if envelope.request_hash.is_some() && recorded.request_hash != envelope.request_hash {
            return Err(refuse(
                incoming,
                ReplyOutcome::Rejected,
                &recorded.aggregate_id,
                recorded.version.get(),
                RejectionCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request",
            ));
        }
        let positions = recorded
            .offsets
            .iter()
            .map(|offset| Position {
                partition: self.partition,
                offset: *offset,
            })
            .collect();
        Err(Plan::Reply(Box::new(accepted(
            incoming,
            &recorded.aggregate_id,
            recorded.version,
            recorded.event_types.clone(),
            positions,
        ))))
    }

    /// The command names the aggregate its record is keyed by, and that aggregate lives in
    /// this partition.
    fn routed_here(
        &self,
        incoming: &IncomingCommand,
        envelope: &CommandEnvelope,
        command: &A::Command,
    ) -> Step<()> {
        let aggregate_id = envelope.aggregate_id.as_str();
        if A::aggregate_id(command) == aggregate_id
            && partition_for(aggregate_id.as_bytes(), self.partitions) == self.partition
        {
            return Ok(());
        }
        Err(refuse(
            incoming,
            ReplyOutcome::Rejected,
            aggregate_id,
            0,
            RejectionCode::Misrouted,
            "command is not for this partition's aggregate",
        ))
    }

    fn readable(&self, incoming: &IncomingCommand, envelope: &CommandEnvelope) -> Step<()> {
        if !self.unreadable.contains(&envelope.aggregate_id) {
            return Ok(());
        }
        Err(refuse(
            incoming,
            ReplyOutcome::Unavailable,
            &envelope.aggregate_id,
            0,
            RejectionCode::UnreadableAggregate,
            "this aggregate's history cannot be read by this version",
        ))
    }

    /// A command that changes nothing is accepted at the current version; its position is
    /// the aggregate's last event, so a consistency token still covers what it saw.
    fn nothing_to_append(
        &self,
        incoming: &IncomingCommand,
        envelope: &CommandEnvelope,
        current: &Current<A>,
    ) -> Plan {
        let positions = self
            .log
            .head(&envelope.aggregate_id)
            .map(|h| Position {
                partition: self.partition,
                offset: h.offset,
            })
            .into_iter()
            .collect();
        Plan::Reply(Box::new(accepted(
            incoming,
            &envelope.aggregate_id,
            current.version,
            vec![],
            positions,
        )))
    }
}

fn well_formed(incoming: &IncomingCommand) -> Step<&CommandEnvelope> {
    incoming.envelope.as_ref().map_err(|error| {
        refuse(
            incoming,
            ReplyOutcome::Rejected,
            "",
            0,
            RejectionCode::InvalidCommand,
            &error.to_string(),
        )
    })
}

/// A copy of a command that an earlier copy in the same batch was decided for (a concurrent
/// retry) gets that copy's answer; the same key with another request is 422, as it would be a
/// batch later.
fn earlier_copy_in_batch<A: WriteModel>(
    batch: &Batch<A>,
    incoming: &IncomingCommand,
    envelope: &CommandEnvelope,
) -> Step<()>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    match batch.seen.get(&envelope.command_id) {
        Some((_, hash)) if envelope.request_hash.is_some() && *hash != envelope.request_hash => {
            Err(refuse(
                incoming,
                ReplyOutcome::Rejected,
                &envelope.aggregate_id,
                0,
                RejectionCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request",
            ))
        }
        Some((first, _)) => Err(Plan::SameAs(*first)),
        None => Ok(()),
    }
}

/// Past its deadline the requester has given up (and told its caller so): acting now would
/// contradict that answer.
fn not_expired(
    incoming: &IncomingCommand,
    envelope: &CommandEnvelope,
    inputs: &Inputs<'_>,
) -> Step<()> {
    if envelope
        .deadline
        .is_none_or(|deadline| deadline >= inputs.now)
    {
        return Ok(());
    }
    Err(refuse(
        incoming,
        ReplyOutcome::Unavailable,
        &envelope.aggregate_id,
        0,
        RejectionCode::Expired,
        "the requester gave up before this command was handled",
    ))
}

fn decoded<A: WriteModel>(
    incoming: &IncomingCommand,
    envelope: &CommandEnvelope,
) -> Step<A::Command>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    let invalid = |detail: &str| {
        refuse(
            incoming,
            ReplyOutcome::Rejected,
            &envelope.aggregate_id,
            0,
            RejectionCode::InvalidCommand,
            detail,
        )
    };
    match incoming
        .payload
        .as_deref()
        .map(schemas::decode::<A::Command>)
    {
        Some(Ok(command)) => Ok(command),
        Some(Err(error)) => Err(invalid(&error.to_string())),
        None => Err(invalid("empty command record")),
    }
}

fn authorized<A: WriteModel>(
    incoming: &IncomingCommand,
    envelope: &CommandEnvelope,
    current: &Current<A>,
    command: &A::Command,
) -> Step<()>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    if A::authorize(&current.state, command, &envelope.actor) {
        return Ok(());
    }
    Err(refuse(
        incoming,
        ReplyOutcome::Forbidden,
        &envelope.aggregate_id,
        current.version.get(),
        RejectionCode::Forbidden,
        "not allowed to act on this aggregate",
    ))
}

fn if_match_holds<A: WriteModel>(
    incoming: &IncomingCommand,
    envelope: &CommandEnvelope,
    current: &Current<A>,
) -> Step<()>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    match envelope.expected_version {
        Some(expected) if expected != current.version => Err(refuse(
            incoming,
            ReplyOutcome::Conflict,
            &envelope.aggregate_id,
            current.version.get(),
            RejectionCode::VersionConflict,
            &format!(
                "expected version {expected}, but it is at {}",
                current.version
            ),
        )),
        _ => Ok(()),
    }
}

fn decided<A: WriteModel>(
    incoming: &IncomingCommand,
    envelope: &CommandEnvelope,
    current: &Current<A>,
    command: A::Command,
) -> Step<Vec<Versioned<A::Event>>>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    current.decide(command).map_err(|error| {
        let (code, line) = rejection(&error);
        let reply = answer(
            incoming,
            ReplyOutcome::Rejected,
            &envelope.aggregate_id,
            current.version.get(),
            Some(code),
            &error.to_string(),
        );
        Plan::Reply(Box::new(CommandReply { line, ..reply }))
    })
}

/// The events with their envelopes: each names the one before it (the chain head first), the
/// command, and the caller's trace (the writer adds each append's own span). The batch's state
/// moves past them, so the batch's next command builds on them.
fn stamped<A: WriteModel>(
    incoming: &IncomingCommand,
    envelope: &CommandEnvelope,
    current: &mut Current<A>,
    head: &mut Option<Uuid>,
    events: Vec<Versioned<A::Event>>,
    inputs: &mut Inputs<'_>,
) -> Step<Plan>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    let version = last_version(&events, current.version);
    // Every event is encoded before the batch's state moves: a refusal must leave the state
    // as it was, or the batch's next command would build on an event never appended.
    let payloads = events
        .iter()
        .map(|event| schemas::encode(&event.event))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            tracing::error!(%error, "event does not fit its schema");
            refuse(
                incoming,
                ReplyOutcome::Unavailable,
                &envelope.aggregate_id,
                current.version.get(),
                RejectionCode::EncodeFailed,
                "internal error",
            )
        })?;
    let mut pending = Vec::with_capacity(events.len());
    for (event, payload) in events.into_iter().zip(payloads) {
        let stamped = EventEnvelope {
            event_id: (inputs.new_event_id)(),
            event_type: schemas::WireRecord::event_type(&event.event).to_owned(),
            aggregate_kind: A::KIND,
            aggregate_id: envelope.aggregate_id.clone(),
            version: event.version,
            predecessor: *head,
            command_id: envelope.command_id.clone(),
            request_hash: envelope.request_hash.clone(),
            occurred_at: inputs.now,
            trace: Trace {
                correlation_id: envelope.trace.correlation_id.clone(),
                causation_id: envelope.command_id.clone(),
                traceparent: envelope.trace.traceparent.clone(),
            },
        };
        *head = Some(stamped.event_id);
        let _ = current.apply(&event);
        pending.push(PendingEvent {
            envelope: stamped,
            payload,
        });
    }
    Ok(Plan::Append {
        aggregate_id: envelope.aggregate_id.clone(),
        version,
        events: pending,
    })
}
