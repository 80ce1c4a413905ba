//! What a decision produces, and the replies a writer sends.

use domain::Version;
use platform::envelope::EventEnvelope;
use schemas::wire::reply::Position;
use schemas::{CommandReply, RejectionCode, ReplyOutcome};

use crate::processor::IncomingCommand;

/// The decision for one command of a batch.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Answer at once: nothing to append.
    Reply(Box<CommandReply>),
    /// A second copy of a command earlier in the same batch (a concurrent retry).
    SameAs(usize),
    /// Append these events; answered "accepted" at the positions they must get, and the batch
    /// commits only if they get exactly those and the log-order rule accepts them.
    Append {
        aggregate_id: String,
        version: Version,
        events: Vec<PendingEvent>,
    },
}

/// An event ready to append.
#[derive(Debug)]
pub(crate) struct PendingEvent {
    pub(crate) envelope: EventEnvelope,
    pub(crate) payload: Vec<u8>,
}

pub(crate) fn command_id(command: &IncomingCommand) -> String {
    command
        .envelope
        .as_ref()
        .map(|e| e.command_id.clone())
        .unwrap_or_default()
}

pub(crate) fn answer(
    command: &IncomingCommand,
    outcome: ReplyOutcome,
    aggregate_id: &str,
    version: u64,
    code: Option<RejectionCode>,
    detail: &str,
) -> CommandReply {
    CommandReply {
        command_id: command_id(command),
        outcome,
        aggregate_id: aggregate_id.to_owned(),
        version: i64::try_from(version).unwrap_or(i64::MAX),
        event_types: vec![],
        positions: vec![],
        code,
        line: None,
        detail: detail.to_owned(),
    }
}

pub(crate) fn accepted(
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

/// A refusal as a plan.
pub(super) fn refuse(
    command: &IncomingCommand,
    outcome: ReplyOutcome,
    aggregate_id: &str,
    version: u64,
    code: RejectionCode,
    detail: &str,
) -> Plan {
    Plan::Reply(Box::new(answer(
        command,
        outcome,
        aggregate_id,
        version,
        Some(code),
        detail,
    )))
}
