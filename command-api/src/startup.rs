//! Builds the application (topics, producer, bus, writers, router) and runs it until shutdown.

use platform::log_order::CommandWindow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use platform::consistency::TokenKey;
use platform::kafka::{latency_producer_config, KafkaSetupError};
use platform::topics::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use command_bus::{ensure_all_topics, TopicSetupError};

use crate::auth::Auth;
use crate::bus::CommandBus;
use crate::config::Settings;
use crate::processor::{Processor, WritersShare};
use crate::routes;

/// How long the broker may take to acknowledge a command before the caller gets a 503.
pub const COMMAND_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum StartupError {
    #[error("could not bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Kafka set-up failed")]
    Kafka(#[from] KafkaSetupError),
    #[error("Kafka client failed")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("setting up the command path's topics failed")]
    Topics(#[from] TopicSetupError),
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

struct Inner {
    bus: CommandBus,
    auth: Arc<Auth>,
    /// Signs the consistency tokens of accepted commands (query-api verifies them).
    token_key: TokenKey,
    command_wait: Duration,
    /// How long an Idempotency-Key's claim lasts.
    command_window: CommandWindow,
    metrics: PrometheusHandle,
    processor_ready: Box<dyn Fn() -> bool + Send + Sync>,
    writers_serving: Box<dyn Fn() -> usize + Send + Sync>,
    /// One client for readiness probes (a new librdkafka client per probe is costly).
    metadata: Arc<BaseConsumer>,
}

impl platform::auth::AuthState for AppState {
    type Rejection = crate::problem::ApiError;
    fn auth(&self) -> &Auth {
        &self.0.auth
    }
}

impl AppState {
    pub fn bus(&self) -> &CommandBus {
        &self.0.bus
    }
    pub fn token_key(&self) -> &TokenKey {
        &self.0.token_key
    }
    pub fn command_wait(&self) -> Duration {
        self.0.command_wait
    }

    /// How long an Idempotency-Key's claim lasts (the deployment's idempotency window).
    pub fn command_window(&self) -> CommandWindow {
        self.0.command_window
    }
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }
    pub fn processor_ready(&self) -> bool {
        (self.0.processor_ready)()
    }
    pub fn writers_serving(&self) -> usize {
        (self.0.writers_serving)()
    }

    /// A metadata request answered within two seconds.
    pub async fn broker_reachable(&self) -> bool {
        let client = self.0.metadata.clone();
        tokio::task::spawn_blocking(move || {
            client.fetch_metadata(None, Duration::from_secs(2)).is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

pub use platform::telemetry::metrics_handle;

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    router: Router,
    processor: Processor,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let topics = Topics::new(settings.kafka.topic_prefix.clone());
        let partitions = ensure_all_topics(&settings.kafka, &topics).await?;
        let shutdown = CancellationToken::new();
        let reply_key = format!("command-api-{}", uuid::Uuid::now_v7());
        // The bus gets its own producer with a short delivery timeout: a caller facing a dead
        // broker gets a 503 within seconds, and librdkafka drops (never sends later) what timed out.
        let bus_producer: FutureProducer = latency_producer_config(&settings.kafka)
            .set(
                "message.timeout.ms",
                COMMAND_DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()?;
        let bus = CommandBus::start(
            &settings.kafka,
            partitions,
            bus_producer,
            reply_key,
            settings.circuit_breaker,
            shutdown.clone(),
        )
        .await?;
        let processor = Processor::start(
            settings.kafka.clone(),
            &settings.writer_group,
            &settings.writer_kinds,
            partitions,
            WritersShare {
                window: settings.kafka.command_window,
                memory: settings.writer_memory.clone(),
                waiters: bus.waiters(),
            },
            shutdown.clone(),
        )?;
        watch_open_transactions(&settings, &topics, &shutdown);
        let ready = processor.ready_flag();
        let serving = processor.serving_counter();
        let state = AppState(Arc::new(Inner {
            bus,
            auth: Auth::new(&settings.jwt_secret, settings.rate_limit_per_second),
            token_key: TokenKey::from_secret(&settings.jwt_secret),
            command_wait: settings.command_wait,
            command_window: settings.kafka.command_window,
            metrics: metrics_handle(),
            processor_ready: Box::new(ready),
            writers_serving: Box::new(serving),
            metadata: Arc::new(platform::kafka::client_config(&settings.kafka.brokers).create()?),
        }));
        let router = router(state);
        let listener =
            TcpListener::bind(settings.addr)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.addr,
                    source,
                })?;
        Ok(Self {
            listener,
            router,
            processor,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `signal` resolves, then stops taking requests, lets in-flight ones finish,
    /// stops the writers after their current batch and commits their offsets.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        info!(addr = ?self.local_addr(), "command-api serving");
        let shutdown = self.shutdown.clone();
        let http_done = CancellationToken::new();
        let serve = axum::serve(self.listener, self.router).with_graceful_shutdown({
            let http_done = http_done.clone();
            async move {
                signal.await;
                info!("shutting down: no new requests");
                http_done.cancel();
            }
        });
        let result = serve.await.map_err(StartupError::Serve);
        shutdown.cancel();
        self.processor.stopped().await;
        info!("command-api stopped");
        result
    }
}

/// Reports events partitions an open transaction holds for too long (a hanging transaction
/// stops every reader there; see `platform::open_transactions`). A detached thread: it blocks on
/// the broker and must never hold up the process's exit.
fn watch_open_transactions(settings: &Settings, topics: &Topics, shutdown: &CancellationToken) {
    let kafka = settings.kafka.clone();
    let events: Vec<String> = settings
        .writer_kinds
        .iter()
        .map(|kind| topics.events(*kind))
        .collect();
    let stop = shutdown.clone();
    let started = std::thread::Builder::new()
        .name("open-transactions".into())
        .spawn(move || {
            if let Err(error) =
                platform::open_transactions::watch(&kafka, &events, || stop.is_cancelled())
            {
                tracing::warn!(%error, "cannot watch the events partitions for open transactions");
            }
        });
    if let Err(error) = started {
        tracing::warn!(%error, "cannot start the open-transaction watch");
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/customers", post(routes::customers::register))
        .route(
            "/v1/inventory/{sku}/stock",
            post(routes::inventory::add_stock),
        )
        .route("/v1/orders", post(routes::orders::place))
        .route("/v1/orders/{order_id}/cancel", post(routes::orders::cancel))
        .route("/healthz", get(routes::system::healthz))
        .route("/readyz", get(routes::system::readyz))
        .route("/metrics", get(routes::system::metrics))
        .route("/openapi.json", get(routes::system::openapi))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(platform::http::record_request))
        .with_state(state)
}
