//! The writer's side of decisions 0012 and 0015: the aggregates and command uses its model no
//! longer holds in memory are kept in a `platform::spill` file, as their snapshot records, and
//! given back to the model before it judges an event of one or decides a command on one. The
//! file forgets a command use when the window does, and tells the model, whose next snapshot
//! deletes it. A file that fails leaves the model without state it must have, so the writer
//! restarts (from its snapshot, with a new file) before it decides anything more.

use command_bus::snapshots::{command_key, use_stamped_before};
use schemas::wire::snapshots::Snapshot;
use tracing::error;

use super::{Recovery, Writer, WriterError};
use crate::processor::partition::LeavingUse;
use crate::processor::write_model::WriteModel;
use crate::processor::IncomingCommand;

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Gives the model back `aggregate_id` if the model does not hold it and the file does
    /// (otherwise it is new to the partition).
    pub(super) fn take_back(&mut self, aggregate_id: &str) -> Result<(), WriterError> {
        // The file keeps the snapshot's other records under keys starting with `~` (command
        // uses): an aggregate with such an id (only a producer other than the writers appends
        // one) stops its partition's snapshots, so it is never in the file.
        if self.model.holds(aggregate_id) || aggregate_id.starts_with('~') {
            return Ok(());
        }
        let Some(bytes) = self.spilled.get(aggregate_id)? else {
            return Ok(());
        };
        let record = schemas::decode::<Snapshot>(&bytes)?;
        self.model.take_back(record)?;
        if let Some(replay) = &mut self.replay {
            replay.taken_back();
        }
        Ok(())
    }

    /// Gives the model back the command's use if the model does not hold it and the file does
    /// (otherwise the command was never used, or the window forgot it).
    pub(super) fn take_back_command(&mut self, command_id: &str) -> Result<(), WriterError> {
        if self.model.holds_command(command_id) || self.absent_uses.contains(command_id) {
            return Ok(());
        }
        let Some(bytes) = self.spilled.get(&command_key(command_id))? else {
            return Ok(());
        };
        let record = schemas::decode::<Snapshot>(&bytes)?;
        self.model.take_back_command(record)?;
        Ok(())
    }

    /// Gives the model back every aggregate the batch's commands name, and the commands' uses
    /// (noting those found nowhere: see `absent_uses`).
    pub(super) fn take_back_targets(
        &mut self,
        batch: &[IncomingCommand],
    ) -> Result<(), WriterError> {
        self.absent_uses.clear();
        for command in batch {
            if let Ok(envelope) = &command.envelope {
                self.take_back(&envelope.aggregate_id)?;
                self.take_back_command(&envelope.command_id)?;
                if !self.model.holds_command(&envelope.command_id) {
                    self.absent_uses.insert(envelope.command_id.clone());
                }
            }
        }
        Ok(())
    }

    /// Moves what the model lets go of (old aggregates and command uses a committed snapshot
    /// holds as they are) to the file, and forgets there the uses the window has forgotten.
    /// On failure the writer restarts before its next batch. A full batch of the file is
    /// written behind (`platform::spill`); what is left here (the expiry pass, and waiting for
    /// the batch before when the next fills) runs off the runtime's threads, so only this
    /// partition waits.
    pub(super) fn spill(&mut self) {
        platform::runtime::off_the_runtime(|| self.spill_now());
    }

    fn spill_now(&mut self) {
        // The file is about to gain uses: what was absent from it may not be any more.
        self.absent_uses.clear();
        let leaving = self.model.spill(self.keeps());
        let uses = self.model.spill_commands();
        let most = platform::spill::pass_size(uses.len());
        let kept = self
            .keep(leaving)
            .and_then(|()| self.keep_uses(uses))
            .and_then(|()| self.forget_expired_uses(most));
        if let Err(failure) = kept {
            error!(kind = %A::KIND, partition = self.partition, error = %failure, "could not keep aggregates or command uses on disk; restarting the writer");
            self.recovery = self.recovery.and(Recovery::Restart);
        }
        self.count_resident();
    }

    fn keep(&mut self, leaving: Vec<(String, Snapshot)>) -> Result<(), WriterError> {
        for (aggregate_id, record) in leaving {
            let bytes = schemas::encode(&record).map_err(WriterError::Encode)?;
            self.spilled.put(aggregate_id, bytes)?;
        }
        Ok(())
    }

    fn keep_uses(&mut self, leaving: Vec<LeavingUse>) -> Result<(), WriterError> {
        for used in leaving {
            let bytes = schemas::encode(&used.record).map_err(WriterError::Encode)?;
            self.spilled.put_expiring(used.key, bytes, used.used_at)?;
        }
        Ok(())
    }

    /// Removes from the file the uses the window no longer remembers (at most `most`), and
    /// tells the model, whose next snapshot deletes them.
    fn forget_expired_uses(&mut self, most: usize) -> Result<(), WriterError> {
        let oldest = self.model.oldest_remembered_use();
        let forgotten = self.spilled.expire_before(oldest, most, |bytes| {
            Ok::<_, WriterError>(use_stamped_before(bytes, oldest)?)
        })?;
        self.model.forgotten_in_file(forgotten);
        Ok(())
    }

    /// The gauges of how many aggregates the model holds and how many the partition has, and
    /// how many command uses the model holds.
    pub(super) fn count_resident(&self) {
        self.set_gauges(
            self.model.resident(),
            self.model.chains(),
            self.model.resident_command_uses(),
        );
    }

    /// Zeroes the gauges once the writer stops: the partition's new owner (here or in another
    /// process) reports it, and a sum over processes counts it once.
    pub(super) fn count_none(&self) {
        self.set_gauges(0, 0, 0);
        self.count_to_read(0);
    }

    fn set_gauges(&self, resident: usize, chains: u64, uses: usize) {
        let (kind, partition) = (A::KIND.as_str(), self.partition.to_string());
        metrics::gauge!("writer_command_uses_resident", "aggregate" => kind, "partition" => partition.clone())
            .set(uses as f64);
        metrics::gauge!("writer_aggregates_resident", "aggregate" => kind, "partition" => partition.clone())
            .set(resident as f64);
        metrics::gauge!("writer_aggregates", "aggregate" => kind, "partition" => partition)
            .set(chains as f64);
    }
}
