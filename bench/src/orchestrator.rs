//! The orchestrator over a grown log: `orders.events` and `order-sagas.events` pre-filled with
//! approved orders (nine events each, stamped at the pace of 1,000,000 events a month up to now), the orchestrator's
//! group offsets committed at their ends (everything was acted on), then the orchestrator
//! takes over twice: first replaying both topics (no writer has snapshotted them), then, once
//! command-api's order and saga writers took the partitions over and wrote their snapshots,
//! from those (decision 0010). Each is timed from process start until every saga is counted
//! in the `sagas` gauge, and its peak RSS is recorded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::order::{OrderEvent, OrderLine};
use domain::saga::SagaEvent;
use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use domain::AggregateKind;
use futures::stream::FuturesUnordered;
use platform::config::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::kafka_load::{drain, envelope, LogSpan, EVENTS_PER_MONTH, WINDOW};
use crate::services::{Env, Service};

/// Events one pre-filled order leaves: two of the order, seven of its saga.
pub(crate) const EVENTS_PER_ORDER: usize = 9;

/// What the phase measured.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OrchestratorFigures {
    pub(crate) orders: usize,
    /// Process start to every saga counted, replaying both topics.
    pub(crate) replay_ms: f64,
    /// The same, from the writers' snapshots.
    pub(crate) snapshot_ms: f64,
}

/// Pre-fills `events` events of approved orders, then measures both takeovers.
pub(crate) async fn measure(
    env: &Env,
    kafka: &KafkaSettings,
    events: usize,
    rss: &mut BTreeMap<String, f64>,
) -> anyhow::Result<OrchestratorFigures> {
    let orders = (events / EVENTS_PER_ORDER).max(1);
    let span = LogSpan::ending_now(orders, EVENTS_PER_MONTH / EVENTS_PER_ORDER);
    prefill_approved_orders(kafka, orders, span).await?;
    commit_log_ends(kafka, &format!("{}.saga-orchestrator", kafka.topic_prefix)).await?;

    let (replay, service) = take_over(env, orders).await.context("replay")?;
    crate::services::record_peak(service, "saga-orchestrator (takeover, replay)", rss).await;

    // The order and saga writers replay the topics and write their snapshots.
    let writers = Service::start(
        env,
        "command-api",
        "COMMAND_API_ADDR",
        18185,
        &[("COMMAND_WRITER_KINDS", "orders,order-sagas".to_owned())],
    )
    .await?;
    wait_writers_serving(&writers, 2 * env.partitions).await?;
    crate::services::record_peak(writers, "command-api (order and saga writers, replay)", rss)
        .await;

    let (snapshot, service) = take_over(env, orders).await.context("from snapshots")?;
    crate::services::record_peak(service, "saga-orchestrator (takeover, snapshot)", rss).await;
    Ok(OrchestratorFigures {
        orders,
        replay_ms: replay.as_secs_f64() * 1000.0,
        snapshot_ms: snapshot.as_secs_f64() * 1000.0,
    })
}

