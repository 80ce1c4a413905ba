//! A given/when/then harness for aggregate rules:
//!
//! ```
//! # use domain::{testing::Scenario, inventory::*, values::*};
//! let sku = Sku::try_from("apple").unwrap();
//! let five = Quantity::try_from(5).unwrap();
//! Scenario::<InventoryItem>::given(vec![])
//!     .when(InventoryCommand::AddStock { sku: sku.clone(), quantity: five })
//!     .then(vec![InventoryEvent::StockAdded { sku, quantity: five }]);
//! ```

// A test harness reports failures by panicking, like `assert!`.
#![allow(clippy::panic)]

use std::fmt::Debug;

use crate::aggregate::{Aggregate, Current, Versioned};
use crate::DomainError;

/// A history of events, then one command, then an expectation.
#[derive(Debug)]
pub struct Scenario<A: Aggregate> {
    current: Current<A>,
}

impl<A: Aggregate> Scenario<A> {
    /// The aggregate's history, oldest first; versions are assigned 1, 2, 3 ...
    pub fn given(history: Vec<A::Event>) -> Self {
        let mut current = Current::<A>::default();
        for event in history {
            let version = current.version.next();
            // The history is numbered here, so it is always gap-free.
            let _ = current.apply(&Versioned { version, event });
        }
        Self { current }
    }

    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.current.decide(command);
        Outcome {
            before: self.current,
            result,
        }
    }
}

/// What a command produced, ready to be checked.
#[derive(Debug)]
pub struct Outcome<A: Aggregate> {
    before: Current<A>,
    result: Result<Vec<Versioned<A::Event>>, DomainError>,
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: Debug,
{
    /// Asserts the emitted events (in order) and returns the state after them.
    #[track_caller]
    pub fn then(self, expected: Vec<A::Event>) -> A::State {
        let events = match self.result {
            Ok(events) => events,
            Err(error) => panic!("expected events {expected:?}, got error {error:?}"),
        };
        let emitted: Vec<A::Event> = events.iter().map(|v| v.event.clone()).collect();
        assert_eq!(emitted, expected, "emitted events");
        let mut current = self.before;
        let first = current.version.next();
        for (offset, event) in events.iter().enumerate() {
            assert_eq!(
                event.version.get(),
                first.get() + offset as u64,
                "versions are gap-free and follow the current version"
            );
            if let Err(gap) = current.apply(event) {
                panic!("emitted events do not apply in order: {gap}");
            }
        }
        current.state
    }

    /// Asserts that the command was refused with exactly this error.
    #[track_caller]
    pub fn then_error(self, expected: DomainError) {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(error) => assert_eq!(error, expected),
        }
    }
}
