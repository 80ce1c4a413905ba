//! `query-api`: serves the read views.

use anyhow::Context;
use query_api::startup::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("query-api");
    let settings = Settings::from_env().context("reading configuration")?;
    let app = Application::build(settings)
        .await
        .context("starting query-api")?;
    app.run_until(platform::shutdown::signal())
        .await
        .context("serving")?;
    Ok(())
}
