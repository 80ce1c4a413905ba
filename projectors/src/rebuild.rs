//! Blue/green rebuild of one projection. The next generation's table is created with the same
//! definition as the current one (`LIKE ... INCLUDING ALL`, so the schema stays the migration's),
//! filled from offset 0 by a runner with its own consumer group while the live projection keeps
//! serving and consuming. Once it has caught up with every partition's head (by its consumer's
//! position and what lies past its stored offsets, see `Standing`: transaction markers and
//! aborted records keep stored offsets below the heads), one transaction (which waits for the
//! live batch in progress, via the generation row's lock) repoints the view and bumps the
//! generation; the live runner then continues on the new generation, skipping
//! everything at or below the rebuild's offsets. The old table is dropped afterwards.
//!
//! Records operators skipped stay skipped: `operator_skips` is keyed by the projection's name,
//! not its generation, so the new generation passes over them as the live one did (no new dead
//! letter, no parking, no anomaly) and ends with the same rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform::config::KafkaSettings;
use platform::kafka::producer_config;
use platform::log_end::{Extent, Gap, LogEnds};
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

/// Events per rebuild batch.
const REBUILD_BATCH: usize = 5_000;

/// How a rebuild reports progress (a terminal bar, or log lines). `applied` and `head` are
/// offsets summed over partitions: transaction markers and aborted records take offsets too, so
/// `head - applied` is an upper bound on what is left and need not reach 0.
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
    // Up to five batches are in memory at once (consumed, waiting, prepared, waiting, written):
    // at 20,000 events each the rebuild's peak passed 350 MiB; at 5,000 it stays near a live
    // projector's.
    let limits = BatchLimits {
        max_events: REBUILD_BATCH,
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
    let ends = Arc::new(LogEnds::new(kafka)?);
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
        let heads = heads(&ends, &topic).await?;
        let applied = applied(pool, &key, &topic).await?;
        let (done, head): (i64, i64) = (applied.iter().sum(), heads.iter().map(|h| h.end).sum());
        progress.update(
            done,
            head,
            done as f64 / started.elapsed().as_secs_f64().max(0.001),
        );
        let read = positions(&runner, &heads);
        if caught_up(&ends, &topic, &applied, &heads, &read).await?
            && switch::<P>(pool, &ends, &topic, &key, next, &read).await?
        {
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
    // Counted, not summed from the stored offsets: markers and aborted records take offsets.
    let events = i64::try_from(runner.records_handled()).unwrap_or(i64::MAX);
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

/// Where the rebuild stands on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// The stored offset is at the head (or nothing readable is left below it).
    Applied,
    /// The consumer has read up to the head, but the stored offset (the offset after the last
    /// applied record) is below it: always so for a partition ending with a commit marker.
    /// Caught up if only transaction markers and aborted records lie in `from..until`; not
    /// from the position alone, since records the consumer handed over may not be applied yet.
    Confirm { from: i64, until: i64 },
    /// The consumer has not read up to the head yet.
    Behind,
}

/// Where the rebuild stands on each partition: `applied` by partition index (a partition with
/// no offset row counts as 0, so an empty partition, head 0, is applied from the start),
/// `position` the rebuild consumer's position on a partition.
fn standings(
    applied: &[i64],
    heads: &[Extent],
    position: impl Fn(i32) -> Option<i64>,
) -> Vec<(i32, Standing)> {
    heads
        .iter()
        .map(|head| {
            let done = usize::try_from(head.partition)
                .ok()
                .and_then(|p| applied.get(p))
                .copied()
                .unwrap_or(0);
            let standing = if done.max(head.start) >= head.end {
                Standing::Applied
            } else if position(head.partition).is_some_and(|p| p >= head.end) {
                Standing::Confirm {
                    from: done,
                    until: head.end,
                }
            } else {
                Standing::Behind
            };
            (head.partition, standing)
        })
        .collect()
}

/// The rebuild consumer's position on each partition of `heads` it has read from. Positions
/// only grow (the rebuild's group has one member, which seeks only on assignment), so ones
/// taken earlier are safe lower bounds.
fn positions<P: Projection>(runner: &Runner<P>, heads: &[Extent]) -> HashMap<i32, i64> {
    heads
        .iter()
        .filter_map(|h| Some((h.partition, runner.position(h.partition)?)))
        .collect()
}

/// Whether the rebuild has applied every committed record below every partition's head.
/// Compares positions and reads what lies past the stored offsets, never the stored offsets
/// with the heads alone: with transactional writers a commit marker follows the last record,
/// so the stored offset of a fully applied partition stays below its head.
async fn caught_up(
    ends: &Arc<LogEnds>,
    topic: &str,
    applied: &[i64],
    heads: &[Extent],
    read: &HashMap<i32, i64>,
) -> Result<bool, RebuildError> {
    // Every topic has a partition: none means its metadata was not read, not that it is empty.
    if heads.is_empty() {
        return Ok(false);
    }
    let mut confirm = Vec::new();
    for (partition, standing) in standings(applied, heads, |p| read.get(&p).copied()) {
        match standing {
            Standing::Applied => {}
            Standing::Behind => return Ok(false),
            Standing::Confirm { from, until } => confirm.push((partition, from, until)),
        }
    }
    if confirm.is_empty() {
        return Ok(true);
    }
    only_markers_between(ends, topic, confirm).await
}

/// Whether each `(partition, from, until)` of `topic` holds no committed record (only
/// transaction markers and aborted records). A read that does not get through in time counts
/// as "there may be one": the rebuild looks again on its next round.
async fn only_markers_between(
    ends: &Arc<LogEnds>,
    topic: &str,
    ranges: Vec<(i32, i64, i64)>,
) -> Result<bool, RebuildError> {
    let (ends, topic) = (ends.clone(), topic.to_owned());
    let result =
        tokio::task::spawn_blocking(move || -> Result<bool, rdkafka::error::KafkaError> {
            for (partition, from, until) in ranges {
                let gap = ends.gap(&topic, partition, from, until, Duration::from_secs(5))?;
                if gap != Gap::Empty {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)?;
    Ok(result?)
}

/// Switches atomically if, under the generation lock, the new generation is still caught up.
async fn switch<P: Projection>(
    pool: &PgPool,
    ends: &Arc<LogEnds>,
    topic: &str,
    key: &str,
    next: i32,
    read: &HashMap<i32, i64>,
) -> Result<bool, RebuildError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT generation FROM projection_generations WHERE projection = $1 FOR UPDATE")
        .bind(P::NAME)
        .fetch_one(&mut *tx)
        .await?;
    let heads = heads(ends, topic).await?;
    let applied = applied(&mut *tx, key, topic).await?;
    if !caught_up(ends, topic, &applied, &heads, read).await? {
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

/// Every partition's extent of `topic`. Its end is the last stable offset: the rebuild reads
/// committed, so nothing past it is readable yet (and once the transaction open there commits,
/// the live runner applies its records to the new generation).
async fn heads(ends: &Arc<LogEnds>, topic: &str) -> Result<Vec<Extent>, RebuildError> {
    let (ends, topic) = (ends.clone(), topic.to_owned());
    let result = tokio::task::spawn_blocking(move || ends.extents(&topic, Duration::from_secs(5)))
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
    use platform::log_end::Extent;

    use super::{standings, Standing};

    fn heads(ends: &[i64]) -> Vec<Extent> {
        ends.iter()
            .zip(0..)
            .map(|(end, partition)| Extent {
                partition,
                start: 0,
                end: *end,
            })
            .collect()
    }

    fn only(standings: Vec<(i32, Standing)>) -> Vec<Standing> {
        standings.into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn empty_partitions_without_offset_rows_are_caught_up() {
        let never_read = |_: i32| None::<i64>;
        assert_eq!(
            only(standings(&[5], &heads(&[5, 0, 0]), never_read)),
            [Standing::Applied; 3]
        );
        assert_eq!(
            only(standings(&[5, 0, 7], &heads(&[5, 0, 7]), never_read)),
            [Standing::Applied; 3]
        );
        assert_eq!(
            only(standings(&[5], &heads(&[5, 0, 1]), never_read))[2],
            Standing::Behind
        );
        assert_eq!(
            only(standings(&[4, 9, 9], &heads(&[5, 0, 0]), never_read))[0],
            Standing::Behind
        );
    }

    #[test]
    fn a_partition_ending_with_a_marker_is_confirmed_once_read_past_it() {
        // Records 0..=3 applied (stored 4), the commit marker at 4: the head is 5.
        let head = heads(&[5]);
        assert_eq!(
            only(standings(&[4], &head, |_| Some(4))),
            [Standing::Behind],
            "the marker is not served yet"
        );
        assert_eq!(
            only(standings(&[4], &head, |_| Some(5))),
            [Standing::Confirm { from: 4, until: 5 }]
        );
        // Only an aborted transaction: no offset row, the consumer read past its marker.
        assert_eq!(
            only(standings(&[], &heads(&[3]), |_| Some(3))),
            [Standing::Confirm { from: 0, until: 3 }]
        );
    }
}
