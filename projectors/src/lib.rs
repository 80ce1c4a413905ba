//! `projectors`: consumers that fold events into PostgreSQL read models with exactly-once
//! effect.
//!
//! Each projection is a consumer group member on its events topic. A batch of events is applied
//! in one transaction together with the projection's offsets, so a crash at any instant loses
//! nothing and applies nothing twice. Every event is judged by the log-order rule against its
//! row's chain head (version + last event id): inert events from a writer race are skipped and
//! recorded, version gaps are reported. An event that cannot be decoded or folded goes to
//! `<topic>.dlq`, and its aggregate is parked (later events recorded, not applied) while every
//! other aggregate keeps flowing, until an operator redrives the dead letter (once its cause is
//! fixed) or skips it for good (a skip every generation and rebuild honours).
//!
//! # Layout
//!
//! - the read-model schema (migrations) lives in the `read-models` crate, shared with query-api.
//! - [`projection`]: the `Projection` trait: load rows, pure fold, one UNNEST upsert.
//! - [`projections`]: `customers`, `inventory`, `orders`, `order_sagas`, and the one list of
//!   them (`ALL`, `by_name`) that running, status, rebuilds and `dlq` go through.
//! - [`applier`]: the batch transaction (offsets, log-order rule, fold, parking, dead letters,
//!   operators' durable skips), and the operators' `redrive` / `skip`. Needs no consumer.
//! - [`runner`]: the consumer loop around an applier: batching, retries, resuming from offsets.
//! - [`dead_letters`]: re-exported from `platform` (shared with the saga orchestrator).
//! - [`startup`]: `projectors run`: `Application::build` / `run_until`, the start/stop shape
//!   every service shares (health and metrics on `PROJECTORS_ADDR`).
//! - [`rebuild`]: blue/green `projectors rebuild <projection>`: fill the next generation from
//!   offset 0 while the live one serves, then switch the view in one transaction.
//! - [`cli`]: `projectors status`, `projectors dlq list|redrive|skip`.

pub mod applier;
pub mod cli;
pub use platform::dead_letters;
pub mod projection;
pub mod projections;
pub mod rebuild;
pub mod runner;
pub mod startup;

/// `projectors run` as the binary runs it: settings from the environment, every projection
/// until SIGTERM or SIGINT, then each commits what it applied and stops; telemetry flushed.
pub async fn run_from_env() -> anyhow::Result<()> {
    use anyhow::Context;
    platform::telemetry::run_traced("projectors", async {
        let settings = startup::Settings::from_env().context("reading configuration")?;
        let app = startup::Application::build(settings)
            .await
            .context("starting projectors")?;
        app.run_until(platform::shutdown::signal())
            .await
            .context("serving")
    })
    .await
}
