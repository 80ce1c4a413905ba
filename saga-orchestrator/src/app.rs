//! `saga-orchestrator run`: topics, the command bus, the group, a worker per partition, and
//! `/healthz`, `/readyz`, `/metrics`; stops cleanly on the signal.

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
pub enum AppError {
    #[error("setting up topics")]
    Topics(#[from] TopicSetupError),
    #[error("setting up dead-letter topics")]
    KafkaSetup(#[from] platform::kafka::KafkaSetupError),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http")]
    Io(#[from] std::io::Error),
}

/// A started orchestrator: its health address, and the task to wait for.
#[allow(missing_debug_implementations)]
pub struct Orchestrator {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Orchestrator {
    /// Sets everything up and starts serving; returns once health and metrics are listening.
    pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Self, AppError> {
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
        let producer: rdkafka::producer::FutureProducer =
            producer_config(&settings.kafka).create()?;
        let reply_key = format!("saga-orchestrator-{}", uuid::Uuid::now_v7());
        let bus = CommandBus::start(
            &settings.kafka,
            partitions,
            producer.clone(),
            reply_key,
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
                })?;
        group.subscribe(&[orders_topic.as_str(), sagas_topic.as_str()])?;
        let shared = Arc::new(SagaContext {
            sender: Sender::new(bus, settings.step_timeout),
            dead_letters: DeadLetters::new(producer, "saga-orchestrator"),
            group: Arc::new(group),
            orders_topic,
            sagas_topic,
            settings: settings.clone(),
        });
        let listener = TcpListener::bind(settings.addr).await?;
        let addr = listener.local_addr()?;
        info!(%addr, step_timeout_ms = settings.step_timeout.as_millis() as u64, "saga orchestrator serving health and metrics");
        let router = health_router(assigned);
        let http_shutdown = shutdown.clone();
        let http = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await;
        });
        let task = tokio::spawn(async move {
            dispatch(shared, change_rx, shutdown).await;
            let _ = http.await;
        });
        Ok(Self { addr, task })
    }

    /// Waits until every worker has stopped and committed.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// The process: settings from the environment, run until SIGTERM / SIGINT, stop cleanly.
pub async fn run_from_env() -> anyhow::Result<()> {
    use anyhow::Context;
    let telemetry = platform::telemetry::init("saga-orchestrator");
    let settings = Settings::from_env().context("reading configuration")?;
    let shutdown = CancellationToken::new();
    let orchestrator = Orchestrator::start(settings, shutdown.clone())
        .await
        .context("starting the saga orchestrator")?;
    platform::shutdown::signal().await;
    shutdown.cancel();
    orchestrator.stopped().await;
    telemetry.shutdown().await;
    Ok(())
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
