//! The decision for one command, against the state the batch has reached so far.

use std::collections::HashMap;

use chrono::Utc;
use domain::Current;
use platform::envelope::{EventEnvelope, Trace};
use platform::partitioner::partition_for;
use platform::telemetry::propagation::{self as telemetry, SpanRole};
use schemas::wire::reply::Position;
use schemas::ReplyOutcome;
use tracing::error;
use uuid::Uuid;

use crate::processor::models::{rejection_code, WriteModel};
use crate::processor::IncomingCommand;

use super::batch::{PendingEvent, Plan};
use super::replies::{accepted, answer};
use super::Writer;

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Decides one command against the state the batch has reached so far.
    pub(super) fn plan(
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
        // The command's span continues the sender's trace; the events' spans are its children.
        let span = telemetry::record_span(
            &format!("handle {}", envelope.command_type),
            SpanRole::Consumer,
            aggregate_id,
            &envelope.trace,
        );
        let _handling = span.enter();
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
            let event_type = schemas::WireRecord::event_type(&event.event);
            let append = telemetry::send_span(&format!("append {event_type}"), aggregate_id);
            let envelope = EventEnvelope {
                event_id: Uuid::now_v7(),
                event_type: event_type.to_owned(),
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
                    traceparent: telemetry::outgoing(
                        &append,
                        envelope.trace.traceparent.as_deref(),
                    ),
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
}
