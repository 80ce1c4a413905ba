//! `projectors [run]`, `projectors status`, `projectors dlq list [--topic T]`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::config::KafkaSettings;
use projectors::app::{self, Settings};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "projectors",
    about = "orderstream projectors: Kafka -> PostgreSQL read models"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every projection (the default).
    Run,
    /// Each projection's checkpoint and lag per partition.
    Status,
    /// Dead-letter records.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-letter records (all topics, or one source or DLQ topic).
    List {
        #[arg(long)]
        topic: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => {
            platform::telemetry::init("projectors");
            let settings = Settings::from_env().context("reading configuration")?;
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                platform::shutdown::signal().await;
                signal.cancel();
            });
            app::run(settings, shutdown)
                .await
                .context("running projections")?;
        }
        Command::Status => {
            let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
            let pool = app::connect(&url)
                .await
                .context("connecting to the database")?;
            projectors::cli::status(&pool, &KafkaSettings::from_env()).await?;
        }
        Command::Dlq {
            command: DlqCommand::List { topic },
        } => projectors::cli::dlq_list(&KafkaSettings::from_env(), topic.as_deref())?,
    }
    Ok(())
}
