//! The partition's snapshot on Kafka (decision 0009). A new owner restores its model from the
//! compacted snapshots partition and replays only the events after the checkpoint; a snapshot
//! that is missing, undecodable, of another format or of another kind is counted
//! (`writer_snapshot_restores_total{outcome="fallback"}`), logged, and replaced by a replay of
//! every event: never wrong state. The writer writes its snapshot under its own transactional
//! id, so a fenced writer's snapshot never becomes visible, and only in a transaction whose
//! events (if any) come after the checkpoint: the snapshot never covers an event the log does
//! not hold, nor misses one before its checkpoint.

use std::time::Duration;

use futures::future::join_all;
use platform::polled_producer::DeliveryFuture;
use rdkafka::producer::FutureRecord;
use schemas::wire::snapshots::{Snapshot, CHECKPOINT_KEY};
use tracing::{info, warn};

use command_bus::snapshots::{CommandUses, CopyError};
use platform::spill::{SpillError, SpillFile};

use super::replay_memory::ReplayMemory;
use super::transaction::{self, TransactionFailure};
use super::Writer;
use crate::processor::partition::{PartitionModel, SnapshotPlan, SnapshotRecords};
use crate::processor::write_model::WriteModel;
use crate::processor::WriterContext;
use domain::AggregateKind;

/// How often a busy writer brings its snapshot up to date (in the transaction of the batch
/// that finds it due): a takeover replays at most about this much of the log.
pub(super) const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);

/// When a writer that starts serving now counts its last snapshot from: the intervals of a
/// process's writers (every kind's, every partition's) are spread evenly over one interval.
/// Writers that start together (all of a process's, at its start) would otherwise snapshot
/// together for as long as they run, and a snapshot rides in a batch whose commands wait for
/// its records: six partitions' snapshots at the same moment (over a thousand records each at
/// 1,000 commands/s) held every partition's batches for up to 226 ms, and those moments made
/// the p99.
pub(super) fn counted_from(
    kind: AggregateKind,
    partition: i32,
    partitions: i32,
) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_sub(snapshot_phase(kind, partition, partitions))
        .unwrap_or(now)
}

/// How much of its first interval a writer counts as passed (see [`counted_from`]): slot
/// `partition x kinds + kind` of `partitions x kinds`, so one kind's partitions are as far
/// apart as they can be, and the kinds' writers of a partition apart too.
fn snapshot_phase(kind: AggregateKind, partition: i32, partitions: i32) -> Duration {
    let kinds = AggregateKind::ALL.len() as f64;
    let kind_slot = AggregateKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0) as f64;
    let partitions = partitions.max(1);
    let partition_slot = f64::from(partition.rem_euclid(partitions));
    let slot = partition_slot * kinds + kind_slot;
    SNAPSHOT_INTERVAL.mul_f64(slot / (f64::from(partitions) * kinds))
}

/// A takeover that replayed at least this many offsets writes a snapshot before it serves, so
/// the next owner does not replay them again.
pub(super) const SNAPSHOT_AFTER_REPLAY: i64 = 10_000;

/// The most records a snapshot may add to a batch's transaction; a larger one (the first after
/// a long replay, or after a burst over many aggregates) is written on its own, in chunks.
const MAX_SNAPSHOT_RECORDS_IN_A_BATCH: usize = 2_000;

/// Records per transaction of a snapshot written on its own: well within the producer's queue
/// and the transaction timeout.
const SNAPSHOT_CHUNK: usize = 5_000;

/// Records built, encoded and queued at a time within such a transaction: the producer keeps
/// the encoded records until they are acknowledged, so the writer need not hold a whole
/// chunk's records (each aggregate's state, decoded) beside them. Twelve writers replaying at
/// once each held a snapshot of about 1,500 aggregates whole: 23 MiB at the process's peak.
const SNAPSHOT_PART: usize = 250;

/// What a takeover starts from.
pub(super) struct Restored<A: WriteModel>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    pub(super) model: PartitionModel<A>,
    /// The events offset to replay from.
    pub(super) events_end: i64,
    /// The aggregates the model does not hold in memory (decision 0012).
    pub(super) spilled: SpillFile,
}

