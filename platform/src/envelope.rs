//! Metadata that travels with every record as Kafka headers, so any tool can read it without
//! the Avro schemas, and so every reader can apply the log-order rule.

use chrono::{DateTime, Utc};
use domain::{AggregateKind, Version};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use thiserror::Error;
use uuid::Uuid;

pub mod names {
    pub const EVENT_ID: &str = "event-id";
    pub const EVENT_TYPE: &str = "event-type";
    pub const AGGREGATE_TYPE: &str = "aggregate-type";
    pub const AGGREGATE_ID: &str = "aggregate-id";
    pub const VERSION: &str = "aggregate-version";
    pub const PREDECESSOR: &str = "predecessor-id";
    pub const COMMAND_ID: &str = "command-id";
    pub const COMMAND_TYPE: &str = "command-type";
    pub const REQUEST_HASH: &str = "request-hash";
    pub const OCCURRED_AT: &str = "occurred-at";
    pub const CORRELATION_ID: &str = "correlation-id";
    pub const CAUSATION_ID: &str = "causation-id";
    pub const TRACEPARENT: &str = "traceparent";
    pub const REPLY_TO: &str = "reply-to";
    pub const EXPECTED_VERSION: &str = "expected-version";
    pub const ACTOR_SUB: &str = "actor-sub";
    pub const ACTOR_ROLE: &str = "actor-role";
    pub const DEADLINE: &str = "deadline";
    pub const REPLY_TICKET: &str = "reply-ticket";
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {name} has an invalid value {value:?}")]
    Invalid { name: &'static str, value: String },
}

/// A record's headers, read once (each read of librdkafka's headers is an FFI call and a
/// UTF-8 check of the key, which showed up in the projectors' profile when done per lookup).
struct HeaderView<'a>(Vec<(&'a str, Option<&'a [u8]>)>);

impl<'a> HeaderView<'a> {
    fn of(headers: Option<&'a rdkafka::message::BorrowedHeaders>) -> Self {
        Self(
            headers
                .map(|headers| headers.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default(),
        )
    }

    /// A header's value as UTF-8.
    fn find(&self, name: &'static str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| *value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn required(&self, name: &'static str) -> Result<&'a str, EnvelopeError> {
        self.find(name).ok_or(EnvelopeError::Missing(name))
    }
}

fn parsed<T: std::str::FromStr>(raw: &str, name: &'static str) -> Result<T, EnvelopeError> {
    raw.parse().map_err(|_| EnvelopeError::Invalid {
        name,
        value: raw.to_owned(),
    })
}

fn push(headers: OwnedHeaders, name: &str, value: &str) -> OwnedHeaders {
    headers.insert(Header {
        key: name,
        value: Some(value),
    })
}

/// The headers of a reply record answering the copy of a command sent by `ticket`'s wait.
pub fn reply_headers(ticket: Option<u64>) -> OwnedHeaders {
    let headers = OwnedHeaders::new_with_capacity(1);
    match ticket {
        Some(ticket) => push(headers, names::REPLY_TICKET, &ticket.to_string()),
        None => headers,
    }
}

/// The ticket a reply record names (see [`reply_headers`]); `None` when it names none or an
/// unreadable one (such a reply is then taken as about every copy, as before tickets).
pub fn reply_ticket(headers: Option<&rdkafka::message::BorrowedHeaders>) -> Option<u64> {
    HeaderView::of(headers)
        .find(names::REPLY_TICKET)
        .and_then(|raw| raw.parse().ok())
}

/// Who caused a record and why: kept across HTTP request -> command -> events -> saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Same for everything one user request caused.
    pub correlation_id: String,
    /// The id of the command or event that directly caused this record.
    pub causation_id: String,
    /// W3C trace context, when tracing is on.
    pub traceparent: Option<String>,
}

impl Trace {
    fn write(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let headers = push(headers, names::CORRELATION_ID, &self.correlation_id);
        let headers = push(headers, names::CAUSATION_ID, &self.causation_id);
        match &self.traceparent {
            Some(tp) => push(headers, names::TRACEPARENT, tp),
            None => headers,
        }
    }

    fn read(headers: &HeaderView<'_>) -> Result<Self, EnvelopeError> {
        Ok(Self {
            correlation_id: headers.required(names::CORRELATION_ID)?.to_owned(),
            causation_id: headers.required(names::CAUSATION_ID)?.to_owned(),
            traceparent: headers.find(names::TRACEPARENT).map(str::to_owned),
        })
    }
}

/// The metadata of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEnvelope {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_kind: AggregateKind,
    pub aggregate_id: String,
    pub version: Version,
    /// The event this one follows in its aggregate's chain (`None` for version 1).
    pub predecessor: Option<Uuid>,
    pub command_id: String,
    /// Hash of the HTTP request that caused it, to tell a retry from a reused idempotency key.
    pub request_hash: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub trace: Trace,
}

