//! What every aggregate is: a pure `decide` and a rule-free `evolve`, plus the version
//! bookkeeping that makes per-aggregate versions gap-free.

use std::fmt;

use crate::DomainError;

/// The kinds of aggregate, one Kafka topic each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    Customer,
    InventoryItem,
    Order,
    /// The order saga's own event stream (saga id = order id).
    OrderSaga,
    /// Idempotency keys claimed by requests (key id = caller + key).
    IdempotencyKey,
}

impl AggregateKind {
    pub const ALL: [AggregateKind; 5] = [
        Self::Customer,
        Self::InventoryItem,
        Self::Order,
        Self::OrderSaga,
        Self::IdempotencyKey,
    ];

    /// Stable name used in topic names and envelope headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customers",
            Self::InventoryItem => "inventory",
            Self::Order => "orders",
            Self::OrderSaga => "order-sagas",
            Self::IdempotencyKey => "idempotency-keys",
        }
    }
}

impl AggregateKind {
    /// How messages name one aggregate of this kind.
    pub const fn noun(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::InventoryItem => "inventory item",
            Self::Order => "order",
            Self::OrderSaga => "order saga",
            Self::IdempotencyKey => "idempotency key",
        }
    }
}

impl std::str::FromStr for AggregateKind {
    type Err = UnknownAggregateKind;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == raw)
            .ok_or_else(|| UnknownAggregateKind(raw.to_owned()))
    }
}

/// A string that names no aggregate kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown aggregate kind {0:?}")]
pub struct UnknownAggregateKind(pub String);

impl fmt::Display for AggregateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An aggregate's version: the number of events it has accepted. 0 means "does not exist yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(u64);

impl Version {
    pub const NONE: Version = Version(0);

    pub fn new(value: u64) -> Self {
        Self(value)
    }
    pub fn get(self) -> u64 {
        self.0
    }
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A consistency boundary. `decide` holds every rule and has no side effects; `evolve` only
/// records what an event says and never fails, so replaying history can never be refused.
pub trait Aggregate {
    const KIND: AggregateKind;
    type State: Default + Clone + fmt::Debug + PartialEq;
    type Command: fmt::Debug;
    type Event: Clone + fmt::Debug + PartialEq;

    fn decide(state: &Self::State, command: Self::Command)
        -> Result<Vec<Self::Event>, DomainError>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}

/// An event together with the aggregate version it creates.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<E> {
    pub version: Version,
    pub event: E,
}

/// An aggregate's state at a known version.
#[derive(Debug, PartialEq)]
pub struct Current<A: Aggregate> {
    pub state: A::State,
    pub version: Version,
}

// Derived `Clone` would demand `A: Clone`; only the state needs to be.
impl<A: Aggregate> Clone for Current<A> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            version: self.version,
        }
    }
}

impl<A: Aggregate> Default for Current<A> {
    fn default() -> Self {
        Self {
            state: A::State::default(),
            version: Version::NONE,
        }
    }
}

impl<A: Aggregate> Current<A> {
    /// Decides a command and numbers the resulting events from the next version on, so
    /// versions stay gap-free: `v+1, v+2, ...`.
    pub fn decide(&self, command: A::Command) -> Result<Vec<Versioned<A::Event>>, DomainError> {
        let events = A::decide(&self.state, command)?;
        let mut version = self.version;
        Ok(events
            .into_iter()
            .map(|event| {
                version = version.next();
                Versioned { version, event }
            })
            .collect())
    }

    /// Applies the next event. Returns `Err` (and leaves `self` unchanged) when the event is
    /// not the immediate successor: callers must never skip or repeat a version.
    pub fn apply(&mut self, event: &Versioned<A::Event>) -> Result<(), VersionGap> {
        let expected = self.version.next();
        if event.version != expected {
            return Err(VersionGap {
                expected,
                found: event.version,
            });
        }
        let state = std::mem::take(&mut self.state);
        self.state = A::evolve(state, &event.event);
        self.version = expected;
        Ok(())
    }

    /// Rebuilds the state from a history that must start at version 1 and have no gaps.
    pub fn replay<'a>(
        history: impl IntoIterator<Item = &'a Versioned<A::Event>>,
    ) -> Result<Self, VersionGap>
    where
        A::Event: 'a,
    {
        let mut current = Self::default();
        for event in history {
            current.apply(event)?;
        }
        Ok(current)
    }
}

/// An event whose version is not the successor of the aggregate's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected version {expected}, found {found}")]
pub struct VersionGap {
    pub expected: Version,
    pub found: Version,
}
