//! Which aggregates the model holds in memory (decision 0012). An order is touched for a few
//! minutes of its life and then never again, so a writer holding every aggregate its partition
//! ever saw grows with the log. The model holds the aggregates with the newest events and those
//! a snapshot has not written yet; the writer keeps the others in a file of its own, as their
//! snapshot records, and gives one back before the model judges an event of it or decides a
//! command on it. Pure: the writer does the file's I/O.

use command_bus::snapshots::{chain_head, head_record, RestoreError};
use domain::{Current, Version};
use schemas::wire::snapshots::Snapshot;

use super::PartitionModel;
use crate::processor::write_model::WriteModel;

impl<A: WriteModel> PartitionModel<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Whether the aggregate is in memory: when it is not, the writer gives it back (if it holds
    /// it) before the model judges or decides anything of it, or the model takes it for new.
    pub(crate) fn holds(&self, aggregate_id: &str) -> bool {
        self.log.head(aggregate_id).is_some()
    }

    /// How many aggregates are in memory.
    pub(crate) fn resident(&self) -> usize {
        self.log.aggregates()
    }

    /// How many aggregates have a chain in this partition, in memory or not.
    pub(crate) fn chains(&self) -> u64 {
        self.chains
    }

    /// Takes back an aggregate the writer kept out of memory, as [`Self::spill`] gave it.
    pub(crate) fn take_back(&mut self, record: Snapshot) -> Result<(), RestoreError> {
        let key = record
            .head()
            .map(|head| head.aggregate_id.clone())
            .unwrap_or_default();
        let foreign = || RestoreError::ForeignRecord {
            key: key.clone(),
            kind: A::KIND.as_str(),
        };
        let (head, state) = A::restored(record).ok_or_else(foreign)?;
        if head.unreadable {
            return Err(RestoreError::Unreadable(key));
        }
        self.log
            .reinstate(head.aggregate_id.clone(), chain_head(&head));
        let version = Version::new(head.version);
        self.states
            .insert(head.aggregate_id, Current { state, version });
        Ok(())
    }

    /// Takes out of memory every aggregate but the `keep` with the newest events, those a
    /// snapshot has yet to write and those this build cannot read, and returns them as
    /// snapshot records (key, record) for the writer to keep. Only aggregates the committed
    /// snapshot holds as they are leave: whatever happens to the writer's file, the snapshot and
    /// the events after it say the same.
    pub(crate) fn spill(&mut self, keep: usize) -> Vec<(String, Snapshot)> {
        if self.states.len() <= keep {
            return Vec::new();
        }
        let mut clean: Vec<(i64, &String)> = self
            .states
            .keys()
            .filter(|id| !self.dirty.holds(id) && !self.unreadable.contains(*id))
            .filter_map(|id| Some((self.log.head(id)?.offset, id)))
            .collect();
        let dirty = self.states.len() - clean.len();
        let leaving = (dirty + clean.len()).saturating_sub(keep).min(clean.len());
        if leaving == 0 {
            return Vec::new();
        }
        if leaving < clean.len() {
            clean.select_nth_unstable(leaving);
        }
        let ids: Vec<String> = clean[..leaving]
            .iter()
            .map(|(_, id)| (*id).clone())
            .collect();
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            let (Some(current), Some(head)) = (self.states.remove(&id), self.log.evict(&id)) else {
                continue;
            };
            let record = A::snapshot(head_record(&id, &head, false), Some(&current.state));
            records.push((id, record));
        }
        // What the maps grew to for the aggregates that left is given back.
        if self.states.capacity() > 4 * self.states.len().max(keep) {
            self.states.shrink_to_fit();
            self.log.shrink_to_fit();
        }
        records
    }
}