/// Reads partition `partition` of the kind's snapshots topic into a file of its own and
/// restores the model from it, holding no aggregate in memory: each comes back from the file
/// when a command or an event needs it. An empty model at offset 0 (and an empty file) when
/// there is no snapshot or it cannot be used (then the writer replays every event).
pub(super) async fn restore<A: WriteModel>(
    ctx: &WriterContext,
    partition: i32,
) -> Result<Restored<A>, SpillError>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    let topic = ctx.topics.snapshots(A::KIND);
    let outcome = |outcome: &'static str| {
        metrics::counter!("writer_snapshot_restores_total", "aggregate" => A::KIND.as_str(), "outcome" => outcome)
            .increment(1);
    };
    let replay = |spilled| Restored {
        model: PartitionModel::new(partition, ctx.partitions, ctx.window),
        events_end: 0,
        spilled,
    };
    let started = std::time::Instant::now();
    let spilled = spill_file::<A>(ctx, partition)?;
    let (mut spilled, records) = match command_bus::snapshots::copy_partition(
        &ctx.kafka, &topic, partition, spilled,
    )
    .await
    {
        Ok((spilled, 0)) => {
            outcome("none");
            return Ok(replay(spilled));
        }
        Ok(copied) => copied,
        Err(error) => {
            outcome("fallback");
            warn!(kind = %A::KIND, partition, %topic, %error, "snapshot unreadable; replaying every event instead");
            return Ok(replay(spill_file::<A>(ctx, partition)?));
        }
    };
    let copied_ms = super::millis_since(started);
    // Every record decoded and checked: up to seconds for a large partition, off the runtime.
    match platform::runtime::blocking(|| restore_from_file::<A>(ctx, partition, &mut spilled)).await
    {
        Ok((model, events_end)) => {
            outcome("restored");
            let elapsed_ms = super::millis_since(started);
            info!(kind = %A::KIND, partition, records, events_end, copied_ms, elapsed_ms, "partition state restored from its snapshot");
            Ok(Restored {
                model,
                events_end,
                spilled,
            })
        }
        Err(error) => {
            outcome("fallback");
            warn!(kind = %A::KIND, partition, %topic, %error, "snapshot unusable; replaying every event instead");
            // What the unusable snapshot left in the file must never be taken back.
            Ok(replay(spill_file::<A>(ctx, partition)?))
        }
    }
}

/// A new, empty file for the writer's spilled aggregates.
pub(super) fn spill_file<A: WriteModel>(
    ctx: &WriterContext,
    partition: i32,
) -> Result<SpillFile, SpillError>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    SpillFile::create(
        &ctx.memory.state_dir,
        &format!("writer-{}-p{partition}", A::KIND),
    )
}

