//! Idempotency key claims on the wire (`avro/idempotency-keys/`, `avro/idempotency-key-commands/`).

use apache_avro::types::Value;
use domain::idempotency::{IdempotencyKey, KeyCommand, KeyEvent, KeyId};
use domain::Aggregate;
use serde::{Deserialize, Serialize};

use super::{from_record, parse, to_record, WireRecord};
use crate::error::DecodeError;

/// KeyClaimed and ClaimKey have the same shape.
#[derive(Serialize, Deserialize)]
struct Claim {
    key_id: String,
    route: String,
}

fn claim_record(key_id: KeyId, route: &str) -> Result<Value, apache_avro::Error> {
    to_record(Claim {
        key_id: key_id.to_string(),
        route: route.to_owned(),
    })
}

/// The key and route of a `KeyClaimed` or `ClaimKey` record.
fn claim_of(event_type: &str, value: &Value) -> Result<(KeyId, String), DecodeError> {
    let r: Claim = from_record(event_type, value)?;
    Ok((parse::<KeyId>("key_id", &r.key_id)?, r.route))
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
            Self::Claimed { key_id, route } => claim_record(*key_id, route),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        match event_type {
            "KeyClaimed" => {
                let (key_id, route) = claim_of(event_type, value)?;
                Ok(Self::Claimed { key_id, route })
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
            Self::Claim { key_id, route } => claim_record(*key_id, route),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        match event_type {
            "ClaimKey" => {
                let (key_id, route) = claim_of(event_type, value)?;
                Ok(Self::Claim { key_id, route })
            }
            other => Err(DecodeError::UnhandledEventType(other.to_owned())),
        }
    }
}
