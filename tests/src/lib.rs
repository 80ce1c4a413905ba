//! Scenario tests of the order saga: `tests/tests/*.rs`, read them as examples of how to test a
//! saga. Each test starts its own stack (command-api, projectors, query-api in-process, the
//! orchestrator as a real process) on its own topic prefix and database, on the broker and
//! Postgres `scripts/test` starts, and talks to it only over HTTP (and, for exactly-once
//! checks, by reading the participants' event topics).
//!
//! # Layout
//!
//! - `tests/support/`: the `Stack` and its given/when/then helpers.
//! - `tests/order_saga.rs`: every outcome of the saga, cancellations, timeouts, contention.
//! - `tests/orchestrator_crash.rs`: the orchestrator SIGKILLed after every step.
//! - `src/bin/orchestrator-under-test.rs`: the real orchestrator entry point, as a binary of
//!   this package.
