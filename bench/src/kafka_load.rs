//! Kafka-side load: the raw produce baseline, and pre-filled event topics for the projector and
//! rebuild runs. Records carry our real envelope headers and Avro payloads, so the baseline moves
//! the same bytes the services do.

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use domain::inventory::InventoryEvent;
use domain::order::{OrderEvent, OrderLine};
use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
use domain::{AggregateKind, Version};
use futures::stream::{FuturesUnordered, StreamExt};
use platform::config::KafkaSettings;
use platform::envelope::{EventEnvelope, Trace};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

/// At most this many records in flight from one producer.
pub(crate) const WINDOW: usize = 20_000;

pub(crate) fn envelope(
    kind: AggregateKind,
    id: &str,
    event_type: &str,
    version: u64,
    predecessor: Option<Uuid>,
) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        aggregate_kind: kind,
        aggregate_id: id.to_owned(),
        version: Version::new(version),
        predecessor,
        command_id: Uuid::new_v4().to_string(),
        request_hash: None,
        occurred_at: Utc::now(),
        trace: Trace {
            correlation_id: Uuid::new_v4().to_string(),
            causation_id: Uuid::new_v4().to_string(),
            traceparent: None,
        },
    }
}

/// A typical order event: one line, like the commands the bench sends.
pub(crate) fn order_placed() -> anyhow::Result<(EventEnvelope, Vec<u8>)> {
    let usd = Currency::try_from("USD")?;
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let event = OrderEvent::OrderPlaced {
        order_id,
        customer_id: CustomerId::try_from("bench-customer")?,
        lines: vec![OrderLine {
            sku: Sku::try_from("bench-sku-00001")?,
            quantity: Quantity::try_from(1)?,
            unit_price: Money::new(100, usd)?,
        }],
        total: Money::new(100, usd)?,
    };
    let payload = schemas::encode(&event)?;
    Ok((
        envelope(
            AggregateKind::Order,
            &order_id.to_string(),
            "OrderPlaced",
            1,
            None,
        ),
        payload,
    ))
}

pub(crate) async fn drain(
    in_flight: &mut FuturesUnordered<rdkafka::producer::DeliveryFuture>,
    down_to: usize,
) -> anyhow::Result<()> {
    while in_flight.len() > down_to {
        match in_flight.next().await {
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err((error, _)))) => anyhow::bail!("produce failed: {error}"),
            Some(Err(_)) => anyhow::bail!("produce cancelled"),
            None => break,
        }
    }
    Ok(())
}

/// Records per second an idempotent acks=all producer gets acknowledged, `count` records of
/// our event size into `topic`.
pub(crate) async fn raw_produce(
    kafka: &KafkaSettings,
    topic: &str,
    count: usize,
) -> anyhow::Result<(f64, usize)> {
    let producer: FutureProducer = platform::kafka::producer_config(kafka).create()?;
    let (envelope, payload) = order_placed()?;
    let headers = envelope.to_headers();
    let size = payload.len();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..count {
        let key = format!("order-{i}");
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(headers.clone());
        in_flight.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("queue full: {e}"))?,
        );
        drain(&mut in_flight, WINDOW).await?;
    }
    drain(&mut in_flight, 0).await?;
    Ok((count as f64 / started.elapsed().as_secs_f64(), size))
}

/// Writes `count` inventory events (StockAdded, gap-free versions, real predecessors) over
/// `skus` items to the inventory events topic, as the writers would.
pub(crate) async fn prefill_inventory(
    kafka: &KafkaSettings,
    count: usize,
    skus: usize,
    span: LogSpan,
) -> anyhow::Result<()> {
    prefill_inventory_more(kafka, 0, count, skus, span).await
}

/// When the pre-filled events happened: evenly, at a steady pace, the last one now, as a log
/// that grew for months holds them (a day of commands inside the idempotency window, not all
/// of them). At a steady pace a longer log is an older one, not a busier one: the window holds
/// the same day of commands over 1,000,000 events as over 5,000,000.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogSpan {
    start_ms: i64,
    step_ms: f64,
}

/// The pace of the pre-filled logs: 1,000,000 events a month.
pub(crate) const EVENTS_PER_MONTH: usize = 1_000_000;

impl LogSpan {
    /// `count` items (events, or orders of several events each) at `per_month` items in 30
    /// days, ending now.
    pub(crate) fn ending_now(count: usize, per_month: usize) -> Self {
        let month_ms = 30.0 * 24.0 * 3_600_000.0;
        let step_ms = month_ms / per_month.max(1) as f64;
        Self {
            start_ms: Utc::now().timestamp_millis() - (step_ms * count as f64) as i64,
            step_ms,
        }
    }

    /// The timestamp of the `n`-th event (ms).
    pub(crate) fn at(self, n: usize) -> i64 {
        self.start_ms + (n as f64 * self.step_ms) as i64
    }
}

/// Like [`prefill_inventory`], continuing after the first `already` events (same items, so
/// versions and predecessors go on where they stopped).
pub(crate) async fn prefill_inventory_more(
    kafka: &KafkaSettings,
    already: usize,
    count: usize,
    skus: usize,
    span: LogSpan,
) -> anyhow::Result<()> {
    let producer: FutureProducer = platform::kafka::producer_config(kafka)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()?;
    let topic = platform::topics::Topics::new(kafka.topic_prefix.clone())
        .events(AggregateKind::InventoryItem);
    let mut heads: HashMap<usize, (u64, Uuid)> = HashMap::new();
    let mut in_flight = FuturesUnordered::new();
    // The chain heads the first `already` events left: their ids are not known here, so a
    // continuation writes a fresh item range instead.
    let base = if already == 0 {
        0
    } else {
        skus * (1 + already / skus)
    };
    for i in 0..count {
        let n = base + i % skus;
        let sku = format!("bench-sku-{n:06}");
        let (version, predecessor) = match heads.get(&n) {
            Some((v, id)) => (v + 1, Some(*id)),
            None => (1, None),
        };
        let event = InventoryEvent::StockAdded {
            sku: Sku::try_from(sku.as_str())?,
            quantity: Quantity::try_from(1)?,
        };
        let mut envelope = envelope(
            AggregateKind::InventoryItem,
            &sku,
            "StockAdded",
            version,
            predecessor,
        );
        let at = span.at(already + i);
        envelope.occurred_at = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
        heads.insert(n, (version, envelope.event_id));
        let payload = schemas::encode(&event)?;
        let record = FutureRecord::to(&topic)
            .key(&sku)
            .payload(&payload)
            .timestamp(at)
            .headers(envelope.to_headers());
        // The window stays far below librdkafka's queue (100,000), so the queue never fills.
        in_flight.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("queue full: {e}"))?,
        );
        drain(&mut in_flight, WINDOW).await?;
    }
    drain(&mut in_flight, 0).await?;
    Ok(())
}
