//! Group membership: the orchestrators share the partitions of `orders.events` and
//! `order-sagas.events` through one consumer group with the range assignor, so partition p of
//! both topics goes to the same member, which runs one [`SagaPartition`] for it. The group
//! consumer itself reads nothing (its partitions are paused); workers read with their own
//! consumer (from where the writers' snapshots stand, see `takeover`) and commit through the
//! group, so a member left behind by a rebalance cannot commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::saga_context::SagaContext;
use crate::saga_partition::SagaPartition;

pub(crate) enum Change {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Rebalance notifications from librdkafka's thread to the dispatch loop.
pub(crate) struct GroupContext {
    pub(crate) changes: mpsc::UnboundedSender<Change>,
    pub(crate) sagas_topic: String,
    pub(crate) assigned_once: Arc<AtomicBool>,
}

impl GroupContext {
    /// Workers are keyed by the saga topic's partitions (the orders partition comes with it).
    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.sagas_topic)
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for GroupContext {
    /// Lag behind the committed offsets (what the saga has not acted on yet).
    fn stats(&self, statistics: rdkafka::Statistics) {
        platform::kafka::publish_lag("saga-orchestrator-group", &statistics);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let _ = self.changes.send(Change::Revoked(self.partitions(list)));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // Workers read on their own; the member only holds the partitions.
            if let Err(error) = consumer.pause(list) {
                warn!(%error, "could not pause the group's partitions");
            }
            info!(partitions = list.count(), "saga partitions assigned");
            let _ = self.changes.send(Change::Assigned(self.partitions(list)));
            self.assigned_once.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs a worker per assigned partition until `shutdown`; polls the member meanwhile.
pub(crate) async fn dispatch(
    shared: Arc<SagaContext>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    shutdown: CancellationToken,
) {
    let mut running: HashMap<i32, CancellationToken> = HashMap::new();
    let mut workers = JoinSet::new();
    loop {
        let group = shared.group.clone();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(change) = changes.recv() => match change {
                Change::Assigned(partitions) => {
                    for partition in partitions {
                        let stop = shutdown.child_token();
                        if let Some(previous) = running.insert(partition, stop.clone()) {
                            previous.cancel();
                        }
                        workers.spawn(SagaPartition::run(shared.clone(), partition, stop));
                    }
                }
                Change::Revoked(partitions) => {
                    for partition in partitions {
                        if let Some(stop) = running.remove(&partition) {
                            stop.cancel();
                        }
                    }
                }
            },
            // Nothing arrives (partitions are paused); polling serves rebalances and heartbeats.
            received = group.recv() => {
                if let Err(error) = received {
                    warn!(%error, "saga group consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Some(_) = workers.join_next(), if !workers.is_empty() => {}
        }
    }
    for stop in running.values() {
        stop.cancel();
    }
    while workers.join_next().await.is_some() {}
    shared.group.unsubscribe();
    info!("saga orchestrator stopped");
}
