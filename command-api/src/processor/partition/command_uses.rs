//! Which command uses the model holds in memory (decision 0015). The log-order rule remembers
//! every command of the window (a day by default, decision 0008): at a sustained 1,000
//! commands a second that is 86 million uses, tens of gigabytes, where a writer is meant to
//! stay within a few hundred megabytes. So a use leaves memory, like an aggregate (decision
//! 0012), once a committed snapshot holds it as it is; the writer keeps it in its file, gives
//! it back before the model judges an event of that command or decides it, and forgets it
//! there when the window does, telling the model, whose next snapshot deletes it. Pure: the
//! writer does the file's I/O.

use command_bus::snapshots::{command_key, command_use, recorded, RestoreError};
use schemas::wire::snapshots::{Snapshot, COMMAND_KEY_PREFIX};

use super::PartitionModel;
use crate::processor::write_model::WriteModel;

/// A command use leaving memory: its snapshot key and record, and when it was used (the file
/// forgets it once the window has passed that).
pub(crate) struct LeavingUse {
    pub(crate) key: String,
    pub(crate) record: Snapshot,
    pub(crate) used_at: i64,
}

impl<A: WriteModel> PartitionModel<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Whether the command's use (if it has one) is in memory: when it is not, the writer gives
    /// it back (if its file holds it) before the model judges an event of the command or
    /// decides it, or the model takes the command for one never used.
    pub(crate) fn holds_command(&self, command_id: &str) -> bool {
        self.log.holds_command(command_id)
    }

    /// Takes back a command use the writer kept out of memory, as [`Self::spill_commands`]
    /// gave it (or a restored snapshot holds it).
    pub(crate) fn take_back_command(&mut self, record: Snapshot) -> Result<(), RestoreError> {
        let Snapshot::CommandUse(used) = record else {
            return Err(RestoreError::ForeignRecord {
                key: record
                    .head()
                    .map(|head| head.aggregate_id.clone())
                    .unwrap_or_default(),
                kind: A::KIND.as_str(),
            });
        };
        self.log
            .reinstate_command(used.command_id.clone(), recorded(used));
        Ok(())
    }

    /// Takes out of memory every command use a committed snapshot holds as it is (none of it
    /// changed since), and returns those the window still remembers, for the writer to keep.
    pub(crate) fn spill_commands(&mut self) -> Vec<LeavingUse> {
        let changed = &self.dirty;
        let leaving = self.log.evict_commands(|id| !changed.holds_command(id));
        self.settle_forgotten();
        leaving
            .into_iter()
            .map(|(command_id, recorded)| {
                // Kept by the file from now on, whose forgetting says when to delete it.
                self.dirty.written_out(&command_id);
                LeavingUse {
                    key: command_key(&command_id),
                    record: Snapshot::CommandUse(command_use(&command_id, &recorded)),
                    used_at: recorded.used_at,
                }
            })
            .collect()
    }

    /// The uses the writer's file forgot (by their snapshot keys): the snapshot holds each, so
    /// the next one deletes it (or writes the newer use of the same id the model holds).
    pub(crate) fn forgotten_in_file(&mut self, keys: impl IntoIterator<Item = String>) {
        for key in keys {
            if let Some(command_id) = key.strip_prefix(COMMAND_KEY_PREFIX) {
                self.dirty.forgotten_elsewhere(command_id);
            }
        }
    }

    /// The oldest use stamp the window still remembers at the partition's clock: uses stamped
    /// earlier can be forgotten for good.
    pub(crate) fn oldest_remembered_use(&self) -> i64 {
        self.log.window().oldest_remembered(self.log.clock())
    }

    /// How many command uses are in memory.
    pub(crate) fn resident_command_uses(&self) -> usize {
        self.log.remembered_commands()
    }
}
