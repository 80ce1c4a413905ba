//! Command processing: this process joins the `command-writers` consumer group on every
//! commands topic, and for each partition it is assigned runs one [`writer::Writer`], the
//! partition's single writer in normal operation. During a handover a former owner may still
//! append; the log-order rule makes whatever it appends inert, and it never acknowledges a
//! command whose events lost.

mod models;
mod writer;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::customer::CustomerAggregate;
use domain::inventory::InventoryItem;
use domain::order::OrderAggregate;
use domain::saga::OrderSagaAggregate;
use domain::AggregateKind;
use platform::config::KafkaSettings;
use platform::envelope::{CommandEnvelope, EnvelopeError};
use platform::topics::Topics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use models::{rejection_code, ROLE_ADMIN, ROLE_CUSTOMER, ROLE_SYSTEM};
use writer::Writer;

/// The aggregate kinds that take commands (each has a commands topic and partition writers).
/// The order saga is one of them: the orchestrator records its inputs through the same path.
pub const COMMAND_KINDS: [AggregateKind; 4] = [
    AggregateKind::Customer,
    AggregateKind::InventoryItem,
    AggregateKind::Order,
    AggregateKind::OrderSaga,
];

/// The consumer group of command writers.
pub const GROUP_SUFFIX: &str = "command-writers";

/// A command read from a commands topic, handed to its partition's writer.
pub(crate) struct IncomingCommand {
    offset: i64,
    envelope: Result<CommandEnvelope, EnvelopeError>,
    payload: Option<Vec<u8>>,
}

/// What every writer of this process shares.
pub(crate) struct WriterContext {
    kafka: KafkaSettings,
    topics: Topics,
    partitions: i32,
    producer: FutureProducer,
    group: Arc<StreamConsumer<GroupContext>>,
    writers_ready: AtomicUsize,
}

/// Rebalance notifications from librdkafka's thread to the dispatch loop.
pub(crate) struct GroupContext {
    changes: mpsc::UnboundedSender<Change>,
    assigned_once: Arc<AtomicBool>,
}

enum Change {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

impl ClientContext for GroupContext {
    /// Lag of the commands topics: what the writers have not handled yet.
    fn stats(&self, statistics: rdkafka::Statistics) {
        platform::kafka::publish_lag("command-writers", &statistics);
    }
}

impl ConsumerContext for GroupContext {
    /// Writers commit every batch before answering, so nothing is left to commit here.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let _ = self.changes.send(Change::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            info!(partitions = list.count(), "command partitions assigned");
            let assigned = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let _ = self.changes.send(Change::Assigned(assigned));
            self.assigned_once.store(true, Ordering::SeqCst);
        }
    }
}

/// The running processor: readiness and a handle to wait for its end.
#[allow(missing_debug_implementations)]
pub struct Processor {
    ready: Arc<AtomicBool>,
    context: Arc<WriterContext>,
    task: tokio::task::JoinHandle<()>,
}

impl Processor {
    /// Joins the writers' group for the commands topics of `kinds` and starts dispatching.
    /// Stops when `shutdown` is cancelled.
    pub fn start(
        kafka: KafkaSettings,
        group_id: &str,
        kinds: &[AggregateKind],
        partitions: i32,
        producer: FutureProducer,
        shutdown: CancellationToken,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let topics = Topics::new(kafka.topic_prefix.clone());
        let (changes, change_rx) = mpsc::unbounded_channel();
        let ready = Arc::new(AtomicBool::new(false));
        let group: StreamConsumer<GroupContext> = platform::kafka::latency_consumer_config(
            &kafka, group_id,
        )
        .create_with_context(GroupContext {
            changes,
            assigned_once: ready.clone(),
        })?;
        let command_topics: Vec<String> = kinds.iter().map(|k| topics.commands(*k)).collect();
        let names: Vec<&str> = command_topics.iter().map(String::as_str).collect();
        group.subscribe(&names)?;
        platform::kafka::register_producer("command-writer");
        platform::kafka::register_producer("command-replies");
        let context = Arc::new(WriterContext {
            kafka,
            topics,
            partitions,
            producer,
            group: Arc::new(group),
            writers_ready: AtomicUsize::new(0),
        });
        let task = tokio::spawn(dispatch(context.clone(), change_rx, shutdown));
        Ok(Self {
            ready,
            context,
            task,
        })
    }

