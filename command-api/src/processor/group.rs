//! The writers' consumer group, polled on a thread of its own.
//!
//! The group consumer lives on a dedicated OS thread because its revoke callback blocks: a
//! partition is handed over only after its writer has finished or aborted its open transaction
//! and stopped (Kafka's exactly-once processing does the same), so the new owner never decides
//! on a state the old one is still changing. Blocking a runtime worker instead would stall the
//! very writers it waits for (and deadlock a single-threaded runtime).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::AggregateKind;
use platform::envelope::CommandEnvelope;
use platform::topics::Topics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::IncomingCommand;

/// How long a revoke waits for the partition's writers to stop. Past it the rebalance goes on
/// anyway: the new owner's `init_transactions` fences whatever the old writer still does.
pub(super) const REVOKE_WAIT: Duration = Duration::from_secs(20);

/// What the group thread saw, in the order it saw it: commands fetched before a revoke reach the
/// dispatcher before the revoke does.
pub(super) enum Polled {
    Command {
        kind: AggregateKind,
        partition: i32,
        incoming: Box<IncomingCommand>,
    },
    Assigned(Vec<(AggregateKind, i32)>),
    /// The dispatcher stops these partitions' writers, then answers on `done`.
    Revoked {
        partitions: Vec<(AggregateKind, i32)>,
        done: std::sync::mpsc::SyncSender<()>,
    },
}

/// Rebalance callbacks, run on the group thread inside `poll`.
pub(crate) struct GroupContext {
    topics: Topics,
    out: mpsc::Sender<Polled>,
    assigned_once: Arc<AtomicBool>,
}

impl GroupContext {
    pub(super) fn new(topics: Topics, out: mpsc::Sender<Polled>, ready: Arc<AtomicBool>) -> Self {
        Self {
            topics,
            out,
            assigned_once: ready,
        }
    }

    /// Hands `polled` to the dispatcher. On the group thread it waits for room; anywhere else
    /// (librdkafka may serve a last rebalance while the consumer is dropped on a runtime
    /// thread, where blocking panics) it gives up at once: nobody is dispatching any more.
    fn hand_over(&self, polled: Polled) -> bool {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.out.try_send(polled).is_ok()
        } else {
            self.out.blocking_send(polled).is_ok()
        }
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<(AggregateKind, i32)> {
        list.elements()
            .iter()
            .filter_map(|e| Some((self.topics.kind_of_commands(e.topic())?, e.partition())))
            .collect()
    }
}

impl ClientContext for GroupContext {
    /// Lag of the commands topics: what the writers have not handled yet.
    fn stats(&self, statistics: rdkafka::Statistics) {
        platform::kafka::publish_lag("command-writers", &statistics);
    }
}

impl ConsumerContext for GroupContext {
    /// Blocks until the revoked partitions' writers have stopped (or `REVOKE_WAIT` passed).
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = self.partitions(list);
            let (done, stopped) = std::sync::mpsc::sync_channel(1);
            // A closed dispatcher (shutting down) has no writers left to wait for; off the
            // group thread there is nobody to wait for either.
            if self.hand_over(Polled::Revoked { partitions, done })
                && tokio::runtime::Handle::try_current().is_err()
                && stopped.recv_timeout(REVOKE_WAIT).is_err()
            {
                warn!(
                    "writers of revoked partitions did not stop in time; the new owner fences them"
                );
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            info!(partitions = list.count(), "command partitions assigned");
            let _ = self.hand_over(Polled::Assigned(self.partitions(list)));
            self.assigned_once.store(true, Ordering::SeqCst);
        }
    }
}

/// Polls the group until `stop` is set or the dispatcher is gone, then leaves the group.
pub(super) fn poll_until_stopped(
    group: Arc<BaseConsumer<GroupContext>>,
    topics: Topics,
    out: mpsc::Sender<Polled>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let polled = match group.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(message)) => {
                let Some(kind) = topics.kind_of_commands(message.topic()) else {
                    continue;
                };
                Polled::Command {
                    kind,
                    partition: message.partition(),
                    incoming: Box::new(IncomingCommand {
                        offset: message.offset(),
                        envelope: CommandEnvelope::from_headers(message.headers()),
                        payload: message.payload().map(<[u8]>::to_vec),
                    }),
                }
            }
            Some(Err(error)) => {
                warn!(%error, "command consumer error");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if out.blocking_send(polled).is_err() {
            break;
        }
    }
    group.unsubscribe();
    // Serve the revoke of the unsubscribe (the dispatcher is gone, so it returns at once).
    let _ = group.poll(Duration::ZERO);
    info!("left the command writers' group");
}