impl EventEnvelope {
    pub fn to_headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(12);
        headers = push(headers, names::EVENT_ID, &self.event_id.to_string());
        headers = push(headers, names::EVENT_TYPE, &self.event_type);
        headers = push(headers, names::AGGREGATE_TYPE, self.aggregate_kind.as_str());
        headers = push(headers, names::AGGREGATE_ID, &self.aggregate_id);
        headers = push(headers, names::VERSION, &self.version.to_string());
        if let Some(predecessor) = self.predecessor {
            headers = push(headers, names::PREDECESSOR, &predecessor.to_string());
        }
        headers = push(headers, names::COMMAND_ID, &self.command_id);
        if let Some(hash) = &self.request_hash {
            headers = push(headers, names::REQUEST_HASH, hash);
        }
        headers = push(headers, names::OCCURRED_AT, &self.occurred_at.to_rfc3339());
        self.trace.write(headers)
    }

    pub fn from_headers(
        headers: Option<&rdkafka::message::BorrowedHeaders>,
    ) -> Result<Self, EnvelopeError> {
        let headers = &HeaderView::of(headers);
        let occurred_at = headers.required(names::OCCURRED_AT)?;
        Ok(Self {
            event_id: parsed(headers.required(names::EVENT_ID)?, names::EVENT_ID)?,
            event_type: headers.required(names::EVENT_TYPE)?.to_owned(),
            aggregate_kind: parsed(
                headers.required(names::AGGREGATE_TYPE)?,
                names::AGGREGATE_TYPE,
            )?,
            aggregate_id: headers.required(names::AGGREGATE_ID)?.to_owned(),
            version: Version::new(parsed(headers.required(names::VERSION)?, names::VERSION)?),
            predecessor: headers
                .find(names::PREDECESSOR)
                .map(|raw| parsed(raw, names::PREDECESSOR))
                .transpose()?,
            command_id: headers.required(names::COMMAND_ID)?.to_owned(),
            request_hash: headers.find(names::REQUEST_HASH).map(str::to_owned),
            occurred_at: DateTime::parse_from_rfc3339(occurred_at)
                .map_err(|_| EnvelopeError::Invalid {
                    name: names::OCCURRED_AT,
                    value: occurred_at.to_owned(),
                })?
                .with_timezone(&Utc),
            trace: Trace::read(headers)?,
        })
    }
}

/// The metadata of one command on a commands topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEnvelope {
    /// Deterministic for retries (idempotency key, saga step), random otherwise.
    pub command_id: String,
    pub command_type: String,
    pub aggregate_id: String,
    /// The requester's reply key (see `command-api`'s bus); `None`: nobody waits.
    pub reply_to: Option<String>,
    /// Which of the requester's waits sent this copy of the command. Several requests may
    /// send the same command id (a retry while the first attempt still waits); an answer that
    /// appended nothing is about its own copy only, and goes back to that wait alone.
    pub reply_ticket: Option<u64>,
    /// `If-Match`: the version the caller believes the aggregate is at.
    pub expected_version: Option<Version>,
    pub request_hash: Option<String>,
    pub actor: Actor,
    /// Past this instant the requester has given up (and answered its caller 503): the writer
    /// must not act on it any more. `None` for requesters that never give up (the saga).
    pub deadline: Option<DateTime<Utc>>,
    pub trace: Trace,
}

/// Who issued a command: a JWT subject and role, or the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub subject: String,
    pub role: String,
}

