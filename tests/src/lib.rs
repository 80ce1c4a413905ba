//! Cross-service scenario tests over HTTP against the real broker and Postgres.
//!
//! # Layout
//!
//! The saga scenarios (happy path, out of stock, credit exceeded, timeouts, cancellations,
//! orchestrator crashes) arrive with issue #5, once all four services run.
