//! `projectors status` and `projectors dlq list`: what operators ask first.
#![allow(clippy::print_stdout)] // a CLI prints

use std::time::Duration;

use platform::config::KafkaSettings;
use platform::topics::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::{PgPool, Row};

use crate::applier::{Applier, Generation};
use crate::dead_letters::names;
use crate::projections;

/// Checkpoint and lag per projection and partition, parked aggregates and anomalies.
pub async fn status(pool: &PgPool, kafka: &KafkaSettings) -> anyhow::Result<()> {
    let topics = Topics::new(kafka.topic_prefix.clone());
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()?;
    println!(
        "{:<12} {:<32} {:>9} {:>12} {:>12} {:>8}",
        "PROJECTION", "TOPIC", "PARTITION", "CHECKPOINT", "HEAD", "LAG"
    );
    for (name, kind) in projections::ALL.iter().zip([
        domain::AggregateKind::Customer,
        domain::AggregateKind::InventoryItem,
        domain::AggregateKind::Order,
        domain::AggregateKind::OrderSaga,
    ]) {
        let topic = topics.events(kind);
        let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        for partition in 0..i32::try_from(partitions).unwrap_or(0) {
            let (_, head) = client.fetch_watermarks(&topic, partition, Duration::from_secs(5))?;
            let checkpoint: i64 = sqlx::query("SELECT o.next_offset FROM projection_offsets o JOIN projection_generations g ON o.projection = projection_key(g.projection, g.generation) WHERE g.projection = $1 AND o.topic = $2 AND o.partition = $3")
                .bind(name)
                .bind(&topic)
                .bind(partition)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get("next_offset"))
                .transpose()?
                .unwrap_or(0);
            println!(
                "{name:<12} {topic:<32} {partition:>9} {checkpoint:>12} {head:>12} {:>8}",
                head - checkpoint
            );
        }
    }
    let parked: i64 = sqlx::query("SELECT count(*) AS n FROM parked_aggregates")
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    let anomalies = sqlx::query(
        "SELECT kind, count(*) AS n FROM projection_anomalies GROUP BY kind ORDER BY kind",
    )
    .fetch_all(pool)
    .await?;
    println!("\nparked aggregates: {parked}");
    for row in anomalies {
        println!(
            "anomalies ({}): {}",
            row.try_get::<String, _>("kind")?,
            row.try_get::<i64, _>("n")?
        );
    }
    Ok(())
}

/// Every record currently on the dead-letter topics (or one of them).
pub fn dlq_list(kafka: &KafkaSettings, only: Option<&str>) -> anyhow::Result<()> {
    let topics = Topics::new(kafka.topic_prefix.clone());
    let consumer: BaseConsumer =
        platform::kafka::consumer_config(kafka, &format!("{}.dlq-reader", kafka.topic_prefix))
            .create()?;
    println!(
        "{:<36} {:>6} {:<32} {:>9} {:>8} {:>8}  ERROR",
        "DLQ TOPIC", "OFFSET", "SOURCE", "PARTITION", "OFFSET", "ATTEMPTS"
    );
    for source in topics.all_events() {
        let dlq = Topics::dead_letters(&source);
        if only.is_some_and(|o| o != dlq && o != source) {
            continue;
        }
        let Ok(metadata) = consumer.fetch_metadata(Some(&dlq), Duration::from_secs(5)) else {
            continue;
        };
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        let mut list = TopicPartitionList::new();
        let mut remaining = 0;
        for partition in 0..i32::try_from(partitions).unwrap_or(0) {
            let (low, high) = consumer.fetch_watermarks(&dlq, partition, Duration::from_secs(5))?;
            remaining += high - low;
            list.add_partition_offset(&dlq, partition, Offset::Beginning)?;
        }
        consumer.assign(&list)?;
        while remaining > 0 {
            let Some(message) = consumer.poll(Duration::from_secs(5)) else {
                break;
            };
            let message = message?;
            remaining -= 1;
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            println!(
                "{dlq:<36} {:>9} {:>6} {:<32} {:>9} {:>8} {:>8}  {}",
                message.partition(),
                message.offset(),
                header(names::SOURCE_TOPIC),
                header(names::SOURCE_PARTITION),
                header(names::SOURCE_OFFSET),
                header(names::ATTEMPTS),
                header(names::ERROR)
            );
        }
    }
    Ok(())
}

