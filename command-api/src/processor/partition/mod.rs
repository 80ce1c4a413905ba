//! The partition model: everything a writer knows of its partition (each aggregate's state, the
//! accepted chains and the commands behind them, as the log-order rule built them) and the
//! decision for each command. It does no I/O: the clock and the source of event ids are inputs,
//! the log's records come in through [`PartitionModel::judge`], and a decision is a [`Plan`]
//! the writer carries out in a transaction. So every rule of the write path is unit-tested
//! here, given a history, when a command, then a plan (`tests`).
//!
//! Layout: this file holds the model and a batch's scratch state; `decide` the named steps of
//! one decision; `plan` what a decision produces and the replies it may carry; `rejection` a domain
//! rejection as a typed code; `snapshot` the model to and from its snapshot; `resident` which
//! aggregates stay in memory (the writer keeps the others on disk); `command_uses` the same for
//! the command uses the log-order rule remembers.

mod command_uses;
mod decide;
mod plan;
mod rejection;
mod resident;
mod snapshot;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_command_uses;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::{Current, Version, Versioned};
use platform::envelope::EventEnvelope;
use platform::log_order::{CommandWindow, LogOrder, LoserReason, Verdict};
use uuid::Uuid;

use super::write_model::WriteModel;

pub(crate) use command_uses::LeavingUse;
pub(crate) use plan::{accepted, answer, command_id, PendingEvent, Plan};
pub(crate) use snapshot::{RestoreError, SnapshotPlan, SnapshotRecords};

/// What a decision takes from outside the model.
pub(crate) struct Inputs<'a> {
    /// Now, for command deadlines and the events' `occurred_at`.
    pub(crate) now: DateTime<Utc>,
    /// A fresh id for each event.
    pub(crate) new_event_id: &'a mut dyn FnMut() -> Uuid,
}

/// How the log's next record was judged.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Judged {
    /// It counts and is applied.
    Accepted,
    /// The log-order rule rejects it: inert for every reader.
    Rejected(LoserReason),
    /// It counts but this build cannot decode it: its aggregate is refused until fixed.
    Unreadable(String),
}

/// One partition of one aggregate kind, as its log says.
pub(crate) struct PartitionModel<A: WriteModel>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    partition: i32,
    partitions: i32,
    log: LogOrder,
    states: HashMap<String, Current<A>>,
    /// Aggregates with an accepted event this build cannot decode.
    unreadable: HashSet<String>,
    /// What changed since the last snapshot that committed.
    dirty: snapshot::Dirty,
    /// Aggregates with a chain in this partition, in memory or kept by the writer (`resident`).
    chains: u64,
}

impl<A: WriteModel> PartitionModel<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// An empty partition `partition` of `partitions`, remembering command ids for `window`.
    pub(crate) fn new(partition: i32, partitions: i32, window: CommandWindow) -> Self {
        Self {
            partition,
            partitions,
            log: LogOrder::new(window),
            states: HashMap::new(),
            unreadable: HashSet::new(),
            dirty: snapshot::Dirty::default(),
            chains: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }

    /// Judges the partition's next record (its Kafka timestamp `timestamp`) by the log-order
    /// rule and, when it counts, applies it.
    pub(crate) fn judge(
        &mut self,
        offset: i64,
        envelope: &EventEnvelope,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
    ) -> Judged {
        if let Verdict::Loser(reason) = self.log.judge(envelope, offset, timestamp) {
            return Judged::Rejected(reason);
        }
        if envelope.version == Version::NONE.next() {
            self.chains += 1;
        }
        self.changed(&envelope.aggregate_id, Some(&envelope.command_id));
        let decoded = payload
            .ok_or(schemas::DecodeError::TooShort { len: 0 })
            .and_then(schemas::decode::<A::Event>);
        match decoded {
            Ok(event) => {
                let current = self
                    .states
                    .entry(envelope.aggregate_id.clone())
                    .or_default();
                let _ = current.apply(&Versioned {
                    version: envelope.version,
                    event,
                });
                Judged::Accepted
            }
            Err(error) => {
                self.unreadable.insert(envelope.aggregate_id.clone());
                Judged::Unreadable(error.to_string())
            }
        }
    }

    /// Moves the log's clock past a record that is not judged (no valid envelope).
    pub(crate) fn pass(&mut self, timestamp: Option<i64>) {
        self.log.pass(timestamp);
    }

    /// What the log shows of a command, if its events are in this partition.
    #[cfg(test)]
    pub(crate) fn recorded(
        &self,
        command_id: &str,
    ) -> Option<&platform::log_order::RecordedCommand> {
        self.log.command(command_id)
    }

    /// The aggregate's current version (0 when it has no events).
    #[cfg(test)]
    pub(crate) fn version_of(&self, aggregate_id: &str) -> u64 {
        self.states.get(aggregate_id).map_or(0, |c| c.version.get())
    }
}

/// A batch being decided: the states and chain heads it has reached so far (a scratch overlay
/// over the model, thrown away after the batch) and the command ids it has seen.
pub(crate) struct Batch<A: WriteModel>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    overlay: HashMap<String, (Current<A>, Option<Uuid>)>,
    /// Command id -> (index in the batch, request hash) of its first copy.
    seen: HashMap<String, (usize, Option<String>)>,
}

impl<A: WriteModel> Default for Batch<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    fn default() -> Self {
        Self {
            overlay: HashMap::new(),
            seen: HashMap::new(),
        }
    }
}

impl<A: WriteModel> Batch<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// The aggregate as the batch has left it: its state and the id of its last event.
    fn current<'b>(
        &'b mut self,
        model: &PartitionModel<A>,
        aggregate_id: &str,
    ) -> &'b mut (Current<A>, Option<Uuid>) {
        self.overlay
            .entry(aggregate_id.to_owned())
            .or_insert_with(|| {
                let current = model.states.get(aggregate_id).cloned().unwrap_or_default();
                let head = model.log.head(aggregate_id).map(|h| h.event_id);
                (current, head)
            })
    }
}

/// The version the last of `events` gets, or `current` when there are none.
fn last_version<E>(events: &[Versioned<E>], current: Version) -> Version {
    events.last().map_or(current, |e| e.version)
}
