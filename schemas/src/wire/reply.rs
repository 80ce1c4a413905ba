//! The reply a partition's writer sends for every command it handled, to the requester's reply
//! partition (`avro/command-replies/`).

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
    /// The domain refused it; `code` says why.
    Rejected,
    /// `If-Match` did not hold, or another writer's event won the version.
    Conflict,
    /// The caller may not act on this aggregate.
    Forbidden,
    /// The broker did not acknowledge; the outcome is unknown (retry with the same command id).
    Unavailable,
}

impl ReplyOutcome {
    /// Stable lower-case names for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Conflict => "conflict",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Why a command was not accepted: one typed code from the writer to every place that turns it
/// into something else (HTTP in command-api's `problem.rs`, a saga input in the orchestrator's
/// `translate.rs`), each matching it exhaustively, so a new code is a compile error there rather
/// than a silent 500. The Avro enum's default is `Unknown`, for a reader that has a newer
/// writer's schema registered but not its symbol. Upgrade order: a reader decodes only schemas it
/// knows (by fingerprint), so readers of replies (every command-api and orchestrator instance)
/// must run a version that knows a new `CommandReply` schema before any writer writes it; a v1
/// reply read by a v2 reader keeps its outcome and detail but not its string code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectionCode {
    /// The aggregate already exists (registering twice).
    AlreadyExists,
    /// The aggregate does not exist.
    NotFound,
    /// An order with no lines.
    EmptyOrder,
    /// An order line priced in another currency than the first (`line` says which).
    MixedCurrencies,
    /// An order line repeating an earlier line's sku (`line` says which).
    DuplicateSku,
    /// The order total does not fit.
    TotalOutOfRange,
    /// Stock on hand would exceed the maximum.
    StockOutOfRange,
    /// The order's status does not allow the command.
    InvalidTransition,
    /// The order has a pending cancellation.
    CancellationPending,
    /// A saga input names an order line the order does not have.
    UnknownLine,
    /// A saga input addressed to another saga than the one it starts.
    MisaddressedSaga,
    /// The Idempotency-Key was used with another request.
    IdempotencyKeyReused,
    /// The command record could not be read (a bug or a foreign producer).
    InvalidCommand,
    /// The command reached a partition that does not host its aggregate.
    Misrouted,
    /// `If-Match` did not hold.
    VersionConflict,
    /// The actor may not act on this aggregate.
    Forbidden,
    /// The requester gave up before the command was handled; nothing was applied.
    Expired,
    /// The aggregate's history has records this version cannot read.
    UnreadableAggregate,
    /// An event did not fit its own schema (a bug); nothing was applied.
    EncodeFailed,
    /// A code this reader does not know (written by a newer writer).
    Unknown,
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
    /// Why the command was not accepted; `None` when it was.
    pub code: Option<RejectionCode>,
    /// The order line (0-based) the rejection is about, for codes about one line.
    pub line: Option<i32>,
    pub detail: String,
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