impl CommandEnvelope {
    pub fn to_headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(11);
        headers = push(headers, names::COMMAND_ID, &self.command_id);
        headers = push(headers, names::COMMAND_TYPE, &self.command_type);
        headers = push(headers, names::AGGREGATE_ID, &self.aggregate_id);
        if let Some(reply_to) = &self.reply_to {
            headers = push(headers, names::REPLY_TO, reply_to);
        }
        if let Some(ticket) = self.reply_ticket {
            headers = push(headers, names::REPLY_TICKET, &ticket.to_string());
        }
        if let Some(expected) = self.expected_version {
            headers = push(headers, names::EXPECTED_VERSION, &expected.to_string());
        }
        if let Some(hash) = &self.request_hash {
            headers = push(headers, names::REQUEST_HASH, hash);
        }
        headers = push(headers, names::ACTOR_SUB, &self.actor.subject);
        headers = push(headers, names::ACTOR_ROLE, &self.actor.role);
        if let Some(deadline) = self.deadline {
            headers = push(headers, names::DEADLINE, &deadline.to_rfc3339());
        }
        self.trace.write(headers)
    }

    pub fn from_headers(
        headers: Option<&rdkafka::message::BorrowedHeaders>,
    ) -> Result<Self, EnvelopeError> {
        let headers = &HeaderView::of(headers);
        Ok(Self {
            command_id: headers.required(names::COMMAND_ID)?.to_owned(),
            command_type: headers.required(names::COMMAND_TYPE)?.to_owned(),
            aggregate_id: headers.required(names::AGGREGATE_ID)?.to_owned(),
            reply_to: headers.find(names::REPLY_TO).map(str::to_owned),
            // Routing only: an unreadable ticket is read as none (the answer then goes to
            // every wait for the command, as before tickets), never a refused command.
            reply_ticket: headers
                .find(names::REPLY_TICKET)
                .and_then(|raw| raw.parse().ok()),
            expected_version: headers
                .find(names::EXPECTED_VERSION)
                .map(|raw| parsed(raw, names::EXPECTED_VERSION).map(Version::new))
                .transpose()?,
            request_hash: headers.find(names::REQUEST_HASH).map(str::to_owned),
            actor: Actor {
                subject: headers.required(names::ACTOR_SUB)?.to_owned(),
                role: headers.required(names::ACTOR_ROLE)?.to_owned(),
            },
            deadline: headers
                .find(names::DEADLINE)
                .map(|raw| {
                    DateTime::parse_from_rfc3339(raw)
                        .map(|d| d.with_timezone(&Utc))
                        .map_err(|_| EnvelopeError::Invalid {
                            name: names::DEADLINE,
                            value: raw.to_owned(),
                        })
                })
                .transpose()?,
            trace: Trace::read(headers)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Message, OwnedMessage, Timestamp};

    fn borrowed(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    }

    fn event() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: "OrderPlaced".into(),
            aggregate_kind: AggregateKind::Order,
            aggregate_id: "o-1".into(),
            version: Version::new(2),
            predecessor: Some(Uuid::now_v7()),
            command_id: "cmd".into(),
            request_hash: Some("abc".into()),
            occurred_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
            trace: Trace {
                correlation_id: "corr".into(),
                causation_id: "cause".into(),
                traceparent: None,
            },
        }
    }

    #[test]
    fn event_envelopes_round_trip_through_headers() {
        let envelope = event();
        let message = borrowed(envelope.to_headers());
        let headers = message.headers().map(|h| h.as_borrowed());
        assert_eq!(EventEnvelope::from_headers(headers), Ok(envelope));
    }

    #[test]
    fn a_missing_or_bad_header_is_a_typed_error() {
        let message = borrowed(OwnedHeaders::new());
        assert_eq!(
            EventEnvelope::from_headers(message.headers().map(|h| h.as_borrowed())),
            Err(EnvelopeError::Missing(names::OCCURRED_AT))
        );
        // A present but unparsable version.
        let only_bad = OwnedHeaders::new()
            .insert(Header {
                key: names::VERSION,
                value: Some("zero"),
            })
            .insert(Header {
                key: names::OCCURRED_AT,
                value: Some("2026-11-22T10:00:00Z"),
            })
            .insert(Header {
                key: names::EVENT_ID,
                value: Some("00000000-0000-0000-0000-000000000000"),
            })
            .insert(Header {
                key: names::EVENT_TYPE,
                value: Some("X"),
            })
            .insert(Header {
                key: names::AGGREGATE_TYPE,
                value: Some("orders"),
            })
            .insert(Header {
                key: names::AGGREGATE_ID,
                value: Some("o"),
            });
        let message = borrowed(only_bad);
        assert_eq!(
            EventEnvelope::from_headers(message.headers().map(|h| h.as_borrowed())),
            Err(EnvelopeError::Invalid {
                name: names::VERSION,
                value: "zero".into()
            })
        );
    }

    #[test]
    fn command_envelopes_round_trip_through_headers() {
        let envelope = CommandEnvelope {
            command_id: "k".into(),
            command_type: "PlaceOrder".into(),
            aggregate_id: "o-1".into(),
            reply_to: Some("instance-1".into()),
            reply_ticket: Some(7),
            expected_version: Some(Version::new(3)),
            request_hash: None,
            actor: Actor {
                subject: "c-1".into(),
                role: "customer".into(),
            },
            deadline: Some(
                DateTime::parse_from_rfc3339("2026-11-22T10:00:05.5Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            trace: Trace {
                correlation_id: "corr".into(),
                causation_id: "cause".into(),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            },
        };
        let message = borrowed(envelope.to_headers());
        assert_eq!(
            CommandEnvelope::from_headers(message.headers().map(|h| h.as_borrowed())),
            Ok(envelope)
        );
    }
}
