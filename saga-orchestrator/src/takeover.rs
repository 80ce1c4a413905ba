//! Where a saga worker starts (decision 0010): from the order and saga writers' snapshots of its
//! partition, not from offset 0. Each snapshot holds the log order of its events partition at
//! its checkpoint (every chain head, the command uses the window remembers) and, for sagas,
//! every saga's state: all a worker folds from those events. The command uses go to the
//! worker's settled file, not to memory (decision 0015). A topic whose snapshot is missing
//! or unusable is replayed from offset 0 (`saga_snapshot_restores_total{outcome="fallback"}`),
//! never folded from wrong state.
//!
//! A snapshot may stand past what the orchestrator has acted on (its group's committed offset):
//! the writers snapshot every few seconds whatever the orchestrator does. The worker then reads
//! from the committed offset, tells the events it must act on from the losers by the snapshot's
//! command uses ([`LogOrder::accepted_before`]) without folding them again, and acts with the
//! saga's state at the checkpoint: a saga's commands depend only on the event and what the saga
//! started with (order, customer, lines, total), which no later event changes.

use std::sync::Arc;

use command_bus::snapshots::{self, RestoredLog};
use domain::AggregateKind;
use platform::log_order::LogOrder;
use platform::spill::SpillFile;
use tracing::{info, warn};

use crate::offset_book::Source;
use crate::saga_context::SagaContext;

/// What a worker starts from, per source topic.
pub(crate) struct Start {
    /// The log order to judge the topic's next events with (without chain heads or command
    /// uses when restored: those are in `copies`).
    pub(crate) logs: [LogOrder; 2],
    /// The offset the restored state stands at (0: nothing restored, replay from the start).
    pub(crate) restored_end: [i64; 2],
    /// Each restored topic's snapshot, copied to disk and checked: every order's and saga's
    /// record, for the worker to take what it keeps in memory from, one aggregate at a time.
    pub(crate) copies: [Option<SpillFile>; 2],
}

impl Start {
    /// Nothing restored: replay both topics from offset 0.
    pub(crate) fn from_the_beginning(shared: &SagaContext) -> Self {
        let window = shared.settings.kafka.command_window;
        Self {
            logs: std::array::from_fn(|_| LogOrder::new(window)),
            restored_end: [0; 2],
            copies: [None, None],
        }
    }
}

/// The kind of aggregate each source topic holds.
fn kind_of(source: Source) -> AggregateKind {
    match source {
        Source::Orders => AggregateKind::Order,
        Source::Sagas => AggregateKind::OrderSaga,
    }
}

/// Restores what each topic's snapshot holds, falling back per topic to a replay from 0.
pub(crate) async fn restore(shared: &Arc<SagaContext>, partition: i32) -> Start {
    let mut start = Start::from_the_beginning(shared);
    for source in [Source::Orders, Source::Sagas] {
        let Some((restored, copy)) = restore_one(shared, partition, source).await else {
            continue;
        };
        let i = source as usize;
        start.restored_end[i] = restored.checkpoint.events_end;
        start.logs[i] = restored.log;
        start.copies[i] = Some(copy);
    }
    start
}

/// One topic's snapshot, copied to a file of its own and checked there (all or nothing): a
/// snapshot of any size is never held in memory at once.
async fn restore_one(
    shared: &Arc<SagaContext>,
    partition: i32,
    source: Source,
) -> Option<(RestoredLog, SpillFile)> {
    let kind = kind_of(source);
    let topic = shared.snapshot_topics[source as usize].clone();
    let outcome = |outcome: &'static str| {
        metrics::counter!("saga_snapshot_restores_total", "aggregate" => kind.as_str(), "outcome" => outcome)
            .increment(1);
    };
    let fallback = |error: &dyn std::fmt::Display| {
        outcome("fallback");
        warn!(%kind, partition, %topic, %error, "snapshot unusable; the saga worker replays these events from the start");
    };
    let name = format!("saga-takeover-{kind}-p{partition}");
    let copy = match SpillFile::create(&shared.settings.state_dir, &name) {
        Ok(copy) => copy,
        Err(error) => {
            fallback(&error);
            return None;
        }
    };
    let mut copy =
        match snapshots::copy_partition(&shared.settings.kafka, &topic, partition, copy).await {
            Ok((_, 0)) => {
                outcome("none");
                return None;
            }
            Ok((copy, _)) => copy,
            Err(error) => {
                fallback(&error);
                return None;
            }
        };
    let window = shared.settings.kafka.command_window;
    // Every record decoded and checked: seconds for a large partition, off the runtime.
    match platform::runtime::blocking(|| {
        snapshots::restore_copied(kind, window, &mut copy, snapshots::CommandUses::CheckedOnly)
    })
    .await
    {
        Ok(restored) => {
            outcome("restored");
            info!(%kind, partition, events_end = restored.checkpoint.events_end, aggregates = restored.checkpoint.aggregates, "saga worker restored from the writers' snapshot");
            Some((restored, copy))
        }
        Err(error) => {
            fallback(&error);
            None
        }
    }
}
