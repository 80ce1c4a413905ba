//! Blue/green rebuild of one projection. The next generation's table is created with the same
//! definition as the current one (`LIKE ... INCLUDING ALL`, so the schema stays the migration's),
//! filled from offset 0 by a runner with its own consumer group while the live projection keeps
//! serving and consuming. Once it has caught up with every partition's head, one transaction
//! (which waits for the live batch in progress, via the generation row's lock) repoints the view
//! and bumps the generation; the live runner then continues on the new generation, skipping
//! everything at or below the rebuild's offsets. The old table is dropped afterwards.
//!
//! Records operators skipped stay skipped: `operator_skips` is keyed by the projection's name,
//! not its generation, so the new generation passes over them as the live one did (no new dead
//! letter, no parking, no anomaly) and ends with the same rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use platform::config::KafkaSettings;
use platform::kafka::producer_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::applier::{generation_key, generation_table, Generation};
use crate::projection::Projection;
use crate::runner::{BatchLimits, Runner};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("stopped before the switch; the live generation is unchanged")]
    Stopped,
}

/// How a rebuild reports progress (a terminal bar, or log lines).
pub trait Progress: Send + Sync {
    fn update(&self, applied: i64, head: i64, per_second: f64);
    fn finish(&self, report: &RebuildReport);
}

/// What a finished rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub projection: &'static str,
    pub generation: i32,
    pub events: i64,
    pub elapsed: Duration,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(0.001)
    }
}

/// Rebuilds projection `P` into a new generation and switches to it.
pub async fn rebuild<P: Projection>(
    pool: &PgPool,
    kafka: &KafkaSettings,
    progress: &dyn Progress,
    shutdown: &CancellationToken,
) -> Result<RebuildReport, RebuildError> {
    let current: i32 =
        sqlx::query_scalar("SELECT generation FROM projection_generations WHERE projection = $1")
            .bind(P::NAME)
            .fetch_one(pool)
            .await?;
    let next = current + 1;
    let (old_table, new_table, key) = (
        generation_table(P::NAME, current),
        generation_table(P::NAME, next),
        generation_key(P::NAME, next),
    );
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("DROP TABLE IF EXISTS {new_table}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {new_table} (LIKE {old_table} INCLUDING ALL)"
    ))
    .execute(&mut *tx)
    .await?;
    for table in [
        "projection_offsets",
        "parked_aggregates",
        "parked_events",
        "projection_anomalies",
        // A rebuild stopped before its switch left these: the next one starts from nothing.
        "projection_commands",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE projection = $1"))
            .bind(&key)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    info!(
        projection = P::NAME,
        from = current,
        to = next,
        "rebuild started"
    );

    let group = format!(
        "{}.projector.{}.rebuild-g{next}-{}",
        kafka.topic_prefix,
        P::NAME,
        uuid::Uuid::now_v7()
    );
    let limits = BatchLimits {
        max_events: 20_000,
        max_wait: Duration::from_millis(500),
    };
    let mut runner = Runner::<P>::with_generation(
        pool.clone(),
        kafka,
        producer_config(kafka).create()?,
        limits,
        Generation::Fixed(next),
        &group,
    )?;
    let topic = runner.topic().to_owned();
    let client: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .create()?,
    );
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return Err(RebuildError::Stopped);
        }
        let worked = runner.step(Duration::from_millis(200), shutdown).await;
        if worked && last_report.elapsed() < Duration::from_millis(250) {
            continue;
        }
        last_report = Instant::now();
        let heads = heads(&client, &topic).await?;
        let applied = applied(pool, &key, &topic).await?;
        let (done, head): (i64, i64) = (applied.iter().sum(), heads.iter().sum());
        progress.update(
            done,
            head,
            done as f64 / started.elapsed().as_secs_f64().max(0.001),
        );
        if caught_up(&applied, &heads) && switch::<P>(pool, &client, &topic, &key, next).await? {
            break;
        }
    }
    if let Err(error) = sqlx::query(&format!("DROP TABLE IF EXISTS {old_table}"))
        .execute(pool)
        .await
    {
        warn!(%error, table = %old_table, "old generation not dropped");
    }
    // The old generation's record of commands goes with its table.
    if let Err(error) = sqlx::query("DELETE FROM projection_commands WHERE projection = $1")
        .bind(generation_key(P::NAME, current))
        .execute(pool)
        .await
    {
        warn!(%error, "old generation's commands not deleted");
    }
    let events = applied(pool, &key, &topic).await?.iter().sum();
    let report = RebuildReport {
        projection: P::NAME,
        generation: next,
        events,
        elapsed: started.elapsed(),
    };
    progress.finish(&report);
    info!(
        projection = P::NAME,
        generation = next,
        events,
        per_second = report.events_per_second(),
        "rebuild switched over"
    );
    Ok(report)
}

