//! `saga-orchestrator [run]`: runs the order saga until SIGTERM / SIGINT.

use anyhow::Context;
use clap::{Parser, Subcommand};
use saga_orchestrator::app::Orchestrator;
use saga_orchestrator::config::Settings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "saga-orchestrator",
    about = "orderstream order saga orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the saga for this process's share of the partitions (the default).
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => {
            platform::telemetry::init("saga-orchestrator");
            let settings = Settings::from_env().context("reading configuration")?;
            let shutdown = CancellationToken::new();
            let orchestrator = Orchestrator::start(settings, shutdown.clone())
                .await
                .context("starting the saga orchestrator")?;
            platform::shutdown::signal().await;
            shutdown.cancel();
            orchestrator.stopped().await;
        }
    }
    Ok(())
}
