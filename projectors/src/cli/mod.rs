//! `projectors status`, `projectors dlq list|redrive|skip`: what operators ask first, and what
//! they do about dead letters (`dlq`).
#![allow(clippy::print_stdout)] // a CLI prints

mod dlq;

use std::time::Duration;

use platform::config::KafkaSettings;
use platform::topics::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sqlx::{PgPool, Row};

use crate::projections;
pub use dlq::{dlq_list, dlq_redrive, dlq_skip};

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
    for name in projections::ALL {
        let Some(kind) = projections::kind_of(name) else {
            continue;
        };
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
    let skips: i64 = sqlx::query("SELECT count(*) AS n FROM operator_skips")
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    println!("\nparked aggregates: {parked}");
    println!("records skipped by operators: {skips}");
    for row in anomalies {
        println!(
            "anomalies ({}): {}",
            row.try_get::<String, _>("kind")?,
            row.try_get::<i64, _>("n")?
        );
    }
    Ok(())
}
