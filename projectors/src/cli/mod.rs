//! `projectors status`, `projectors dlq list|redrive|skip`: what operators ask first, and what
//! they do about dead letters (`dlq`).
#![allow(clippy::print_stdout)] // a CLI prints

mod dlq;

use std::time::Duration;

use platform::config::KafkaSettings;
use platform::log_end::{Gap, LogEnds};
use platform::topics::Topics;
use sqlx::{PgPool, Row};

use crate::projections;
pub use dlq::{dlq_list, dlq_redrive, dlq_skip};

/// Checkpoint and lag per projection and partition, parked aggregates and anomalies. HEAD is
/// the last stable offset (what a projection can read); LAG is in offsets, see [`lag_of`].
pub async fn status(pool: &PgPool, kafka: &KafkaSettings) -> anyhow::Result<()> {
    let topics = Topics::new(kafka.topic_prefix.clone());
    let ends = LogEnds::new(kafka)?;
    println!(
        "{:<12} {:<32} {:>9} {:>12} {:>12} {:>8}",
        "PROJECTION", "TOPIC", "PARTITION", "CHECKPOINT", "HEAD", "LAG"
    );
    for name in projections::ALL {
        let Some(kind) = projections::kind_of(name) else {
            continue;
        };
        let topic = topics.events(kind);
        for extent in ends.extents(&topic, Duration::from_secs(5))? {
            let (partition, head) = (extent.partition, extent.end);
            let checkpoint: i64 = sqlx::query("SELECT o.next_offset FROM projection_offsets o JOIN projection_generations g ON o.projection = projection_key(g.projection, g.generation) WHERE g.projection = $1 AND o.topic = $2 AND o.partition = $3")
                .bind(name)
                .bind(&topic)
                .bind(partition)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get("next_offset"))
                .transpose()?
                .unwrap_or(0);
            let lag = lag_of(&ends, &topic, partition, checkpoint, head)?;
            println!("{name:<12} {topic:<32} {partition:>9} {checkpoint:>12} {head:>12} {lag:>8}");
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

/// Offsets between a checkpoint and the head. Transaction markers and aborted records take
/// offsets too, and a checkpoint is the last applied record's offset + 1, so a projection that
/// applied everything stays below a head that ends with a commit marker: LAG is 0 when nothing
/// but markers and aborted records lies between (read to find out), and otherwise counts them
/// with the records left (an upper bound).
fn lag_of(
    ends: &LogEnds,
    topic: &str,
    partition: i32,
    checkpoint: i64,
    head: i64,
) -> anyhow::Result<i64> {
    if checkpoint >= head {
        return Ok(0);
    }
    let gap = ends.gap(topic, partition, checkpoint, head, Duration::from_secs(5))?;
    Ok(if gap == Gap::Empty {
        0
    } else {
        head - checkpoint
    })
}