    /// True once this process has joined the group and received an assignment.
    pub fn ready_flag(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let ready = self.ready.clone();
        move || ready.load(Ordering::SeqCst)
    }

    /// How many writers have rebuilt their partition and are serving.
    pub fn serving_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let context = self.context.clone();
        move || context.writers_ready.load(Ordering::SeqCst)
    }

    /// Waits until the dispatch loop and every writer have finished and offsets are committed.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

type Senders = HashMap<(AggregateKind, i32), mpsc::Sender<IncomingCommand>>;

async fn dispatch(
    context: Arc<WriterContext>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    shutdown: CancellationToken,
) {
    let mut senders: Senders = HashMap::new();
    let mut writers = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(change) = changes.recv() => match change {
                // Rebuild state as soon as a partition is ours, not on its first command.
                Change::Assigned(assigned) => {
                    for (topic, partition) in assigned {
                        if let Some(kind) = context.topics.kind_of_commands(&topic) {
                            writer(&mut senders, &mut writers, &context, kind, partition);
                        }
                    }
                }
                Change::Revoked(revoked) => {
                    for (topic, partition) in revoked {
                        if let Some(kind) = context.topics.kind_of_commands(&topic) {
                            // Dropping the sender lets the writer finish its batch and stop.
                            senders.remove(&(kind, partition));
                        }
                    }
                }
            },
            received = context.group.recv() => match received {
                Ok(message) => {
                    let Some(kind) = context.topics.kind_of_commands(message.topic()) else { continue };
                    let partition = message.partition();
                    let incoming = IncomingCommand {
                        offset: message.offset(),
                        envelope: CommandEnvelope::from_headers(message.headers()),
                        payload: message.payload().map(<[u8]>::to_vec),
                    };
                    let Some(sender) = writer(&mut senders, &mut writers, &context, kind, partition) else { continue };
                    if sender.send(incoming).await.is_err() {
                        warn!(%kind, partition, "writer ended unexpectedly; restarting it");
                        senders.remove(&(kind, partition));
                    }
                }
                Err(error) => {
                    warn!(%error, "command consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            Some(_) = writers.join_next(), if !writers.is_empty() => {}
        }
    }
    // Graceful stop: writers finish (and commit) their current batch, then we leave the group.
    senders.clear();
    while writers.join_next().await.is_some() {}
    context.group.unsubscribe();
    info!("command processor stopped");
}

/// The sender of a partition's writer, started on first use; `None` for a kind without writers.
fn writer<'a>(
    senders: &'a mut Senders,
    writers: &mut JoinSet<()>,
    context: &Arc<WriterContext>,
    kind: AggregateKind,
    partition: i32,
) -> Option<&'a mut mpsc::Sender<IncomingCommand>> {
    match senders.entry((kind, partition)) {
        Entry::Occupied(entry) => Some(entry.into_mut()),
        Entry::Vacant(entry) => {
            spawn_writer(writers, context.clone(), kind, partition).map(|tx| entry.insert(tx))
        }
    }
}

fn spawn_writer(
    writers: &mut JoinSet<()>,
    context: Arc<WriterContext>,
    kind: AggregateKind,
    partition: i32,
) -> Option<mpsc::Sender<IncomingCommand>> {
    let (tx, rx) = mpsc::channel(1024);
    match kind {
        AggregateKind::Customer => {
            writers.spawn(Writer::<CustomerAggregate>::run(context, partition, rx))
        }
        AggregateKind::InventoryItem => {
            writers.spawn(Writer::<InventoryItem>::run(context, partition, rx))
        }
        AggregateKind::Order => {
            writers.spawn(Writer::<OrderAggregate>::run(context, partition, rx))
        }
        AggregateKind::OrderSaga => {
            writers.spawn(Writer::<OrderSagaAggregate>::run(context, partition, rx))
        }
    };
    Some(tx)
}
