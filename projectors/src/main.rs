//! `projectors [run]`, `projectors status`, `projectors dlq list [--topic T]`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::config::KafkaSettings;
use projectors::startup;
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
    /// Rebuild one projection (customers, inventory, orders or order_sagas) from offset 0 into
    /// fresh tables while the live one keeps serving, then switch over atomically. Records
    /// operators skipped stay skipped.
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
    /// Give up on one dead letter for good (every generation and rebuild passes over it): what
    /// was parked behind it is applied. The way out for a record that can never apply.
    Skip {
        /// The source topic or its `.dlq` topic.
        topic: String,
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        offset: i64,
    },
}

/// jemalloc, for Rust and librdkafka alike, configured at build time for a small resident set
/// (`.cargo/config.toml`; decision 0013).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => {
            projectors::run_from_env().await?;
        }
        Command::Status => {
            let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
            let pool = startup::connect(&url)
                .await
                .context("connecting to the database")?;
            projectors::cli::status(&pool, &KafkaSettings::from_env()?).await?;
        }
        Command::Rebuild { projection } => rebuild(&projection).await?,
        Command::Dlq {
            command: DlqCommand::List { topic },
        } => projectors::cli::dlq_list(&KafkaSettings::from_env()?, topic.as_deref())?,
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
                &KafkaSettings::from_env()?,
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
            projectors::cli::dlq_skip(
                &pool,
                &KafkaSettings::from_env()?,
                &topic,
                partition,
                offset,
            )
            .await?;
        }
    }
    Ok(())
}

async fn connect_from_env() -> anyhow::Result<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    startup::connect(&url)
        .await
        .context("connecting to the database")
}

/// `rebuild::<P>` for the projection chosen by name.
struct Rebuild<'a> {
    pool: &'a sqlx::PgPool,
    kafka: &'a KafkaSettings,
    progress: &'a dyn projectors::rebuild::Progress,
    shutdown: &'a CancellationToken,
}

impl<'a> projectors::projections::ForProjection for Rebuild<'a> {
    type Output = futures::future::LocalBoxFuture<
        'a,
        Result<projectors::rebuild::RebuildReport, projectors::rebuild::RebuildError>,
    >;

    fn call<P: projectors::projection::Projection>(self) -> Self::Output {
        Box::pin(projectors::rebuild::rebuild::<P>(
            self.pool,
            self.kafka,
            self.progress,
            self.shutdown,
        ))
    }
}

async fn rebuild(projection: &str) -> anyhow::Result<()> {
    use projectors::rebuild::{LogProgress, Progress, TerminalProgress};
    use std::io::IsTerminal;
    let _telemetry = platform::telemetry::init("projectors");
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let pool = startup::connect(&url)
        .await
        .context("connecting to the database")?;
    startup::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    let kafka = KafkaSettings::from_env()?;
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
    let work = Rebuild {
        pool: &pool,
        kafka: &kafka,
        progress: progress.as_ref(),
        shutdown: &shutdown,
    };
    let Some(rebuilding) = projectors::projections::by_name(projection, work) else {
        anyhow::bail!(
            "unknown projection {projection:?}: one of {}",
            projectors::projections::ALL.join(", ")
        );
    };
    let report = rebuilding.await.context("rebuilding")?;
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
