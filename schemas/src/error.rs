//! Why bytes could not become an event, or an event bytes. Consumers dead-letter on
//! [`DecodeError`]; it never panics.

use domain::values::InvalidValue;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("record is {len} bytes, shorter than the 10-byte single-object header")]
    TooShort { len: usize },
    #[error("record does not start with the Avro single-object marker C3 01")]
    NotSingleObject,
    #[error("no known schema has fingerprint {fingerprint}")]
    UnknownFingerprint { fingerprint: String },
    #[error("record belongs to {found}, expected {expected}")]
    WrongAggregate {
        expected: &'static str,
        found: &'static str,
    },
    #[error("record body does not match schema {event_type} v{version}")]
    Body {
        event_type: &'static str,
        version: u32,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("record of type {event_type} does not have the expected shape")]
    Shape {
        event_type: String,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{} trailing bytes after the record body", .count)]
    TrailingBytes { count: usize },
    #[error("field {field} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        reason: InvalidValue,
    },
    #[error("field {field} has an unknown value {value:?}")]
    UnknownValue { field: &'static str, value: String },
    #[error("event type {0} is not handled by this reader")]
    UnhandledEventType(String),
}

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("no schema registered for event type {0}")]
    NoSchema(&'static str),
    #[error("event {event_type} does not fit its schema")]
    Avro {
        event_type: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
}