/// The records on a dead-letter topic, oldest first.
fn read_dead_letters(
    kafka: &KafkaSettings,
    dlq: &str,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    let consumer: BaseConsumer =
        platform::kafka::consumer_config(kafka, &format!("{}.dlq-reader", kafka.topic_prefix))
            .create()?;
    let metadata = consumer.fetch_metadata(Some(dlq), Duration::from_secs(5))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut list = TopicPartitionList::new();
    let mut remaining = 0;
    for partition in 0..i32::try_from(partitions).unwrap_or(0) {
        let (low, high) = consumer.fetch_watermarks(dlq, partition, Duration::from_secs(5))?;
        remaining += high - low;
        list.add_partition_offset(dlq, partition, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut out = Vec::new();
    while remaining > 0 {
        let Some(message) = consumer.poll(Duration::from_secs(5)) else {
            break;
        };
        out.push(message?.detach());
        remaining -= 1;
    }
    Ok(out)
}

/// A dead letter turned back into the record it was: original key, value and headers, at its
/// source partition and offset.
fn original(
    letter: &rdkafka::message::OwnedMessage,
    source_topic: &str,
) -> Option<(String, rdkafka::message::OwnedMessage)> {
    let header = |name: &str| {
        letter
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut headers = rdkafka::message::OwnedHeaders::new();
    if let Some(all) = letter.headers() {
        for h in all.iter().filter(|h| !h.key.starts_with("dlq-")) {
            headers = headers.insert(rdkafka::message::Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let message = rdkafka::message::OwnedMessage::new(
        letter.payload().map(<[u8]>::to_vec),
        letter.key().map(<[u8]>::to_vec),
        source_topic.to_owned(),
        rdkafka::Timestamp::NotAvailable,
        header(names::SOURCE_PARTITION)?.parse().ok()?,
        header(names::SOURCE_OFFSET)?.parse().ok()?,
        Some(headers),
    );
    Some((header(names::PROJECTION)?, message))
}

/// The dead letters of `topic` (a source topic or its `.dlq`), filtered to one partition or
/// offset when given, as (projection, original record).
fn select_dead_letters(
    kafka: &KafkaSettings,
    topic: &str,
    partition: Option<i32>,
    offset: Option<i64>,
) -> anyhow::Result<(String, Vec<(String, rdkafka::message::OwnedMessage)>)> {
    let source = topic.strip_suffix(".dlq").unwrap_or(topic).to_owned();
    let dlq = Topics::dead_letters(&source);
    let letters = read_dead_letters(kafka, &dlq)?
        .into_iter()
        .filter(|m| {
            offset.is_none_or(|o| m.offset() == o) && partition.is_none_or(|p| m.partition() == p)
        })
        .map(|m| {
            original(&m, &source).ok_or_else(|| {
                anyhow::anyhow!("dead letter at {} lacks its source headers", m.offset())
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((dlq, letters))
}

/// An operator's action on the live generation of one projection.
enum Action<'a> {
    Redrive(&'a [rdkafka::message::OwnedMessage]),
    Skip(&'a rdkafka::message::OwnedMessage),
}

/// Per aggregate: how many events were applied, or why not.
type ActionResults = Vec<(String, Result<usize, String>)>;

async fn act<P: crate::projection::Projection>(
    applier: Applier<P>,
    action: Action<'_>,
) -> Result<ActionResults, sqlx::Error> {
    match action {
        Action::Redrive(letters) => applier.redrive(letters).await,
        Action::Skip(letter) => {
            let aggregate = letter
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            Ok(vec![(aggregate, applier.skip(letter).await?)])
        }
    }
}

/// Runs `action` with the applier of the projection named in the dead letters.
async fn act_on(
    pool: &PgPool,
    kafka: &KafkaSettings,
    projection: &str,
    action: Action<'_>,
) -> anyhow::Result<ActionResults> {
    use crate::projections::{
        customers::Customers, inventory::Inventory, order_sagas::OrderSagas, orders::Orders,
    };
    let producer: rdkafka::producer::FutureProducer =
        platform::kafka::producer_config(kafka).create()?;
    let (pool, live) = (pool.clone(), Generation::Live);
    Ok(match projection {
        "customers" => {
            act(
                Applier::<Customers>::new(pool, kafka, producer, live),
                action,
            )
            .await?
        }
        "inventory" => {
            act(
                Applier::<Inventory>::new(pool, kafka, producer, live),
                action,
            )
            .await?
        }
        "orders" => act(Applier::<Orders>::new(pool, kafka, producer, live), action).await?,
        "order_sagas" => {
            act(
                Applier::<OrderSagas>::new(pool, kafka, producer, live),
                action,
            )
            .await?
        }
        other => anyhow::bail!(
            "the dead letter belongs to {other:?}, which `projectors dlq` does not re-drive"
        ),
    })
}

/// Re-applies the dead letters of `topic` (a source or `.dlq` topic; one record with `offset`)
/// and what is parked behind them, once whatever made them fail is fixed.
pub async fn dlq_redrive(
    pool: &PgPool,
    kafka: &KafkaSettings,
    topic: &str,
    partition: Option<i32>,
    offset: Option<i64>,
) -> anyhow::Result<()> {
    let (dlq, letters) = select_dead_letters(kafka, topic, partition, offset)?;
    if letters.is_empty() {
        println!("no dead letters to redrive on {dlq}");
        return Ok(());
    }
    for projection in ["customers", "inventory", "orders"] {
        let mine: Vec<_> = letters
            .iter()
            .filter(|(p, _)| p == projection)
            .map(|(_, m)| m.clone())
            .collect();
        if mine.is_empty() {
            continue;
        }
        for (aggregate, result) in act_on(pool, kafka, projection, Action::Redrive(&mine)).await? {
            match result {
                Ok(applied) => println!(
                    "{projection} {aggregate}: redriven, {applied} events applied, unparked"
                ),
                Err(error) => {
                    println!("{projection} {aggregate}: still failing, left parked: {error}")
                }
            }
        }
    }
    Ok(())
}

/// Skips one dead letter (`--offset`, and `--partition` when offsets repeat across partitions):
/// its aggregate's read model moves past it without its effect, then what was parked behind it
/// is applied. Recorded as a `skipped` anomaly.
pub async fn dlq_skip(
    pool: &PgPool,
    kafka: &KafkaSettings,
    topic: &str,
    partition: Option<i32>,
    offset: i64,
) -> anyhow::Result<()> {
    let (dlq, letters) = select_dead_letters(kafka, topic, partition, Some(offset))?;
    let (projection, letter) = match letters.as_slice() {
        [one] => one,
        [] => anyhow::bail!("no dead letter at offset {offset} on {dlq}"),
        _ => {
            anyhow::bail!("offset {offset} exists on several partitions of {dlq}: add --partition")
        }
    };
    let results = act_on(pool, kafka, projection, Action::Skip(letter)).await?;
    match results.into_iter().next().map(|(_, result)| result) {
        Some(Ok(applied)) => println!("skipped; {applied} parked events applied, unparked"),
        Some(Err(reason)) => anyhow::bail!("not skipped: {reason}"),
        None => anyhow::bail!("not skipped: nothing happened"),
    }
    Ok(())
}
