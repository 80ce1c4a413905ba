//! `query-api`: serves the read views.

use anyhow::Context;
use query_api::startup::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = platform::telemetry::init("query-api");
    let settings = Settings::from_env().context("reading configuration")?;
    let app = Application::build(settings)
        .await
        .context("starting query-api")?;
    let served = app.run_until(platform::shutdown::signal()).await;
    telemetry.shutdown().await;
    served.context("serving")?;
    Ok(())
}
