//! `saga-orchestrator run`: topics, the command bus, the group, a worker per partition, and
//! `/healthz`, `/readyz`, `/metrics`; stops cleanly on the signal.
//!
//! The same shape as every service of the workspace: [`Application::build`] sets everything up
//! and starts the work (bound, not yet serving), [`Application::run_until`] serves until a
//! signal and then stops the work cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use command_bus::{ensure_all_topics, CommandBus, TopicSetupError};
use domain::AggregateKind;
use platform::dead_letters::DeadLetters;
use platform::kafka::{ensure_topics, producer_config};
use platform::topics::Topics;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Settings;
use crate::saga_context::SagaContext;
use crate::saga_group::{dispatch, GroupContext};
use crate::sender::Sender;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("setting up topics")]
    Topics(#[from] TopicSetupError),
    #[error("setting up dead-letter topics")]
    KafkaSetup(#[from] platform::kafka::KafkaSetupError),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http")]
    Io(#[from] std::io::Error),
}

/// A set-up orchestrator: the group joined and its workers dispatching, health and metrics
/// bound but not yet served.
#[allow(missing_debug_implementations)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    workers: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    /// Cancels `shutdown` when the application is dropped without `run_until` (or its
    /// `run_until` is cancelled): its work stops instead of running on detached.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Application {
    /// Creates the topics, starts the command bus, joins the group (a worker per assigned
    /// partition) and binds `settings.addr`.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let topics = Topics::new(settings.kafka.topic_prefix.clone());
        let partitions = ensure_all_topics(&settings.kafka, &topics).await?;
        let orders_topic = topics.events(AggregateKind::Order);
        let sagas_topic = topics.events(AggregateKind::OrderSaga);
        ensure_topics(
            &settings.kafka,
            &[
                Topics::dead_letters(&orders_topic),
                Topics::dead_letters(&sagas_topic),
            ],
            settings.kafka.partitions,
        )
        .await?;
        let listener = TcpListener::bind(settings.addr).await?;
        let producer: rdkafka::producer::FutureProducer =
            producer_config(&settings.kafka).create()?;
        let shutdown = CancellationToken::new();
        let reply_key = format!("saga-orchestrator-{}", uuid::Uuid::now_v7());
        let bus = CommandBus::start(
            &settings.kafka,
            partitions,
            producer.clone(),
            reply_key,
            settings.circuit_breaker,
            shutdown.clone(),
        )
        .await?;
        let (changes, change_rx) = tokio::sync::mpsc::unbounded_channel();
        let assigned = Arc::new(AtomicBool::new(false));
        let group: StreamConsumer<GroupContext> =
            platform::kafka::consumer_config(&settings.kafka, &settings.group)
                // Range puts partition p of both topics on the same member.
                .set("partition.assignment.strategy", "range")
                .create_with_context(GroupContext {
                    changes,
                    sagas_topic: sagas_topic.clone(),
                    assigned_once: assigned.clone(),
                })
                .inspect_err(|_| shutdown.cancel())?;
        group
            .subscribe(&[orders_topic.as_str(), sagas_topic.as_str()])
            .inspect_err(|_| shutdown.cancel())?;
        let shared = Arc::new(SagaContext {
            sender: Sender::new(bus, settings.step_timeout),
            dead_letters: DeadLetters::new(producer, "saga-orchestrator"),
            group: Arc::new(group),
            orders_topic,
            sagas_topic,
            snapshot_topics: [
                topics.snapshots(AggregateKind::Order),
                topics.snapshots(AggregateKind::OrderSaga),
            ],
            settings: settings.clone(),
        });
        let workers = tokio::spawn(dispatch(shared, change_rx, shutdown.clone()));
        info!(addr = ?listener.local_addr().ok(), step_timeout_ms = settings.step_timeout.as_millis() as u64, "saga orchestrator started");
        Ok(Self {
            listener,
            router: health_router(assigned),
            workers,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves health and metrics until `signal` resolves, then stops every worker (each
    /// commits what it finished) and the bus.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        info!(addr = ?self.local_addr(), "saga orchestrator serving health and metrics");
        let shutdown = self.shutdown.clone();
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                signal.await;
                info!("shutting down: workers finish what they started");
                shutdown.cancel();
            })
            .await;
        self.shutdown.cancel();
        let _ = self.workers.await;
        info!("saga orchestrator stopped");
        served.map_err(StartupError::Io)
    }
}

fn health_router(assigned: Arc<AtomicBool>) -> Router {
    let metrics = platform::telemetry::metrics_handle();
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ok = assigned.load(Ordering::SeqCst);
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                std::future::ready((
                    status,
                    Json(serde_json::json!({"checks": {"broker": ok, "group": ok}})),
                ))
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .layer(axum::middleware::from_fn(platform::http::record_request))
}
