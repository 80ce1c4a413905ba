//! `projectors [run]`, `projectors status`, `projectors dlq list [--topic T]`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::config::KafkaSettings;
use projectors::app;
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
    /// Rebuild one projection (customers, inventory or orders) from offset 0 into fresh tables
    /// while the live one keeps serving, then switch over atomically.
    Rebuild { projection: String },
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
    /// Re-apply the dead letters of a topic (and what is parked behind them) once fixed.
    Redrive {
        /// The source topic or its `.dlq` topic.
        topic: String,
        /// Only dead letters on this partition of the `.dlq` topic.
        #[arg(long)]
        partition: Option<i32>,
        /// Only the dead-letter record at this offset.
        #[arg(long)]
        offset: Option<i64>,
    },
    /// Give up on one dead letter: its aggregate moves past it and what was parked behind it is
    /// applied.
    Skip {
        /// The source topic or its `.dlq` topic.
        topic: String,
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        offset: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => {
            app::run_from_env().await?;
        }
        Command::Status => {
            let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
            let pool = app::connect(&url)
                .await
                .context("connecting to the database")?;
            projectors::cli::status(&pool, &KafkaSettings::from_env()).await?;
        }
        Command::Rebuild { projection } => rebuild(&projection).await?,
        Command::Dlq {
            command: DlqCommand::List { topic },
        } => projectors::cli::dlq_list(&KafkaSettings::from_env(), topic.as_deref())?,
        Command::Dlq {
            command:
                DlqCommand::Redrive {
                    topic,
                    partition,
                    offset,
                },
        } => {
            let pool = connect_from_env().await?;
            projectors::cli::dlq_redrive(
                &pool,
                &KafkaSettings::from_env(),
                &topic,
                partition,
                offset,
            )
            .await?;
        }
        Command::Dlq {
            command:
                DlqCommand::Skip {
                    topic,
                    partition,
                    offset,
                },
        } => {
            let pool = connect_from_env().await?;
            projectors::cli::dlq_skip(&pool, &KafkaSettings::from_env(), &topic, partition, offset)
                .await?;
        }
    }
    Ok(())
}

async fn connect_from_env() -> anyhow::Result<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    app::connect(&url)
        .await
        .context("connecting to the database")
}

async fn rebuild(projection: &str) -> anyhow::Result<()> {
    use projectors::projections::{
        customers::Customers, inventory::Inventory, order_sagas::OrderSagas, orders::Orders,
    };
    use projectors::rebuild::{rebuild, LogProgress, Progress, TerminalProgress};
    use std::io::IsTerminal;
    let _telemetry = platform::telemetry::init("projectors");
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let pool = app::connect(&url)
        .await
        .context("connecting to the database")?;
    app::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    let kafka = KafkaSettings::from_env();
    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        Box::new(TerminalProgress::new(projection))
    } else {
        Box::new(LogProgress)
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        platform::shutdown::signal().await;
        signal.cancel();
    });
    let report = match projection {
        "customers" => rebuild::<Customers>(&pool, &kafka, progress.as_ref(), &shutdown).await,
        "inventory" => rebuild::<Inventory>(&pool, &kafka, progress.as_ref(), &shutdown).await,
        "orders" => rebuild::<Orders>(&pool, &kafka, progress.as_ref(), &shutdown).await,
        "order_sagas" => rebuild::<OrderSagas>(&pool, &kafka, progress.as_ref(), &shutdown).await,
        other => anyhow::bail!(
            "unknown projection {other:?}: customers, inventory, orders or order_sagas"
        ),
    }
    .context("rebuilding")?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}: rebuilt {} events into generation {} in {:.1}s ({:.0} events/s)",
            report.projection,
            report.events,
            report.generation,
            report.elapsed.as_secs_f64(),
            report.events_per_second()
        );
    }
    Ok(())
}