/// Whether the rebuild has applied every partition up to its head. A partition with no offset
/// row yet counts as 0 applied, so an empty partition (head 0) is caught up from the start.
fn caught_up(applied: &[i64], heads: &[i64]) -> bool {
    heads
        .iter()
        .enumerate()
        .all(|(partition, head)| applied.get(partition).copied().unwrap_or(0) >= *head)
}

/// Switches atomically if, under the generation lock, the new generation is still caught up.
async fn switch<P: Projection>(
    pool: &PgPool,
    client: &Arc<BaseConsumer>,
    topic: &str,
    key: &str,
    next: i32,
) -> Result<bool, RebuildError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT generation FROM projection_generations WHERE projection = $1 FOR UPDATE")
        .bind(P::NAME)
        .fetch_one(&mut *tx)
        .await?;
    let heads = heads(client, topic).await?;
    let applied = applied(&mut *tx, key, topic).await?;
    if !caught_up(&applied, &heads) {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(&format!(
        "CREATE OR REPLACE VIEW {} AS SELECT * FROM {}",
        P::NAME,
        generation_table(P::NAME, next)
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE projection_generations SET generation = $2, switched_at = now() WHERE projection = $1")
        .bind(P::NAME)
        .bind(next)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// High watermark of every partition of `topic`.
async fn heads(client: &Arc<BaseConsumer>, topic: &str) -> Result<Vec<i64>, RebuildError> {
    let (client, topic) = (client.clone(), topic.to_owned());
    let result =
        tokio::task::spawn_blocking(move || -> Result<Vec<i64>, rdkafka::error::KafkaError> {
            let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
            let partitions = metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len());
            (0..i32::try_from(partitions).unwrap_or(0))
                .map(|p| {
                    client
                        .fetch_watermarks(&topic, p, Duration::from_secs(5))
                        .map(|(_, high)| high)
                })
                .collect()
        })
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)?;
    Ok(result?)
}

/// The next offset stored for every partition (0 where nothing was applied yet).
async fn applied<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key: &str,
    topic: &str,
) -> Result<Vec<i64>, sqlx::Error> {
    let rows = sqlx::query("SELECT partition, next_offset FROM projection_offsets WHERE projection = $1 AND topic = $2 ORDER BY partition")
        .bind(key)
        .bind(topic)
        .fetch_all(executor)
        .await?;
    let mut by_partition: Vec<i64> = Vec::new();
    for row in rows {
        let partition = usize::try_from(row.try_get::<i32, _>("partition")?).unwrap_or(0);
        if by_partition.len() <= partition {
            by_partition.resize(partition + 1, 0);
        }
        by_partition[partition] = row.try_get("next_offset")?;
    }
    Ok(by_partition)
}

/// Progress on a terminal: a bar with events, events/s and lag.
#[derive(Debug)]
pub struct TerminalProgress(indicatif::ProgressBar);

impl TerminalProgress {
    pub fn new(projection: &str) -> Self {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{bar:40}] {pos}/{len} events  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(projection.to_owned());
        Self(bar)
    }
}

impl Progress for TerminalProgress {
    fn update(&self, applied: i64, head: i64, per_second: f64) {
        self.0.set_length(u64::try_from(head).unwrap_or(0));
        self.0.set_position(u64::try_from(applied).unwrap_or(0));
        self.0.set_message(format!(
            "{per_second:.0} events/s, lag {}",
            (head - applied).max(0)
        ));
    }

    fn finish(&self, report: &RebuildReport) {
        self.0.finish_with_message(format!(
            "switched to generation {} at {:.0} events/s",
            report.generation,
            report.events_per_second()
        ));
    }
}

/// Progress as log lines (not a terminal).
#[derive(Debug)]
pub struct LogProgress;

impl Progress for LogProgress {
    fn update(&self, applied: i64, head: i64, per_second: f64) {
        info!(
            applied,
            head,
            lag = (head - applied).max(0),
            per_second = per_second.round(),
            "rebuild progress"
        );
    }

    fn finish(&self, report: &RebuildReport) {
        info!(
            generation = report.generation,
            events = report.events,
            per_second = report.events_per_second().round(),
            "rebuild finished"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::caught_up;

    #[test]
    fn empty_partitions_without_offset_rows_are_caught_up() {
        assert!(caught_up(&[5], &[5, 0, 0]));
        assert!(caught_up(&[5, 0, 7], &[5, 0, 7]));
        assert!(!caught_up(&[5], &[5, 0, 1]));
        assert!(!caught_up(&[4, 9, 9], &[5, 0, 0]));
    }
}
