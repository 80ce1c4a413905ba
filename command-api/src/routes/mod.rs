//! One module per route; [`submit`] is the path every command handler shares.

pub mod customers;
pub mod inventory;
pub mod orders;
pub mod params;
pub mod system;

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use domain::idempotency::{KeyCommand, KeyId};
use domain::{AggregateKind, Version};
use platform::consistency::ConsistencyToken;
use platform::envelope::{Actor, CommandEnvelope, Trace};
use schemas::{CommandReply, ReplyOutcome, WireRecord};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Caller;
use crate::bus::BusError;
use crate::problem::ApiError;
use crate::startup::AppState;

/// The headers every command request may carry.
#[derive(Debug, Clone)]
pub struct CommandHeaders {
    pub idempotency_key: Option<String>,
    pub expected_version: Option<Version>,
    pub correlation_id: String,
    pub traceparent: Option<String>,
}

impl CommandHeaders {
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &'static str| -> Result<Option<String>, ApiError> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::to_owned)
                        .map_err(|_| ApiError::BadHeader {
                            name,
                            detail: format!("{name} must be visible ASCII"),
                        })
                })
                .transpose()
        };
        let idempotency_key = text("idempotency-key")?;
        if let Some(key) = &idempotency_key {
            if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::BadHeader {
                    name: "Idempotency-Key",
                    detail: "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                });
            }
        }
        let expected_version = text("if-match")?
            .map(|raw| {
                let trimmed = raw.trim().trim_start_matches("W/").trim_matches('"');
                trimmed
                    .parse::<u64>()
                    .map(Version::new)
                    .map_err(|_| ApiError::BadHeader {
                        name: "If-Match",
                        detail: "If-Match must be a version, like \"3\"".into(),
                    })
            })
            .transpose()?;
        let correlation_id = text("x-correlation-id")?
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        tracing::Span::current().record("correlation_id", correlation_id.as_str());
        Ok(Self {
            idempotency_key,
            expected_version,
            correlation_id,
            traceparent: text("traceparent")?,
        })
    }
}

/// A command ready to submit.
#[derive(Debug)]
pub struct Submission<'a, C> {
    pub kind: AggregateKind,
    pub aggregate_id: String,
    pub command: C,
    pub caller: &'a Caller,
    pub headers: &'a CommandHeaders,
    /// `METHOD path` of the request, part of the idempotency identity.
    pub route: String,
    pub body: &'a [u8],
}

/// What became of a submitted command.
#[derive(Debug)]
pub enum Submitted {
    /// The writer accepted it; the token covers its events.
    Done {
        reply: Box<CommandReply>,
        token: String,
    },
    /// Handed over, but the outcome did not arrive within the wait.
    Pending { command_id: String },
}

/// Same caller + route + Idempotency-Key => same command id, so a retry is recognised by the
/// partition's writer (from its log) however many times it is sent, across restarts.
pub fn command_id(caller: &Caller, route: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => derived(&format!("{}\n{route}\n{key}", caller.subject)).to_string(),
        None => Uuid::now_v7().to_string(),
    }
}

/// The same id for the same name, every time and on every instance.
fn derived(name: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
}

/// A hash of the request, to tell a retry from a reused key with another body.
fn request_hash(route: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hex::encode(&hasher.finalize()[..16])
}

/// The id under which a caller's key is claimed: the same for every route, so one key names
/// one request whatever aggregate, partition or path that request has.
fn key_id(caller: &Caller, key: &str) -> KeyId {
    KeyId::from_uuid(derived(&format!(
        "idempotency-key\n{}\n{key}",
        caller.subject
    )))
}

/// The command id of one request's claim of a key: the same request claims with the same id
/// (its retry is answered from the log), another request with another (refused by the key),
/// and two requests waiting on one instance never take each other's answer.
fn claim_id(key_id: KeyId, request_hash: &str) -> String {
    derived(&format!("{key_id}\n{request_hash}")).to_string()
}

/// The floor of the wait a command gets after its key's claim took most of the request's.
const LEAST_WAIT: Duration = Duration::from_millis(250);

/// Sends a command through the bus and turns refusals into [`ApiError`]s. A request with an
/// Idempotency-Key first claims the key (see [`claim_key`]), so a key reused with another
/// request is refused before its command is ever sent. The claim and the command share the
/// request's wait and deadline.
pub async fn submit<C: WireRecord>(
    app: &AppState,
    submission: Submission<'_, C>,
    command_id: String,
) -> Result<Submitted, ApiError> {
    let started = std::time::Instant::now();
    let wait = app.command_wait();
    let deadline = chrono::Utc::now() + wait + Duration::from_secs(5);
    let request_hash = submission
        .headers
        .idempotency_key
        .as_ref()
        .map(|_| request_hash(&submission.route, submission.body));
    if let (Some(key), Some(hash)) = (&submission.headers.idempotency_key, &request_hash) {
        claim_key(app, &submission, key, hash, deadline).await?;
    }
    let envelope = envelope(
        app,
        &submission,
        Addressed {
            command_id: command_id.clone(),
            command_type: submission.command.event_type(),
            aggregate_id: submission.aggregate_id.clone(),
            request_hash,
            expected_version: submission.headers.expected_version,
            deadline,
        },
    );
    let remaining = wait.saturating_sub(started.elapsed()).max(LEAST_WAIT);
    let reply = send(
        app,
        submission.kind,
        &envelope,
        &submission.command,
        remaining,
    )
    .await?;
    let Some(reply) = reply else {
        return Ok(Submitted::Pending { command_id });
    };
    if reply.outcome != ReplyOutcome::Accepted {
        return Err(ApiError::from_reply(&reply));
    }
    let mut token = ConsistencyToken::default();
    for position in &reply.positions {
        token.include(submission.kind, position.partition, position.offset);
    }
    Ok(Submitted::Done {
        token: token.encode(app.token_key()),
        reply: Box::new(reply),
    })
}

