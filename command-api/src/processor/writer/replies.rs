//! The replies a writer sends.

use std::collections::HashMap;

use domain::Version;
use schemas::wire::reply::Position;
use schemas::{CommandReply, ReplyOutcome};

use crate::processor::IncomingCommand;

pub(super) fn command_id(command: &IncomingCommand) -> String {
    command
        .envelope
        .as_ref()
        .map(|e| e.command_id.clone())
        .unwrap_or_default()
}

pub(super) fn answer(
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

pub(super) fn accepted(
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

pub(super) fn outcome_label(outcome: ReplyOutcome) -> &'static str {
    match outcome {
        ReplyOutcome::Accepted => "accepted",
        ReplyOutcome::Rejected => "rejected",
        ReplyOutcome::Conflict => "conflict",
        ReplyOutcome::Forbidden => "forbidden",
        ReplyOutcome::Unavailable => "unavailable",
    }
}
