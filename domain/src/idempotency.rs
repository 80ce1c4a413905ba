//! Idempotency keys: one aggregate per (caller, key), claimed by the first request that uses
//! the key. A key is global: whatever aggregate or partition a request names, its key is
//! claimed here first, so the same key sent later with another request is refused wherever
//! that request would land. Each request's claim is a command of its own (its id names the key
//! and the request), so the write path's per-command deduplication answers the same request's
//! claim again from the log, and any other request's claim reaches `decide`, which refuses it.

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
    /// Claims the key for the request on `route` (`METHOD path`, kept for operators).
    Claim { key_id: KeyId, route: String },
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
    Claimed { key_id: KeyId, route: String },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum KeyState {
    #[default]
    Unclaimed,
    Claimed {
        route: String,
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

    /// A key is claimed once. The claiming request's own claim, sent again, is answered from
    /// the log before `decide` is asked, so a claim of a claimed key here is another request's.
    fn decide(state: &KeyState, command: KeyCommand) -> Result<Vec<KeyEvent>, DomainError> {
        match (state, command) {
            (KeyState::Unclaimed, KeyCommand::Claim { key_id, route }) => {
                Ok(vec![KeyEvent::Claimed { key_id, route }])
            }
            (KeyState::Claimed { .. }, KeyCommand::Claim { .. }) => {
                Err(DomainError::IdempotencyKeyReused)
            }
        }
    }

    fn evolve(state: KeyState, event: &KeyEvent) -> KeyState {
        match (state, event) {
            (KeyState::Unclaimed, KeyEvent::Claimed { route, .. }) => KeyState::Claimed {
                route: route.clone(),
            },
            (state, _) => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scenario;

    fn key() -> KeyId {
        KeyId::from_uuid(Uuid::from_u128(7))
    }

    fn claim() -> KeyCommand {
        KeyCommand::Claim {
            key_id: key(),
            route: "POST /v1/customers".into(),
        }
    }

    #[test]
    fn an_unused_key_is_claimed() {
        let state = Scenario::<IdempotencyKey>::given(vec![])
            .when(claim())
            .then(vec![KeyEvent::Claimed {
                key_id: key(),
                route: "POST /v1/customers".into(),
            }]);
        assert_eq!(
            state,
            KeyState::Claimed {
                route: "POST /v1/customers".into()
            }
        );
    }

    #[test]
    fn a_claimed_key_cannot_be_claimed_by_another_request() {
        Scenario::<IdempotencyKey>::given(vec![KeyEvent::Claimed {
            key_id: key(),
            route: "POST /v1/orders".into(),
        }])
        .when(claim())
        .then_error(DomainError::IdempotencyKeyReused);
    }
}
