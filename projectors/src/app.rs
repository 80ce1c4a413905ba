//! `projectors run`: migrate, create the topics it reads and the dead-letter topics, run every
//! projection, serve `/healthz`, `/readyz` and `/metrics`, stop cleanly on the signal.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use platform::config::KafkaSettings;
use platform::kafka::{ensure_topics, producer_config};
use platform::topics::Topics;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::projection::Projection;
use crate::projections::{self, ForProjection};
use crate::runner::{BatchLimits, Runner};

pub use read_models::MIGRATOR;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka set-up")]
    KafkaSetup(#[from] platform::kafka::KafkaSetupError),
    #[error("http")]
    Io(#[from] std::io::Error),
}

/// Everything `projectors run` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub kafka: KafkaSettings,
    /// `PROJECTORS_ADDR` for health and metrics (default 127.0.0.1:8082).
    pub addr: SocketAddr,
    pub limits: BatchLimits,
}

impl Settings {
    pub fn from_env() -> Result<Self, AppError> {
        Ok(Self {
            database_url: std::env::var("DATABASE_URL")
                .map_err(|_| AppError::Missing("DATABASE_URL"))?,
            kafka: KafkaSettings::from_env(),
            addr: std::env::var("PROJECTORS_ADDR")
                .ok()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8082))),
            limits: BatchLimits::default(),
        })
    }
}

pub async fn connect(database_url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url)
        .await
}

/// Creates the events topics (if the command side has not yet) and their dead-letter twins.
pub async fn ensure_read_topics(kafka: &KafkaSettings) -> Result<(), AppError> {
    let topics = Topics::new(kafka.topic_prefix.clone());
    let mut names = topics.all_events();
    names.extend(topics.all_events().iter().map(|t| Topics::dead_letters(t)));
    ensure_topics(kafka, &names, kafka.partitions).await?;
    Ok(())
}

/// Runs every projection until `shutdown` resolves.
/// `projectors run` as the binary runs it: settings from the environment, every projection
/// until SIGTERM or SIGINT, then each commits what it applied and stops; telemetry flushed.
pub async fn run_from_env() -> anyhow::Result<()> {
    use anyhow::Context;
    let telemetry = platform::telemetry::init("projectors");
    let ran = async {
        let settings = Settings::from_env().context("reading configuration")?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            platform::shutdown::signal().await;
            signal.cancel();
        });
        run(settings, shutdown).await.context("running projections")
    }
    .await;
    telemetry.shutdown().await;
    ran
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), AppError> {
    let pool = connect(&settings.database_url).await?;
    MIGRATOR.run(&pool).await?;
    ensure_read_topics(&settings.kafka).await?;
    let producer = producer_config(&settings.kafka).create()?;
    let mut runners = JoinSet::new();
    for name in projections::ALL {
        let spawn = Spawn {
            runners: &mut runners,
            pool: &pool,
            settings: &settings,
            producer: &producer,
            shutdown: &shutdown,
        };
        projections::by_name(name, spawn).unwrap_or(Ok(()))?;
    }

    let metrics = platform::telemetry::metrics_handle();
    let ready_pool = pool.clone();
    let router = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let pool = ready_pool.clone();
                async move {
                    let ok = sqlx::query("SELECT 1").execute(&pool).await.is_ok();
                    let status = if ok {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        axum::Json(serde_json::json!({"checks": {"database": ok}})),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    info!(addr = %settings.addr, "projectors serving health and metrics");
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
    });
    while runners.join_next().await.is_some() {}
    let _ = http.await;
    Ok(())
}

/// Starts one projection's runner.
struct Spawn<'a> {
    runners: &'a mut JoinSet<()>,
    pool: &'a PgPool,
    settings: &'a Settings,
    producer: &'a rdkafka::producer::FutureProducer,
    shutdown: &'a CancellationToken,
}

impl ForProjection for Spawn<'_> {
    type Output = Result<(), AppError>;

    fn call<P: Projection>(self) -> Self::Output {
        let runner = Runner::<P>::new(
            self.pool.clone(),
            &self.settings.kafka,
            self.producer.clone(),
            self.settings.limits,
        )?;
        self.runners.spawn(runner.run(self.shutdown.clone()));
        Ok(())
    }
}
