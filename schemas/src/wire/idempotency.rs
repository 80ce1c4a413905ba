//! Idempotency key claims on the wire (`avro/idempotency-keys/`, `avro/idempotency-key-commands/`).

use apache_avro::types::Value;
use domain::idempotency::{IdempotencyKey, KeyCommand, KeyEvent, KeyId};
use domain::Aggregate;
use serde::{Deserialize, Serialize};

use super::{from_record, parse, to_record, WireRecord};
use crate::error::DecodeError;

/// KeyClaimed v2 (`expires_at_ms` added with default null: v1 claims never expire).
#[derive(Serialize, Deserialize)]
struct Claimed {
    key_id: String,
    route: String,
    expires_at_ms: Option<i64>,
}

/// ClaimKey v2 (times added; a v1 claim, from an API that predates expiry, reads as received at
/// 0 and never expiring).
#[derive(Serialize, Deserialize)]
struct Claim {
    key_id: String,
    route: String,
    requested_at_ms: i64,
    expires_at_ms: Option<i64>,
}

impl WireRecord for KeyEvent {
    const FAMILY: &'static str = IdempotencyKey::KIND.as_str();

    fn event_type(&self) -> &'static str {
        match self {
            Self::Claimed { .. } => "KeyClaimed",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::Claimed {
                key_id,
                route,
                expires_at_ms,
            } => to_record(Claimed {
                key_id: key_id.to_string(),
                route: route.clone(),
                expires_at_ms: *expires_at_ms,
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        match event_type {
            "KeyClaimed" => {
                let r: Claimed = from_record(event_type, value)?;
                Ok(Self::Claimed {
                    key_id: parse::<KeyId>("key_id", &r.key_id)?,
                    route: r.route,
                    expires_at_ms: r.expires_at_ms,
                })
            }
            other => Err(DecodeError::UnhandledEventType(other.to_owned())),
        }
    }
}

impl WireRecord for KeyCommand {
    const FAMILY: &'static str = "idempotency-key-commands";

    fn event_type(&self) -> &'static str {
        match self {
            Self::Claim { .. } => "ClaimKey",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::Claim {
                key_id,
                route,
                requested_at_ms,
                expires_at_ms,
            } => to_record(Claim {
                key_id: key_id.to_string(),
                route: route.clone(),
                requested_at_ms: *requested_at_ms,
                expires_at_ms: Some(*expires_at_ms),
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        match event_type {
            "ClaimKey" => {
                let r: Claim = from_record(event_type, value)?;
                Ok(Self::Claim {
                    key_id: parse::<KeyId>("key_id", &r.key_id)?,
                    route: r.route,
                    requested_at_ms: r.requested_at_ms,
                    expires_at_ms: r.expires_at_ms.unwrap_or(i64::MAX),
                })
            }
            other => Err(DecodeError::UnhandledEventType(other.to_owned())),
        }
    }
}