/// Claims the caller's `key` for this request (its route and body, by `hash`) on the key's own
/// partition of the idempotency-keys log. The first claim appends `KeyClaimed`; the same
/// request again is answered from the log and goes on; another request is refused with
/// "idempotency-key-reused" (422). A claim whose answer did not arrive is an unknown outcome:
/// the command was not sent, and a retry with the same key is safe.
async fn claim_key<C>(
    app: &AppState,
    submission: &Submission<'_, C>,
    key: &str,
    hash: &str,
    deadline: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let key_id = key_id(submission.caller, key);
    let requested_at_ms = chrono::Utc::now().timestamp_millis();
    let window = i64::try_from(app.command_window().duration().as_millis()).unwrap_or(i64::MAX);
    let claim = KeyCommand::Claim {
        key_id,
        route: submission.route.clone(),
        requested_at_ms,
        expires_at_ms: requested_at_ms.saturating_add(window),
    };
    let envelope = envelope(
        app,
        submission,
        Addressed {
            command_id: claim_id(key_id, hash),
            command_type: claim.event_type(),
            aggregate_id: key_id.to_string(),
            request_hash: Some(hash.to_owned()),
            // If-Match is about the request's aggregate, not the key.
            expected_version: None,
            deadline,
        },
    );
    let wait = app.command_wait();
    match send(app, AggregateKind::IdempotencyKey, &envelope, &claim, wait).await? {
        Some(reply) if reply.outcome == ReplyOutcome::Accepted => Ok(()),
        Some(reply) => Err(ApiError::from_reply(&reply)),
        None => Err(ApiError::OutcomeUnknown),
    }
}

/// What names one command of a request.
struct Addressed<'t> {
    command_id: String,
    command_type: &'t str,
    aggregate_id: String,
    request_hash: Option<String>,
    expected_version: Option<Version>,
    deadline: chrono::DateTime<chrono::Utc>,
}

/// The envelope of a command sent on behalf of the request in `submission`.
fn envelope<C>(
    app: &AppState,
    submission: &Submission<'_, C>,
    addressed: Addressed<'_>,
) -> CommandEnvelope {
    let actor = Actor {
        subject: submission.caller.subject.clone(),
        role: submission.caller.role().to_owned(),
    };
    let trace = Trace {
        correlation_id: submission.headers.correlation_id.clone(),
        causation_id: addressed.command_id.clone(),
        traceparent: submission.headers.traceparent.clone(),
    };
    CommandEnvelope {
        expected_version: addressed.expected_version,
        request_hash: addressed.request_hash,
        deadline: Some(addressed.deadline),
        ..app.bus().envelope(
            addressed.command_id,
            addressed.command_type,
            addressed.aggregate_id,
            actor,
            trace,
        )
    }
}

/// Sends one command and waits up to `wait` for its reply (`None`: not within the wait).
async fn send<C: WireRecord>(
    app: &AppState,
    kind: AggregateKind,
    envelope: &CommandEnvelope,
    command: &C,
    wait: Duration,
) -> Result<Option<CommandReply>, ApiError> {
    app.bus()
        .send(kind, envelope, command, wait)
        .await
        .map_err(|error| match error {
            BusError::NotSent(source) => {
                tracing::warn!(error = %source, "command not accepted by the broker");
                ApiError::Unavailable("the event store is unavailable; nothing was appended".into())
            }
            BusError::OutcomeUnknown(source) => {
                tracing::warn!(error = %source, "command send failed; it may have been appended");
                ApiError::OutcomeUnknown
            }
            BusError::CircuitOpen => ApiError::Unavailable(
                "the event store is failing; nothing was appended (retry shortly)".into(),
            ),
            BusError::Encode(source) => {
                tracing::error!(error = %source, "command encoding failed");
                ApiError::Internal
            }
        })
}

/// Response headers for an accepted command.
pub fn accepted_headers(token: &str, correlation_id: &str, location: Option<String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(token) {
        headers.insert("x-consistency-token", value);
    }
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        headers.insert("x-correlation-id", value);
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(axum::http::header::LOCATION, location);
    }
    headers
}