/// Checks every record of the snapshot copied to `spilled` (all or nothing, as
/// [`command_bus::snapshots`] says), leaves the aggregates' records and the command uses in the
/// file (decision 0015), and returns the model without them.
fn restore_from_file<A: WriteModel>(
    ctx: &WriterContext,
    partition: i32,
    spilled: &mut SpillFile,
) -> Result<(PartitionModel<A>, i64), CopyError>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    let restored =
        command_bus::snapshots::restore_copied(A::KIND, ctx.window, spilled, CommandUses::InFile)?;
    spilled.remove(CHECKPOINT_KEY.to_owned())?;
    spilled.flush()?;
    Ok(PartitionModel::restored(
        partition,
        ctx.partitions,
        ctx.window,
        restored,
    )?)
}

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// How many records a snapshot would write now, if one is due.
    fn snapshot_due(&mut self) -> Option<usize> {
        if self.last_snapshot.elapsed() < SNAPSHOT_INTERVAL {
            return None;
        }
        self.model.unsnapshotted_changes().filter(|n| *n > 0)
    }

    /// The snapshot to write with the next batch, when one is due, anything changed, and it is
    /// small enough to ride along: the model as it stands before the batch, checkpointed at
    /// the last record this writer has judged. A larger one is written on its own first.
    pub(super) async fn due_snapshot(&mut self) -> Option<SnapshotRecords> {
        let records = self.snapshot_due()?;
        if records > MAX_SNAPSHOT_RECORDS_IN_A_BATCH {
            self.snapshot_alone().await;
            return None;
        }
        Some(self.model.snapshot_records(self.next_offset))
    }

    /// Queues the snapshot's records in the open transaction; `None` when one could not be
    /// queued (the transaction is then aborted).
    pub(super) fn send_snapshot(
        &self,
        records: &[(String, Option<Snapshot>)],
    ) -> Option<Vec<DeliveryFuture>> {
        let topic = self.ctx.topics.snapshots(A::KIND);
        let mut deliveries = Vec::with_capacity(records.len());
        for (key, record) in records {
            let payload = match record.as_ref().map(schemas::encode).transpose() {
                Ok(payload) => payload,
                Err(error) => {
                    warn!(%error, %key, "snapshot record does not fit its schema");
                    return None;
                }
            };
            let mut out = FutureRecord::<str, [u8]>::to(&topic)
                .partition(self.partition)
                .key(key.as_str());
            if let Some(payload) = &payload {
                out = out.payload(payload.as_slice());
            }
            match self.producer.send_result(out) {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => {
                    platform::kafka::count_producer_error("command-writer-snapshot");
                    warn!(%error, "snapshot record not queued");
                    return None;
                }
            }
        }
        Some(deliveries)
    }

    /// The snapshot committed with a batch: what it wrote is clean (see [`Self::after_snapshot`]).
    pub(super) fn snapshot_committed(&mut self, snapshot: &SnapshotRecords) {
        self.model.snapshot_committed(snapshot);
        self.after_snapshot();
    }

    /// After a snapshot committed: what is clean and old leaves memory for the writer's file.
    /// A file that cannot take it fails the writer's next batch, which restarts the writer
    /// (see `spill`).
    fn after_snapshot(&mut self) {
        self.last_snapshot = std::time::Instant::now();
        self.snapshot_failed_at = None;
        if let Some(replay) = &mut self.replay {
            replay.after_snapshot();
        }
        metrics::counter!("writer_snapshots_written_total", "aggregate" => A::KIND.as_str())
            .increment(1);
        self.spill();
    }

    /// A snapshot that could not be written: the batch that carried it is tried again without
    /// one, and the next attempt waits a whole interval. What it would have written stays to
    /// be written.
    pub(super) fn snapshot_failed(&mut self) {
        self.last_snapshot = std::time::Instant::now();
        self.snapshot_failed_at = Some(self.last_snapshot);
        metrics::counter!("writer_snapshot_failures_total", "aggregate" => A::KIND.as_str())
            .increment(1);
    }

    /// A snapshot in transactions of its own (nothing else in them), in chunks of
    /// [`SNAPSHOT_CHUNK`] records, each built and queued [`SNAPSHOT_PART`] records at a time:
    /// the first transaction deletes the checkpoint and the last writes the new one, so until
    /// the last commits a restore finds no checkpoint and replays instead. A replay from the
    /// start writes only the changed aggregates, after deleting the checkpoint
    /// (`replay_memory`). The model does not change meanwhile (the writer is busy here). A
    /// failure is logged and counted, never the caller's: the writer serves on, and what was
    /// not written stays to be written.
    pub(super) async fn snapshot_alone(&mut self) {
        if self.model.unsnapshotted_changes().is_none_or(|n| n == 0) {
            return;
        }
        // A replay from the start writes only the aggregates that changed (`replay_memory`).
        let restore_point = self
            .replay
            .as_mut()
            .is_none_or(ReplayMemory::next_snapshot_restores);
        let plan = if restore_point {
            self.model.snapshot_plan(self.next_offset)
        } else {
            self.model.aggregates_plan()
        };
        let total = plan.len();
        // More than one transaction, or no restore point: the first deletes the checkpoint.
        let first_deletes_the_checkpoint = total > SNAPSHOT_CHUNK || !plan.checkpoints();
        for start in (0..total).step_by(SNAPSHOT_CHUNK) {
            let chunk = start..(start + SNAPSHOT_CHUNK).min(total);
            let delete_checkpoint = start == 0 && first_deletes_the_checkpoint;
            if let Err(failure) = self.commit_alone(&plan, chunk, delete_checkpoint).await {
                self.snapshot_failed();
                warn!(kind = %A::KIND, partition = self.partition, error = %failure, "snapshot not written; the next one writes it");
                return;
            }
        }
        self.model.plan_committed(&plan);
        self.after_snapshot();
        info!(kind = %A::KIND, partition = self.partition, records = total, events_end = self.next_offset, "snapshot written in transactions of its own");
    }

    /// One transaction holding the records at positions `chunk` of `plan` (after a tombstone
    /// for the checkpoint when `delete_checkpoint`) and nothing else.
    async fn commit_alone(
        &self,
        plan: &SnapshotPlan,
        chunk: std::ops::Range<usize>,
        delete_checkpoint: bool,
    ) -> Result<(), TransactionFailure> {
        transaction::begin(&self.producer)?;
        let delivered = match self.send_planned(plan, chunk, delete_checkpoint) {
            Some(deliveries) => acknowledged(deliveries).await,
            None => false,
        };
        let committed = if delivered {
            transaction::commit(&self.producer).await
        } else {
            Err(TransactionFailure::NotAcknowledged)
        };
        if committed.is_err() {
            // A producer that cannot abort fails the next batch's `begin`, which restarts it.
            let _ = transaction::abort(&self.producer).await;
        }
        committed
    }

    /// Queues the records at positions `chunk` of `plan` in the open transaction, built
    /// [`SNAPSHOT_PART`] at a time; `None` when one could not be queued.
    fn send_planned(
        &self,
        plan: &SnapshotPlan,
        chunk: std::ops::Range<usize>,
        delete_checkpoint: bool,
    ) -> Option<Vec<DeliveryFuture>> {
        let mut deliveries = Vec::with_capacity(chunk.len() + 1);
        if delete_checkpoint {
            deliveries.extend(self.send_snapshot(&[(CHECKPOINT_KEY.to_owned(), None)])?);
        }
        for start in chunk.clone().step_by(SNAPSHOT_PART) {
            let part = start..(start + SNAPSHOT_PART).min(chunk.end);
            deliveries.extend(self.send_snapshot(&self.model.planned_records(plan, part))?);
        }
        Some(deliveries)
    }
}

