//! The partition model to and from its snapshot (pure). A snapshot is a set of keyed records
//! (compacted: the newest per key counts): one per aggregate (its chain head and state), one per
//! command use the window remembers, and a checkpoint saying which events it covers and the
//! log-order clock after them. The model remembers what changed since its last snapshot (with
//! a sequence number, so a snapshot whose transaction aborts loses nothing: only what it wrote
//! and nothing changed since is cleared, on commit).

use std::collections::{HashMap, HashSet};

use command_bus::snapshots::{self, command_key, command_use, RestoredLog, SNAPSHOT_FORMAT};
use domain::{Current, Version};
use platform::log_order::CommandWindow;
use schemas::wire::snapshots::{Checkpoint, Snapshot, CHECKPOINT_KEY, COMMAND_KEY_PREFIX};

use super::PartitionModel;
use crate::processor::write_model::WriteModel;

/// What changed since the last snapshot that committed: key -> the change's sequence number.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    seq: u64,
    aggregates: HashMap<String, u64>,
    commands: HashMap<String, u64>,
    /// The command uses the snapshot holds and memory too (those in the writer's file are
    /// forgotten there, decision 0015): only those need deleting when the window forgets them.
    written_commands: HashSet<String>,
    /// An aggregate id that could be taken for a snapshot's own key (only a producer other
    /// than the writers appends such ids): this partition is never snapshotted.
    unsafe_key: bool,
}

impl Dirty {
    /// Whether the aggregate changed since the last snapshot that committed.
    pub(super) fn holds(&self, aggregate_id: &str) -> bool {
        self.aggregates.contains_key(aggregate_id)
    }

    /// Whether the command use changed since the last snapshot that committed (or is to be
    /// deleted by the next).
    pub(super) fn holds_command(&self, command_id: &str) -> bool {
        self.commands.contains_key(command_id)
    }

    /// A use that left memory for the writer's file: the file says when it is forgotten (see
    /// [`Dirty::forgotten_elsewhere`]), so it is no longer tracked here.
    pub(super) fn written_out(&mut self, command_id: &str) {
        self.written_commands.remove(command_id);
    }

    /// A use the snapshot holds and the window forgot where it was kept: the next snapshot
    /// deletes it.
    pub(super) fn forgotten_elsewhere(&mut self, command_id: &str) {
        self.command(command_id);
    }

    fn aggregate(&mut self, id: &str) {
        self.seq += 1;
        self.aggregates.insert(id.to_owned(), self.seq);
    }

    fn command(&mut self, id: &str) {
        self.seq += 1;
        self.commands.insert(id.to_owned(), self.seq);
    }
}

/// The records of one snapshot, and the point of the model they were taken at.
#[derive(Debug)]
pub(crate) struct SnapshotRecords {
    /// (key, record); `None` deletes the key (a use the window forgot).
    pub(crate) records: Vec<(String, Option<Snapshot>)>,
    taken_at: u64,
}

/// A snapshot to be written in parts: the keys it writes, in order (see
/// [`PartitionModel::planned_records`]), and the point of the model it was taken at.
#[derive(Debug)]
pub(crate) struct SnapshotPlan {
    aggregates: Vec<String>,
    commands: Vec<String>,
    /// The events offset its checkpoint covers up to, when it ends with one (a restore
    /// point); one without holds only aggregates.
    checkpoint: Option<i64>,
    taken_at: u64,
}

impl SnapshotPlan {
    /// How many records the snapshot writes at most (an aggregate the model no longer holds is
    /// skipped), the checkpoint included.
    pub(crate) fn len(&self) -> usize {
        self.aggregates.len() + self.commands.len() + usize::from(self.checkpoint.is_some())
    }

    /// Whether the snapshot ends with a checkpoint: a restore point.
    pub(crate) fn checkpoints(&self) -> bool {
        self.checkpoint.is_some()
    }
}

pub(crate) use snapshots::RestoreError;

