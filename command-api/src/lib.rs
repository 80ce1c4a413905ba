//! `command-api`: HTTP commands in, domain events out, with per-aggregate optimistic
//! concurrency on Kafka.
//!
//! Every write takes one path. A handler validates the request into a domain command and puts it
//! on its aggregate's commands topic (keyed by aggregate id) through the [`bus::CommandBus`].
//! The writer that owns that partition (one per partition, via the `command-writers` consumer
//! group, see [`processor`]) decides it against the aggregate's current state, appends the events
//! (acks=all, idempotent producer), reads them back, and replies only once the log shows them
//! accepted by the log-order rule. The handler answers with the new version and a consistency
//! token, or waits no longer than `COMMAND_WAIT_MS` and answers 202.
//!
//! # Layout
//!
//! - [`startup`]: `Application::build` / `run_until` (topics, producer, bus, writers, router).
//! - [`config`]: typed settings from the environment.
//! - [`routes`]: one module per endpoint group, and `submit`, the path every handler shares.
//! - [`dto`]: request/response bodies and their validation into domain commands.
//! - [`json`]: the JSON body extractor; `auth` is `platform::auth` (shared with query-api).
//! - [`problem`]: the one place errors become problem+json.
//! - [`bus`]: re-exported from the `command-bus` crate, the requester side of the command path
//!   that the saga orchestrator uses too (its own reply key, deterministic command ids,
//!   `actor.role = "system"`), so every write in the system goes through the partition writers.
//! - [`processor`]: the consumer group (polled on its own thread), the pure partition model
//!   (the decision for each command and the model to and from its snapshot, unit-tested without
//!   a broker) and the partition writers (fencing, restoring from the snapshot, transactions,
//!   answers).
//! - [`openapi`]: the OpenAPI document served at `/openapi.json`.

pub use command_bus::bus;
pub use platform::auth;
pub mod config;
pub mod dto;
pub mod json;
pub mod openapi;
pub mod problem;
pub mod processor;
pub mod routes;
pub mod startup;

/// The service as its binary runs it: settings from the environment, serve until SIGTERM or
/// SIGINT, stop cleanly (finish in-flight requests and batches, commit), flush telemetry.
pub async fn run_from_env() -> anyhow::Result<()> {
    use anyhow::Context;
    platform::telemetry::run_traced("command-api", async {
        let settings = config::Settings::from_env().context("reading configuration")?;
        let app = startup::Application::build(settings)
            .await
            .context("starting command-api")?;
        app.run_until(platform::shutdown::signal())
            .await
            .context("serving")
    })
    .await
}
