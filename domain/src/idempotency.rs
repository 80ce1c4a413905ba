//! Idempotency keys: one aggregate per (caller, key), claimed by the first request that uses
//! the key. A key is global: whatever aggregate or partition a request names, its key is
//! claimed here first, so the same key sent later with another request is refused wherever
//! that request would land. Each request's claim is a command of its own (its id names the key
//! and the request), so the write path's per-command deduplication answers the same request's
//! claim again from the log, and any other request's claim reaches `decide`, which refuses it.
//!
//! A claim lasts the deployment's idempotency window (a day by default, as the major payment
//! APIs keep keys): a request claiming the key after its claim expired claims it afresh, as if
//! the key were new. Times are milliseconds since the epoch, stamped by the API that took the
//! request.

use std::fmt;

use uuid::Uuid;

use crate::aggregate::{Aggregate, AggregateKind};
use crate::values::InvalidValue;
use crate::DomainError;

/// The id of one caller's key: a UUID derived from the caller and the key they sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Uuid);

impl KeyId {
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
}

impl TryFrom<&str> for KeyId {
    type Error = InvalidValue;
    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| InvalidValue::BadUuid)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyCommand {
    /// Claims the key for the request on `route` (`METHOD path`, kept for operators), received
    /// at `requested_at_ms`; the claim lasts until `expires_at_ms`.
    Claim {
        key_id: KeyId,
        route: String,
        requested_at_ms: i64,
        expires_at_ms: i64,
    },
}

impl KeyCommand {
    pub fn key_id(&self) -> KeyId {
        match self {
            Self::Claim { key_id, .. } => *key_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyEvent {
    /// `expires_at_ms` is `None` for claims recorded before keys expired: those never do.
    Claimed {
        key_id: KeyId,
        route: String,
        expires_at_ms: Option<i64>,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum KeyState {
    #[default]
    Unclaimed,
    Claimed {
        route: String,
        expires_at_ms: Option<i64>,
    },
}

/// The idempotency key aggregate.
#[derive(Debug)]
pub enum IdempotencyKey {}

impl Aggregate for IdempotencyKey {
    const KIND: AggregateKind = AggregateKind::IdempotencyKey;
    type State = KeyState;
    type Command = KeyCommand;
    type Event = KeyEvent;

    /// A key is claimed once per window. The claiming request's own claim, sent again within
    /// the window, is answered from the log before `decide` is asked, so a claim of a claimed
    /// key here is another request's (or one that came back after the claim expired).
    fn decide(state: &KeyState, command: KeyCommand) -> Result<Vec<KeyEvent>, DomainError> {
        let KeyCommand::Claim {
            key_id,
            route,
            requested_at_ms,
            expires_at_ms,
        } = command;
        let free = match state {
            KeyState::Unclaimed => true,
            KeyState::Claimed {
                expires_at_ms: expires,
                ..
            } => expires.is_some_and(|expires| requested_at_ms >= expires),
        };
        if !free {
            return Err(DomainError::IdempotencyKeyReused);
        }
        Ok(vec![KeyEvent::Claimed {
            key_id,
            route,
            expires_at_ms: Some(expires_at_ms),
        }])
    }

    fn evolve(_state: KeyState, event: &KeyEvent) -> KeyState {
        match event {
            KeyEvent::Claimed {
                route,
                expires_at_ms,
                ..
            } => KeyState::Claimed {
                route: route.clone(),
                expires_at_ms: *expires_at_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scenario;

    const DAY: i64 = 86_400_000;

    fn key() -> KeyId {
        KeyId::from_uuid(Uuid::from_u128(7))
    }

    fn claim_at(requested_at_ms: i64) -> KeyCommand {
        KeyCommand::Claim {
            key_id: key(),
            route: "POST /v1/customers".into(),
            requested_at_ms,
            expires_at_ms: requested_at_ms + DAY,
        }
    }

    fn claimed(route: &str, expires_at_ms: Option<i64>) -> KeyEvent {
        KeyEvent::Claimed {
            key_id: key(),
            route: route.into(),
            expires_at_ms,
        }
    }

    #[test]
    fn an_unused_key_is_claimed() {
        let state = Scenario::<IdempotencyKey>::given(vec![])
            .when(claim_at(0))
            .then(vec![claimed("POST /v1/customers", Some(DAY))]);
        assert_eq!(
            state,
            KeyState::Claimed {
                route: "POST /v1/customers".into(),
                expires_at_ms: Some(DAY),
            }
        );
    }

    #[test]
    fn a_claimed_key_cannot_be_claimed_by_another_request_within_its_window() {
        Scenario::<IdempotencyKey>::given(vec![claimed("POST /v1/orders", Some(DAY))])
            .when(claim_at(DAY - 1))
            .then_error(DomainError::IdempotencyKeyReused);
    }

    #[test]
    fn an_expired_claim_leaves_the_key_free_for_a_new_request() {
        Scenario::<IdempotencyKey>::given(vec![claimed("POST /v1/orders", Some(DAY))])
            .when(claim_at(DAY))
            .then(vec![claimed("POST /v1/customers", Some(2 * DAY))]);
    }

    #[test]
    fn a_claim_recorded_before_keys_expired_never_expires() {
        Scenario::<IdempotencyKey>::given(vec![claimed("POST /v1/orders", None)])
            .when(claim_at(100 * DAY))
            .then_error(DomainError::IdempotencyKeyReused);
    }
}
