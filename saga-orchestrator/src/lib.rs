//! `saga-orchestrator`: runs the order saga (issue #5, guarantee 8).
//!
//! The saga is an event-sourced aggregate hosted by the command path like any other
//! (`order-sagas.commands` -> `order-sagas.events`, one writer per partition, the log-order
//! rule): its decisions are `domain::saga`, pure and tested. This process only translates:
//!
//! - `OrderPlaced` / `OrderCancellationRequested` (orders.events) -> saga inputs;
//! - saga events that request a step -> participant commands (reserve / release stock and
//!   credit, approve / reject / cancel the order) through `command_bus::CommandBus`;
//! - participants' replies -> saga inputs (`domain::saga::reply_for`);
//! - steps awaited past `SAGA_STEP_TIMEOUT_MS` -> `DeadlinePassed` inputs.
//!
//! Durability: saga state is the saga's topic; offsets are committed only once everything an
//! event caused is done, and every command id is derived from what caused it (saga id + step +
//! attempt, see [`ids`]), so a killed orchestrator redoes unfinished work and the writers answer
//! repeats from the log: nothing is reserved or released twice.
//!
//! # Layout
//!
//! - [`startup`]: `Application::build` / `run_until`, the start/stop shape every service shares
//!   (topics, bus, group, health and metrics server).
//! - [`config`]: settings from the environment.
//! - `saga_group`: group membership; a `saga_partition` worker per partition.
//! - `saga_partition`: one partition's sagas: take over, fold and act (deadlines, commits and
//!   metrics through the modules below).
//! - `takeover`: where a worker starts: the order and saga writers' snapshots of its partition
//!   (decision 0010), or offset 0 where there is none.
//! - `pace`: which of the two topics to pause so a replay reads both at one pace in log time.
//! - `settled`: finished sagas on local disk (decision 0011), taken back into memory when an
//!   event of theirs arrives (a cancellation after approval, a late reservation).
//! - `saga_metrics`: the saga gauges (kept as events are read) and counters.
//! - `saga_context`: what every partition worker of the process shares (settings, the group
//!   member, the sender, dead letters).
//! - `offset_book`: which offsets a worker may commit (pure, unit-tested).
//! - `deadlines`: when a saga's awaited steps are past their deadline (pure, unit-tested).
//! - `timers`: per-saga timers ordered by due time (deadlines, stuck checks), so no tick
//!   scans every saga (pure, unit-tested).
//! - `sender`: participant commands and saga inputs through the command path, with retries.
//! - [`translate`]: what order events and replies mean to the saga (pure).
//! - [`ids`]: deterministic command ids.

pub mod config;
mod deadlines;
pub mod ids;
mod offset_book;
mod pace;
mod saga_context;
mod saga_group;
mod saga_metrics;
mod saga_partition;
mod sender;
mod settled;
pub mod startup;
mod takeover;
mod timers;
pub mod translate;

pub use sender::ACTOR_SUBJECT;

/// The process: settings from the environment, run until SIGTERM / SIGINT, stop cleanly
/// (workers commit what they finished), flush telemetry.
pub async fn run_from_env() -> anyhow::Result<()> {
    use anyhow::Context;
    platform::telemetry::run_traced("saga-orchestrator", async {
        let settings = config::Settings::from_env().context("reading configuration")?;
        let app = startup::Application::build(settings)
            .await
            .context("starting the saga orchestrator")?;
        app.run_until(platform::shutdown::signal())
            .await
            .context("serving")
    })
    .await
}