/// Starts the orchestrator and waits until its `sagas` gauges count `orders` sagas.
async fn take_over(env: &Env, orders: usize) -> anyhow::Result<(Duration, Service)> {
    let started = Instant::now();
    let service = Service::start(
        env,
        "saga-orchestrator",
        "SAGA_ORCHESTRATOR_ADDR",
        18183,
        &[],
    )
    .await?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        let text = client
            .get(format!("http://{}/metrics", service.addr))
            .send()
            .await?
            .text()
            .await?;
        if sagas_counted(&text) >= orders as f64 {
            return Ok((started.elapsed(), service));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the orchestrator did not count {orders} sagas within 15 minutes")
}

/// The sum of the `sagas{state, partition}` gauges in a Prometheus text exposition.
fn sagas_counted(text: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with("sagas{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until command-api's `/readyz` says `serving` writers serve.
async fn wait_writers_serving(service: &Service, serving: i32) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        let body: serde_json::Value = client
            .get(format!("http://{}/readyz", service.addr))
            .send()
            .await?
            .json()
            .await?;
        if body["checks"]["writers_serving"].as_i64() >= Some(i64::from(serving)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("command-api's order and saga writers did not take over within 15 minutes")
}

/// Commits `group`'s offsets at the end of every partition of the order and saga event topics,
/// as an orchestrator that acted on everything would have.
async fn commit_log_ends(kafka: &KafkaSettings, group: &str) -> anyhow::Result<()> {
    let topics = platform::topics::Topics::new(kafka.topic_prefix.clone());
    let names = [
        topics.events(AggregateKind::Order),
        topics.events(AggregateKind::OrderSaga),
    ];
    let (kafka, group) = (kafka.clone(), group.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer: BaseConsumer = platform::kafka::consumer_config(&kafka, &group).create()?;
        let mut ends = TopicPartitionList::new();
        for topic in &names {
            for partition in 0..kafka.partitions {
                let (_, high) =
                    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
                ends.add_partition_offset(topic, partition, Offset::Offset(high))?;
            }
        }
        consumer.commit(&ends, CommitMode::Sync)?;
        Ok(())
    })
    .await?
}

/// Writes `orders` approved one-line orders: `OrderPlaced`, `OrderApproved` to the orders
/// events, and the saga that approved each (started, stock reserved, credit reserved,
/// approved) to the order-sagas events, with the envelopes and predecessors the writers give.
async fn prefill_approved_orders(
    kafka: &KafkaSettings,
    orders: usize,
    span: LogSpan,
) -> anyhow::Result<()> {
    let producer: FutureProducer = platform::kafka::producer_config(kafka)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()?;
    let topics = platform::topics::Topics::new(kafka.topic_prefix.clone());
    platform::kafka::ensure_topics(kafka, &topics.all_events(), kafka.partitions).await?;
    let usd = Currency::try_from("USD")?;
    let customer_id = CustomerId::try_from("bench-customer")?;
    let line = OrderLine {
        sku: Sku::try_from("bench-sku-000001")?,
        quantity: Quantity::try_from(1)?,
        unit_price: Money::new(100, usd)?,
    };
    let total = Money::new(100, usd)?;
    let mut in_flight = FuturesUnordered::new();
    for n in 0..orders {
        let order_id = OrderId::from_uuid(Uuid::now_v7());
        let order_events = [
            schemas::encode(&OrderEvent::OrderPlaced {
                order_id,
                customer_id: customer_id.clone(),
                lines: vec![line.clone()],
                total,
            })?,
            schemas::encode(&OrderEvent::OrderApproved { order_id })?,
        ];
        let saga_events = [
            SagaEvent::SagaStarted {
                order_id,
                customer_id: customer_id.clone(),
                lines: vec![line.clone()],
                total,
            },
            SagaEvent::StockReservationRequested { line: 0 },
            SagaEvent::StockReserved { line: 0 },
            SagaEvent::CreditReservationRequested,
            SagaEvent::CreditReserved,
            SagaEvent::ApprovalRequested,
            SagaEvent::SagaApproved,
        ];
        let at = span.at(n);
        let key = order_id.to_string();
        let chains = [
            (
                AggregateKind::Order,
                ["OrderPlaced", "OrderApproved"]
                    .into_iter()
                    .zip(order_events)
                    .collect::<Vec<_>>(),
            ),
            (
                AggregateKind::OrderSaga,
                saga_events
                    .iter()
                    .map(|event| {
                        Ok((
                            schemas::WireRecord::event_type(event),
                            schemas::encode(event)?,
                        ))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        ];
        for (kind, events) in chains {
            let topic = topics.events(kind);
            let mut predecessor = None;
            for (i, (event_type, payload)) in events.into_iter().enumerate() {
                let version = u64::try_from(i + 1)?;
                let mut envelope = envelope(kind, &key, event_type, version, predecessor);
                envelope.occurred_at =
                    chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
                predecessor = Some(envelope.event_id);
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(at)
                    .headers(envelope.to_headers());
                in_flight.push(
                    producer
                        .send_result(record)
                        .map_err(|(e, _)| anyhow::anyhow!("queue full: {e}"))?,
                );
                drain(&mut in_flight, WINDOW).await?;
            }
        }
    }
    drain(&mut in_flight, 0).await?;
    Ok(())
}