/// Whether the broker acknowledged every record.
pub(super) async fn acknowledged(deliveries: Vec<DeliveryFuture>) -> bool {
    let delivered = join_all(deliveries)
        .await
        .into_iter()
        .all(|d| matches!(d, Ok(Ok(_))));
    if !delivered {
        platform::kafka::count_producer_error("command-writer-snapshot");
    }
    delivered
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use domain::AggregateKind;

    use super::{counted_from, snapshot_phase, SNAPSHOT_INTERVAL};

    const INVENTORY: AggregateKind = AggregateKind::InventoryItem;

    #[test]
    fn one_kinds_partitions_are_spread_evenly_over_one_interval() {
        let phases: Vec<_> = (0..6).map(|p| snapshot_phase(INVENTORY, p, 6)).collect();
        assert!(phases.windows(2).all(|w| w[1] > w[0]));
        let gaps: Vec<_> = phases.windows(2).map(|w| w[1] - w[0]).collect();
        let even = SNAPSHOT_INTERVAL / 6;
        assert!(gaps
            .iter()
            .all(|gap| gap.abs_diff(even) < Duration::from_millis(1)));
        assert!(phases[5] < SNAPSHOT_INTERVAL);
    }

    #[test]
    fn the_kinds_writers_of_one_partition_are_apart_too() {
        let phases: Vec<_> = AggregateKind::ALL
            .iter()
            .map(|kind| snapshot_phase(*kind, 2, 6))
            .collect();
        assert!(phases.windows(2).all(|w| w[1] > w[0]));
        assert!(phases[4] < snapshot_phase(AggregateKind::ALL[0], 3, 6));
    }

    #[test]
    fn one_partition_or_a_stray_number_still_gets_a_phase_within_the_interval() {
        let first = AggregateKind::ALL[0];
        assert_eq!(snapshot_phase(first, 0, 1), Duration::ZERO);
        assert_eq!(snapshot_phase(first, 3, 0), Duration::ZERO);
        assert_eq!(
            snapshot_phase(INVENTORY, 7, 6),
            snapshot_phase(INVENTORY, 1, 6)
        );
        assert_eq!(
            snapshot_phase(INVENTORY, -1, 6),
            snapshot_phase(INVENTORY, 5, 6)
        );
    }

    #[test]
    fn a_writer_counts_its_last_snapshot_as_its_phase_ago() {
        let phase = snapshot_phase(INVENTORY, 3, 6);
        assert!(phase > Duration::ZERO);
        assert!(counted_from(INVENTORY, 3, 6).elapsed() >= phase);
    }
}
