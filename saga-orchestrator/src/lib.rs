//! `saga-orchestrator`: runs the order saga.
//!
//! # Layout
//!
//! Not built yet: issue #5. The decisions are already in `domain::saga` (pure, tested); this
//! crate will record saga events, send the `SagaCommand`s through `command_api::bus::CommandBus`
//! with their deterministic keys, and turn replies into saga inputs with `domain::saga::reply_for`.
