//! The reply a partition's writer sends for every command it handled, to the requester's reply
//! partition (`avro/command-replies/`).

use std::collections::HashMap;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use super::{from_record, to_record, WireRecord};
use crate::error::DecodeError;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplyOutcome {
    /// Events appended and read back as accepted (or nothing to append).
    Accepted,
    /// The domain refused it; `error_code` says why.
    Rejected,
    /// `If-Match` did not hold, or another writer's event won the version.
    Conflict,
    /// The caller may not act on this aggregate.
    Forbidden,
    /// The broker did not acknowledge; the outcome is unknown (retry with the same command id).
    Unavailable,
}

/// Where an event sits in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A command's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    pub command_id: String,
    pub outcome: ReplyOutcome,
    pub aggregate_id: String,
    pub version: i64,
    pub event_types: Vec<String>,
    pub positions: Vec<Position>,
    pub error_code: Option<String>,
    pub detail: String,
    pub field_errors: HashMap<String, String>,
}

impl WireRecord for CommandReply {
    const FAMILY: &'static str = "command-replies";

    fn event_type(&self) -> &'static str {
        "CommandReply"
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        to_record(self)
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        match event_type {
            "CommandReply" => from_record(event_type, value),
            other => Err(DecodeError::UnhandledEventType(other.to_owned())),
        }
    }
}
