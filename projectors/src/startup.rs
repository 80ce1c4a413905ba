//! `projectors run`: migrate, create the topics it reads and the dead-letter topics, run every
//! projection, serve `/healthz`, `/readyz` and `/metrics`, stop cleanly on the signal.
//!
//! The same shape as every service of the workspace: [`Application::build`] sets everything up
//! and starts the work (bound, not yet serving), [`Application::run_until`] serves until a
//! signal and then stops the work cleanly.

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
pub enum StartupError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error(transparent)]
    Invalid(#[from] platform::config::InvalidSetting),
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
    pub fn from_env() -> Result<Self, StartupError> {
        Ok(Self {
            database_url: std::env::var("DATABASE_URL")
                .map_err(|_| StartupError::Missing("DATABASE_URL"))?,
            kafka: KafkaSettings::from_env()?,
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
pub async fn ensure_read_topics(kafka: &KafkaSettings) -> Result<(), StartupError> {
    let topics = Topics::new(kafka.topic_prefix.clone());
    let mut names = topics.all_events();
    names.extend(topics.all_events().iter().map(|t| Topics::dead_letters(t)));
    ensure_topics(kafka, &names, kafka.partitions).await?;
    Ok(())
}

/// A set-up projectors process: every projection running, health and metrics bound but not yet
/// served.
#[allow(missing_debug_implementations)]
pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    runners: JoinSet<()>,
    shutdown: CancellationToken,
    /// Cancels `shutdown` when the application is dropped without `run_until` (or its
    /// `run_until` is cancelled): its work stops instead of running on detached.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Application {
    /// Migrates, creates the topics it reads, starts every projection's runner and binds
    /// `settings.addr`.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let pool = connect(&settings.database_url).await?;
        MIGRATOR.run(&pool).await?;
        ensure_read_topics(&settings.kafka).await?;
        // Bound before any runner starts: a taken port fails the start with nothing running.
        let listener = tokio::net::TcpListener::bind(settings.addr).await?;
        let producer = producer_config(&settings.kafka).create()?;
        let shutdown = CancellationToken::new();
        let mut runners = JoinSet::new();
        for name in projections::ALL {
            let spawn = Spawn {
                runners: &mut runners,
                pool: &pool,
                settings: &settings,
                producer: &producer,
                shutdown: &shutdown,
            };
            if let Some(started) = projections::by_name(name, spawn) {
                // A runner that failed to start must not leave the others running.
                started.inspect_err(|_| shutdown.cancel())?;
            }
        }
        Ok(Self {
            listener,
            router: health_router(pool),
            runners,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves health and metrics until `signal` resolves, then stops every projection after
    /// its current batch (each commits what it applied).
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        info!(addr = ?self.local_addr(), "projectors serving health and metrics");
        let shutdown = self.shutdown.clone();
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                signal.await;
                info!("shutting down: projections finish their batch");
                shutdown.cancel();
            })
            .await;
        self.shutdown.cancel();
        while self.runners.join_next().await.is_some() {}
        info!("projectors stopped");
        served.map_err(StartupError::Io)
    }
}

fn health_router(pool: PgPool) -> Router {
    let metrics = platform::telemetry::metrics_handle();
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let pool = pool.clone();
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
        )
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
    type Output = Result<(), StartupError>;

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
