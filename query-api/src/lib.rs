//! `query-api`: HTTP read views over the projections' read models.
//!
//! Reads never wait unless asked: with `X-Consistency-Token` (from a command response) a request
//! is answered only once the read models include that token's events, or 504 after
//! `X-Consistency-Wait-Ms`. Tokens are signed by command-api and bounded; a request is authorized
//! before it waits, and waits are woken by the projectors' checkpoint notifications. Listings
//! are newest first with keyset cursors.
//!
//! # Layout
//!
//! - [`startup`]: settings, state, router, server: `Application::build` / `run_until`, the
//!   start/stop shape every service shares.
//! - [`routes`]: one module per view (`orders`, `customers`, `inventory`, `sagas`, `system`).
//! - [`consistency`]: the token check (signature, bounds) and the wait against the
//!   projections' stored offsets.
//! - [`checkpoints`]: the `LISTEN` task that wakes waits when a projection's checkpoint moves.
//! - [`views`]: response bodies.
//! - [`problem`]: the one place errors become problem+json.
//! - [`openapi`]: the document served at `/openapi.json`.

pub mod checkpoints;
pub mod consistency;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod startup;
pub mod views;

/// The service as its binary runs it: settings from the environment, serve until SIGTERM or
/// SIGINT, stop cleanly, flush telemetry.
pub async fn run_from_env() -> anyhow::Result<()> {
    use anyhow::Context;
    platform::telemetry::run_traced("query-api", async {
        let settings = startup::Settings::from_env().context("reading configuration")?;
        let app = startup::Application::build(settings)
            .await
            .context("starting query-api")?;
        app.run_until(platform::shutdown::signal())
            .await
            .context("serving")
    })
    .await
}
