//! Infrastructure every service shares, so each binary stays a thin adapter.
//!
//! # Layout
//!
//! - [`config`]: Kafka settings from the environment (`KAFKA_BROKERS`, `KAFKA_TOPIC_PREFIX`).
//! - [`kafka`]: producer, consumer and admin client settings (acks=all, idempotence, murmur2
//!   partitioning, manual offset store) and topic creation.
//! - [`partitioner`]: Kafka's murmur2 partitioner, byte-for-byte the Java client's, so a
//!   service can tell which partition (and so which writer) owns an aggregate.
//! - [`topics`]: topic names, `<prefix>.<aggregate>.events` and their `.dlq` twins.
//! - [`telemetry`]: structured JSON logs via `tracing`.

pub mod config;
pub mod kafka;
pub mod partitioner;
pub mod telemetry;
pub mod topics;