impl<A: WriteModel> PartitionModel<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Notes an aggregate whose head or state moved, and the command behind it.
    pub(super) fn changed(&mut self, aggregate_id: &str, command_id: Option<&str>) {
        if aggregate_id.starts_with('~') {
            self.dirty.unsafe_key = true;
        }
        self.dirty.aggregate(aggregate_id);
        if let Some(command_id) = command_id {
            self.dirty.command(command_id);
        }
        self.settle_forgotten();
    }

    /// Takes the uses the window forgot since the last call: one the snapshot holds is to be
    /// deleted, one it never held is dropped from what is to be written. Done as uses are
    /// recorded, so replaying a long log keeps a window of command ids here, not every one read.
    pub(super) fn settle_forgotten(&mut self) {
        for forgotten in self.log.take_forgotten() {
            if self.dirty.written_commands.contains(&forgotten) {
                self.dirty.command(&forgotten);
            } else {
                // Never written: nothing to delete.
                self.dirty.commands.remove(&forgotten);
            }
        }
    }

    /// How many command ids are held to be written or deleted by the next snapshot.
    #[cfg(test)]
    pub(crate) fn commands_to_snapshot(&self) -> usize {
        self.dirty.commands.len()
    }

    /// How many records a snapshot taken now would write (0: nothing changed); `None` when
    /// this partition cannot be snapshotted safely.
    pub(crate) fn unsnapshotted_changes(&mut self) -> Option<usize> {
        self.settle_forgotten();
        if self.dirty.unsafe_key {
            return None;
        }
        Some(self.dirty.aggregates.len() + self.dirty.commands.len())
    }

    /// Whether anything changed since the last snapshot that committed.
    #[cfg(test)]
    pub(crate) fn has_unsnapshotted_changes(&mut self) -> bool {
        self.unsnapshotted_changes().is_some_and(|n| n > 0)
    }

    /// The records that bring the snapshot up to the model as it is, covering every event
    /// before `events_end` (everything this model has judged).
    pub(crate) fn snapshot_records(&mut self, events_end: i64) -> SnapshotRecords {
        let plan = self.snapshot_plan(events_end);
        SnapshotRecords {
            records: self.planned_records(&plan, 0..plan.len()),
            taken_at: plan.taken_at,
        }
    }

    /// What a snapshot taken now writes, as keys: its records are built part by part
    /// ([`Self::planned_records`]), so a large snapshot is never held whole in memory. Only
    /// valid while the model does not change (the writer holds it until the last part commits).
    pub(crate) fn snapshot_plan(&mut self, events_end: i64) -> SnapshotPlan {
        self.plan(Some(events_end))
    }

    /// Like [`Self::snapshot_plan`], but only the aggregates that changed: no command use and no
    /// checkpoint, so it is no restore point (the writer deletes the checkpoint before it
    /// writes one). What a replay writes between its restore points so that aggregates can
    /// leave memory (decision 0012): a command use is written at most once a restore point,
    /// not at every such snapshot only to be deleted at the next, once the window forgot it.
    pub(crate) fn aggregates_plan(&mut self) -> SnapshotPlan {
        self.plan(None)
    }

    /// The changed aggregates, and with a `checkpoint` (a restore point) the command uses too.
    fn plan(&mut self, checkpoint: Option<i64>) -> SnapshotPlan {
        let _ = self.unsnapshotted_changes();
        let commands = match checkpoint {
            Some(_) => self.dirty.commands.keys().cloned().collect(),
            None => Vec::new(),
        };
        SnapshotPlan {
            aggregates: self.dirty.aggregates.keys().cloned().collect(),
            commands,
            checkpoint,
            taken_at: self.dirty.seq,
        }
    }

    /// The records at positions `range` of `plan` (aggregates, then command uses, then the
    /// checkpoint, which comes last so the snapshot's last transaction writes it).
    pub(crate) fn planned_records(
        &self,
        plan: &SnapshotPlan,
        range: std::ops::Range<usize>,
    ) -> Vec<(String, Option<Snapshot>)> {
        let (aggregates, commands) = (plan.aggregates.len(), plan.commands.len());
        let mut records = Vec::with_capacity(range.len());
        for at in range {
            if let Some(aggregate_id) = plan.aggregates.get(at) {
                if let Some(record) = self.aggregate_record(aggregate_id) {
                    records.push((aggregate_id.clone(), Some(record)));
                }
            } else if let Some(command_id) = plan.commands.get(at - aggregates) {
                let record = self
                    .log
                    .command(command_id)
                    .map(|r| Snapshot::CommandUse(command_use(command_id, r)));
                records.push((command_key(command_id), record));
            } else if let (true, Some(events_end)) = (at == aggregates + commands, plan.checkpoint)
            {
                records.push((CHECKPOINT_KEY.to_owned(), Some(self.checkpoint(events_end))));
            }
        }
        records
    }

    /// An aggregate's snapshot record: its chain head and state (none when it is unreadable).
    fn aggregate_record(&self, aggregate_id: &str) -> Option<Snapshot> {
        let head = self.log.head(aggregate_id)?;
        let unreadable = self.unreadable.contains(aggregate_id);
        let head = command_bus::snapshots::head_record(aggregate_id, head, unreadable);
        let state = if unreadable {
            None
        } else {
            self.states.get(aggregate_id).map(|c| &c.state)
        };
        Some(A::snapshot(head, state))
    }

    /// The checkpoint record of a snapshot covering every event before `events_end`.
    fn checkpoint(&self, events_end: i64) -> Snapshot {
        Snapshot::Checkpoint(Checkpoint {
            format: SNAPSHOT_FORMAT,
            events_end,
            clock: self.log.clock(),
            window_ms: self.log.window().millis(),
            aggregates: self.chains,
        })
    }

    /// The snapshot planned as `plan` committed whole: what it wrote and did not change since
    /// is clean. The model has not changed since the plan, so a command use it wrote is one
    /// the log still holds, and one it deleted is one the log has forgotten.
    pub(crate) fn plan_committed(&mut self, plan: &SnapshotPlan) {
        if plan.checkpoints() {
            self.clean_up_to(plan.taken_at);
        } else {
            // Command uses were not written: they stay to be written by a restore point.
            self.dirty.aggregates.retain(|_, seq| *seq > plan.taken_at);
        }
        for command_id in &plan.commands {
            if self.log.command(command_id).is_some() {
                self.dirty.written_commands.insert(command_id.clone());
            } else {
                self.dirty.written_commands.remove(command_id);
            }
        }
    }

    /// Clears what changed at or before sequence number `at`.
    fn clean_up_to(&mut self, at: u64) {
        self.dirty.aggregates.retain(|_, seq| *seq > at);
        self.dirty.commands.retain(|_, seq| *seq > at);
    }

    /// The snapshot `taken` committed: what it wrote and did not change since is clean. A use
    /// it wrote that the window forgot meanwhile (the batch that carried the snapshot moved
    /// the clock) was forgotten before the snapshot held it, so nothing deleted it: the next
    /// snapshot does.
    pub(crate) fn snapshot_committed(&mut self, taken: &SnapshotRecords) {
        self.clean_up_to(taken.taken_at);
        for (key, record) in &taken.records {
            let Some(command_id) = key.strip_prefix(COMMAND_KEY_PREFIX) else {
                continue;
            };
            match record {
                Some(_) if self.log.command(command_id).is_some() => {
                    self.dirty.written_commands.insert(command_id.to_owned());
                }
                Some(_) => self.dirty.command(command_id),
                None => {
                    self.dirty.written_commands.remove(command_id);
                }
            }
        }
    }

    /// The model a snapshot's records (key and record, `None` for a deleted key, in log order)
    /// describe, and the events offset to replay from.
    #[cfg(test)]
    pub(crate) fn restore(
        partition: i32,
        partitions: i32,
        window: CommandWindow,
        records: impl IntoIterator<Item = (String, Option<Snapshot>)>,
    ) -> Result<(Self, i64), RestoreError> {
        let restored = snapshots::restore_log(A::KIND, window, records)?;
        Self::restored(partition, partitions, window, restored)
    }

    /// The model a restored snapshot describes, and the events offset to replay from. Its
    /// aggregates are those `restored` kept (none when the writer keeps them on disk).
    pub(crate) fn restored(
        partition: i32,
        partitions: i32,
        window: CommandWindow,
        restored: RestoredLog,
    ) -> Result<(Self, i64), RestoreError> {
        let mut states = HashMap::with_capacity(restored.aggregates.len());
        for aggregate in restored.aggregates {
            let key = aggregate
                .head()
                .map(|head| head.aggregate_id.clone())
                .unwrap_or_default();
            let (head, state) = A::restored(aggregate).ok_or(RestoreError::ForeignRecord {
                key,
                kind: A::KIND.as_str(),
            })?;
            let version = Version::new(head.version);
            states.insert(head.aggregate_id, Current { state, version });
        }
        let checkpoint = restored.checkpoint;
        let mut model = Self::new(partition, partitions, window);
        model.log = restored.log;
        model.states = states;
        model.chains = checkpoint.aggregates;
        model.dirty.written_commands = restored.command_ids.into_iter().collect();
        Ok((model, checkpoint.events_end))
    }
}
