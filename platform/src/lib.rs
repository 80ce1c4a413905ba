//! Infrastructure every service shares, so each binary stays a thin adapter.
//!
//! # Layout
//!
//! - [`auth`]: bearer JWT (HS256), roles, per-subject rate limiting, the `Caller` extractor.
//! - [`config`]: Kafka settings from the environment (`KAFKA_BROKERS`, `KAFKA_TOPIC_PREFIX`,
//!   `KAFKA_REPLICATION_FACTOR`, `KAFKA_MIN_INSYNC_REPLICAS`).
//! - [`kafka`]: producer, consumer and admin client settings (acks=all, idempotence, murmur2
//!   partitioning, manual offset store).
//! - [`polled_producer`]: a producer whose delivery reports complete futures, without the
//!   busy loop rdkafka's `FutureProducer` runs in every producer's polling thread.
//! - [`partitioner`]: Kafka's murmur2 partitioner, byte-for-byte the Java client's, so a
//!   service can tell which partition (and so which writer) owns an aggregate.
//! - [`topics`]: topic names, `<prefix>.<aggregate>.events` and their `.dlq` twins, and how
//!   long the broker keeps each topic's records.
//! - [`topic_setup`]: creates missing topics with that retention and the deployment's
//!   replication; refuses to start on a source-of-truth topic that would delete records.
//! - [`log_end`]: where a partition's readable records end when transaction markers and aborted
//!   records take offsets too: read to the end by position, compare a checkpoint with the end
//!   by what lies between.
//! - [`envelope`]: event and command metadata carried in Kafka headers (ids, version,
//!   predecessor, correlation/causation, trace context).
//! - [`log_order`]: the rule every reader applies to decide which events count: an event is
//!   accepted only if it extends its aggregate's accepted chain.
//! - [`consistency`]: the consistency token (Kafka positions) that gives read-your-writes,
//!   signed with a key derived from the JWT secret and bounded in size.
//! - [`dead_letters`]: `<topic>.dlq` records with headers naming the source and the error,
//!   for every consumer (projections, the saga orchestrator).
//! - [`http`]: request metrics middleware and the OpenAPI bearer scheme, shared by both APIs.
//! - [`telemetry`]: JSON logs, OpenTelemetry traces over OTLP with the W3C context carried in
//!   Kafka headers, and the Prometheus recorder.
//! - [`resilience`]: circuit breakers and retry backoff with jitter for outbound calls.
//! - [`shutdown`]: the SIGTERM/SIGINT future every binary stops on.
//! - [`runtime`]: long work on the tokio runtime that leaves its threads to the other tasks:
//!   readers of a backlog take turns, takeovers check snapshots in place (decision 0014).

pub mod auth;
pub mod config;
pub mod consistency;
pub mod dead_letters;
pub mod envelope;
pub mod http;
pub mod kafka;
pub mod log_end;
pub mod log_order;
pub mod open_transactions;
pub mod partitioner;
pub mod path_params;
pub mod polled_producer;
pub mod resilience;
pub mod runtime;
pub mod shutdown;
pub mod spill;
pub mod telemetry;
pub mod topic_setup;
pub mod topics;
