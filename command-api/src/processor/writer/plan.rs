//! The decision for one command, with its telemetry: the command's span continues the sender's
//! trace, and each event's append gets a span of its own whose context the event carries. The
//! decision itself is the partition model's ([`crate::processor::partition`]); this adds only
//! the clock, the id source and the spans.

use chrono::Utc;
use platform::telemetry::propagation::{self as telemetry, SpanRole};
use uuid::Uuid;

use crate::processor::partition::{Batch, Inputs, Plan};
use crate::processor::write_model::WriteModel;
use crate::processor::IncomingCommand;

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
        batch: &mut Batch<A>,
    ) -> Plan {
        let span = incoming.envelope.as_ref().ok().map(|envelope| {
            telemetry::record_span(
                &format!("handle {}", envelope.command_type),
                SpanRole::Consumer,
                &envelope.aggregate_id,
                &envelope.trace,
            )
        });
        let _handling = span.as_ref().map(tracing::Span::enter);
        let mut new_event_id = Uuid::now_v7;
        let mut inputs = Inputs {
            now: Utc::now(),
            new_event_id: &mut new_event_id,
        };
        let mut plan = self.model.decide(batch, index, incoming, &mut inputs);
        if let Plan::Append {
            aggregate_id,
            events,
            ..
        } = &mut plan
        {
            for event in events {
                let trace = &mut event.envelope.trace;
                let append = telemetry::send_span(
                    &format!("append {}", event.envelope.event_type),
                    aggregate_id,
                );
                trace.traceparent = telemetry::outgoing(&append, trace.traceparent.as_deref());
            }
        }
        plan
    }
}
