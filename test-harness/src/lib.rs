//! Test harness over the real infrastructure that `scripts/test` starts.
//!
//! Every test gets its own Kafka topic prefix and its own Postgres database (migrations applied),
//! so tests run in parallel without seeing each other's data. The broker and database come from
//! `KAFKA_BROKERS` and `DATABASE_URL`; when one is not set and a Docker-compatible engine answers,
//! from a container the harness starts ([`containers`]); with neither, the harness fails with
//! what to provide, rather than skipping silently.
//!
//! # Layout
//!
//! - [`env`]: where the infrastructure is, and the message when it is not there.
//! - [`kafka`]: [`TestKafka`], a unique topic namespace plus client helpers.
//! - [`database`]: [`TestDatabase`], a fresh database per test.
//! - [`broker`]: [`BrokerProcess`], a dedicated Apache Kafka process a test may kill, restart
//!   or put behind a fault proxy.
//! - [`proxy`]: [`FaultProxy`], a TCP proxy in front of Kafka that can swallow or hold back
//!   Produce responses.
//! - [`cut`]: [`CuttableProxy`], a TCP proxy (in front of Postgres) a test cuts and restores.
//! - [`containers`]: Kafka and Postgres started with testcontainers when the environment names
//!   neither (once per test process).

// Test support: a failed set-up should stop the test at once with a clear message.
#![allow(clippy::expect_used, clippy::panic, unreachable_pub)]

pub mod broker;
pub mod containers;
pub mod cut;
pub mod database;
pub mod env;
pub mod kafka;
pub mod proxy;

pub use broker::BrokerProcess;
pub use cut::CuttableProxy;
pub use database::TestDatabase;
pub use kafka::TestKafka;
pub use proxy::FaultProxy;

/// A short unique name for this test's resources (`t` + 12 hex digits).
pub fn unique_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..12])
}
