//! `projectors`: consumers that fold events into PostgreSQL read models.
//!
//! # Layout
//!
//! Not built yet: issue #4 (read side) adds the projections, the exactly-once offset store,
//! dead-letter topics and the `rebuild` / `dlq` / `status` CLI. Readers must apply
//! `platform::log_order` so that inert events never reach a read model.
