//! Command processing: this process joins the `command-writers` consumer group on every
//! commands topic, and for each partition it is assigned runs one [`writer::Writer`], the
//! partition's only writer. Writers append in Kafka transactions under a transactional id per
//! partition, so a former owner is fenced by the broker the moment the new one starts; a revoke
//! waits until the partition's writer has committed or aborted and stopped (see `group`).
//!
//! Layout: this file dispatches commands and rebalances to writers; `group` polls the consumer
//! group on its own thread; `partition` is the pure partition model (state as the log says, the
//! decision for each command); `writer` does a partition's I/O (fencing, reading, transactions,
//! answers); `write_model` what each aggregate kind adds for the writer.

mod group;
mod partition;
mod write_model;
mod writer;

use platform::log_order::CommandWindow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use command_bus::ReplyWaiters;
use domain::customer::CustomerAggregate;
use domain::idempotency::IdempotencyKey;
use domain::inventory::InventoryItem;
use domain::order::OrderAggregate;
use domain::saga::OrderSagaAggregate;
use domain::AggregateKind;
use platform::config::KafkaSettings;
use platform::envelope::{CommandEnvelope, EnvelopeError};
use platform::topics::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use group::{GroupContext, Polled, REVOKE_WAIT};
use writer::Writer;

pub use command_bus::COMMAND_KINDS;

/// The consumer group of command writers.
pub const GROUP_SUFFIX: &str = "command-writers";

/// A command read from a commands topic, handed to its partition's writer.
pub(crate) struct IncomingCommand {
    offset: i64,
    envelope: Result<CommandEnvelope, EnvelopeError>,
    payload: Option<Vec<u8>>,
}

/// How many aggregates each partition writer keeps in memory, and where it keeps the others
/// (decision 0012).
#[derive(Debug, Clone)]
pub struct WriterMemory {
    /// A directory for the writers' files of aggregates (each writer's is unlinked as soon as
    /// it is open: nothing is left there, nothing is read across restarts).
    pub state_dir: std::path::PathBuf,
    /// Aggregates with the newest events each writer keeps in memory once its snapshot holds
    /// them (besides those changed since its last snapshot).
    pub resident_aggregates: usize,
}

/// What every writer of this process shares.
pub(crate) struct WriterContext {
    kafka: KafkaSettings,
    topics: Topics,
    partitions: i32,
    /// How long command ids are remembered: the log-order rule's window.
    window: CommandWindow,
    /// What each writer keeps in memory, and where it keeps the rest.
    memory: WriterMemory,
    /// The group consumer, for the group metadata each transaction commits offsets with.
    group: Arc<BaseConsumer<GroupContext>>,
    /// The commands topics the group is subscribed to.
    subscription: Vec<String>,
    writers_ready: AtomicUsize,
    /// This process's requests waiting for an answer: a writer answers them once its batch
    /// commits, without the replies topic's round trip.
    waiters: ReplyWaiters,
}

/// What the process's partition writers share besides the broker.
#[derive(Debug, Clone)]
pub struct WritersShare {
    /// How long command ids are remembered: the log-order rule's window.
    pub window: CommandWindow,
    /// What each writer keeps in memory, and where it keeps the rest.
    pub memory: WriterMemory,
    /// This process's requests waiting for an answer, which a writer answers itself once its
    /// batch commits.
    pub waiters: ReplyWaiters,
}

/// The running processor: readiness and a handle to wait for its end.
#[allow(missing_debug_implementations)]
pub struct Processor {
    ready: Arc<AtomicBool>,
    context: Arc<WriterContext>,
    task: JoinHandle<()>,
}

impl Processor {
    /// Joins the writers' group for the commands topics of `kinds` and starts dispatching.
    /// Stops when `shutdown` is cancelled.
    pub fn start(
        kafka: KafkaSettings,
        group_id: &str,
        kinds: &[AggregateKind],
        partitions: i32,
        shared: WritersShare,
        shutdown: CancellationToken,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let WritersShare {
            window,
            memory,
            waiters,
        } = shared;
        let topics = Topics::new(kafka.topic_prefix.clone());
        let (out, polled) = mpsc::channel(1024);
        let ready = Arc::new(AtomicBool::new(false));
        // Incremental (cooperative) rebalancing: a member joining or leaving moves only the
        // partitions that change owner; every other writer keeps its state and its open
        // transaction (decision 0007). The classic protocol's cooperative-sticky assignor, not
        // KIP-848's, because the writers' KIP-447 fencing (`send_offsets_to_transaction` with the
        // group metadata) is proven on it with librdkafka.
        let group: BaseConsumer<GroupContext> =
            platform::kafka::latency_consumer_config(&kafka, group_id)
                .set("partition.assignment.strategy", "cooperative-sticky")
                .create_with_context(GroupContext::new(
                    topics.clone(),
                    out.clone(),
                    ready.clone(),
                ))?;
        let command_topics: Vec<String> = kinds.iter().map(|k| topics.commands(*k)).collect();
        let names: Vec<&str> = command_topics.iter().map(String::as_str).collect();
        group.subscribe(&names)?;
        platform::kafka::register_producer("command-writer");
        let group = Arc::new(group);
        let stop_polling = Arc::new(AtomicBool::new(false));
        let poller = {
            let (group, topics, stop) = (group.clone(), topics.clone(), stop_polling.clone());
            std::thread::Builder::new()
                .name("command-group".into())
                .spawn(move || group::poll_until_stopped(group, topics, out, stop))
                .map_err(|_| rdkafka::error::KafkaError::Canceled)?
        };
        let context = Arc::new(WriterContext {
            kafka,
            topics,
            partitions,
            window,
            memory,
            group,
            subscription: command_topics,
            writers_ready: AtomicUsize::new(0),
            waiters,
        });
        let dispatching = dispatch(context.clone(), polled, shutdown);
        let task = tokio::spawn(async move {
            dispatching.await;
            stop_polling.store(true, Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(move || poller.join()).await;
            info!("command processor stopped");
        });
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

    /// Waits until the dispatch loop and every writer have finished, their transactions are
    /// committed, and this process has left the group.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// A partition's writer as the dispatcher sees it.
struct RunningWriter {
    commands: mpsc::Sender<IncomingCommand>,
    /// Cancelled on revoke: the writer finishes or aborts its transaction and drops the rest.
    revoked: CancellationToken,
    /// Set by a writer the broker fenced: it takes no more commands; the next assignment of
    /// the partition starts a fresh one (restarting it at once would fence the new owner).
    fenced: Arc<AtomicBool>,
    task: JoinHandle<()>,
    /// Commands the writer had no room for yet, in order. While any wait here, the
    /// partition is paused in the group, so this holds at most what was already fetched, and
    /// the dispatcher never waits on one slow writer (which would starve every other partition
    /// and, once the group thread's channel filled, stop it from serving rebalances).
    overflow: VecDeque<IncomingCommand>,
    /// Whether the partition is paused in the group because of `overflow`.
    paused: bool,
}

type Writers = HashMap<(AggregateKind, i32), RunningWriter>;

async fn dispatch(
    context: Arc<WriterContext>,
    mut polled: mpsc::Receiver<Polled>,
    shutdown: CancellationToken,
) {
    let mut writers: Writers = HashMap::new();
    let mut retry = tokio::time::interval(Duration::from_millis(5));
    // Ticks missed while nothing waited are not made up in a burst.
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let waiting = writers.values().any(|w| !w.overflow.is_empty() || w.paused);
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = retry.tick(), if waiting => {
                let gone: Vec<(AggregateKind, i32)> = writers
                    .iter_mut()
                    .filter(|(_, running)| !running.fenced.load(Ordering::SeqCst))
                    .filter_map(|(&(kind, partition), running)| {
                        (!hand_over(&context, kind, partition, running)).then_some((kind, partition))
                    })
                    .collect();
                if !gone.is_empty() {
                    gone.iter().for_each(|key| { writers.remove(key); });
                    rejoin(&context);
                }
                continue;
            }
            next = polled.recv() => next,
        };
        match next {
            None => break,
            // Rebuild state as soon as a partition is ours, not on its first command.
            Some(Polled::Assigned(assigned)) => {
                // A partition paused for an earlier writer of this process starts afresh.
                resume(&context, &assigned);
                for (kind, partition) in assigned {
                    writer_for(&mut writers, &context, kind, partition, || {
                        WhenFenced::Replace
                    });
                }
            }
            Some(Polled::Revoked { partitions, done }) => {
                partitions
                    .iter()
                    .for_each(|&(kind, partition)| count_owned(kind, partition, false));
                let stopping: Vec<JoinHandle<()>> = partitions
                    .iter()
                    .filter_map(|key| writers.remove(key))
                    .map(|running| {
                        running.revoked.cancel();
                        running.task
                    })
                    .collect();
                let all = futures::future::join_all(stopping);
                if tokio::time::timeout(REVOKE_WAIT, all).await.is_err() {
                    warn!("a revoked writer is still busy; the new owner will fence it");
                }
                let _ = done.send(());
            }
            Some(Polled::Command {
                kind,
                partition,
                incoming,
            }) => {
                // A fenced writer is replaced only while the group still assigns the partition
                // here (a fatal producer error after a broker restart fences no one else);
                // otherwise the new owner has it and restarting would fence that owner. The
                // group is asked only for a fenced writer: its answer is a round trip to
                // librdkafka's thread that blocks this runtime thread.
                let when_fenced = || {
                    if still_assigned(&context, kind, partition) {
                        WhenFenced::Replace
                    } else {
                        WhenFenced::Keep
                    }
                };
                let running = writer_for(&mut writers, &context, kind, partition, when_fenced);
                if running.fenced.load(Ordering::SeqCst) {
                    continue;
                }
                running.overflow.push_back(*incoming);
                if !hand_over(&context, kind, partition, running)
                    && !running.fenced.load(Ordering::SeqCst)
                {
                    writers.remove(&(kind, partition));
                    rejoin(&context);
                }
            }
        }
    }
    // Graceful stop: writers handle what is queued (each batch committed), then stop; one
    // still retrying after the grace period abandons its batch (nothing of it is committed, so
    // the next owner handles it). Only then does the group thread leave the group (it stays a
    // member meanwhile, so no new owner fences the draining writers).
    let (tokens, tasks): (Vec<CancellationToken>, Vec<JoinHandle<()>>) =
        writers.into_values().map(|w| (w.revoked, w.task)).unzip();
    let all = futures::future::join_all(tasks);
    tokio::pin!(all);
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut all)
        .await
        .is_err()
    {
        warn!("writers still busy after the grace period; abandoning their batches");
        tokens.iter().for_each(CancellationToken::cancel);
        all.await;
    }
    drop(polled);
}

/// Moves the writer's overflow into its channel, in order, as far as there is room; pauses the
/// partition in the group while anything is left and resumes it once nothing is. False when
/// the writer is gone.
fn hand_over(
    context: &WriterContext,
    kind: AggregateKind,
    partition: i32,
    running: &mut RunningWriter,
) -> bool {
    while let Some(command) = running.overflow.pop_front() {
        match running.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                running.overflow.push_front(command);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(command)) => {
                running.overflow.push_front(command);
                return false;
            }
        }
    }
    // Resumed only once the writer has room for a good part of a fetch again, so the partition
    // does not flap between paused and resumed with every batch.
    let room = running.commands.capacity() >= running.commands.max_capacity() / 2;
    let waiting = !running.overflow.is_empty() || (running.paused && !room);
    if waiting != running.paused {
        let list = command_partitions(context, &[(kind, partition)]);
        let changed = if waiting {
            context.group.pause(&list)
        } else {
            context.group.resume(&list)
        };
        match changed {
            Ok(()) => running.paused = waiting,
            Err(error) => {
                warn!(%kind, partition, %error, "could not pause or resume the partition")
            }
        }
    }
    true
}

/// Leaves and rejoins the group, so every partition of this process is revoked (its writers
/// commit or abort, and stop) and assigned again, fetching from the committed offsets. Used
/// when a writer ended without being revoked or fenced (a panic): a new writer for just that
/// partition would commit offsets past the commands the dead one still held.
fn rejoin(context: &WriterContext) {
    error!("a writer ended unexpectedly; rejoining the group to hand its commands over afresh");
    context.group.unsubscribe();
    let names: Vec<&str> = context.subscription.iter().map(String::as_str).collect();
    if let Err(error) = context.group.subscribe(&names) {
        error!(%error, "could not subscribe to the commands topics again");
    }
}

/// Whether the group's current assignment of this process holds the commands partition.
fn still_assigned(context: &WriterContext, kind: AggregateKind, partition: i32) -> bool {
    let topic = context.topics.commands(kind);
    context
        .group
        .assignment()
        .is_ok_and(|list| list.find_partition(&topic, partition).is_some())
}

/// Resumes fetching `partitions` (harmless for one that is not paused).
fn resume(context: &WriterContext, partitions: &[(AggregateKind, i32)]) {
    if let Err(error) = context
        .group
        .resume(&command_partitions(context, partitions))
    {
        warn!(%error, "could not resume command partitions");
    }
}

/// The commands topics' partitions of `partitions`, as librdkafka lists them.
fn command_partitions(
    context: &WriterContext,
    partitions: &[(AggregateKind, i32)],
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (kind, partition) in partitions {
        list.add_partition(&context.topics.commands(*kind), *partition);
    }
    list
}

/// How long a stopping process lets its writers finish what is queued.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What to do with a writer the broker fenced.
enum WhenFenced {
    /// Keep it (it takes no commands): starting a new one now would fence the writer that
    /// fenced it, which owns the partition, and the two would fence each other in turn.
    Keep,
    /// Replace it: the group has just assigned the partition to this process again.
    Replace,
}

/// The partition's writer, started on first use, after it ended, or on a new assignment after
/// it was fenced. `when_fenced` is asked only if the writer is fenced (its flag read once, so
/// the answer and the flag it is for cannot disagree).
fn writer_for<'a>(
    writers: &'a mut Writers,
    context: &Arc<WriterContext>,
    kind: AggregateKind,
    partition: i32,
    when_fenced: impl FnOnce() -> WhenFenced,
) -> &'a mut RunningWriter {
    let key = (kind, partition);
    let stale = writers.get(&key).is_some_and(|w| {
        if w.fenced.load(Ordering::SeqCst) {
            matches!(when_fenced(), WhenFenced::Replace)
        } else {
            w.task.is_finished()
        }
    });
    if stale && writers.remove(&key).is_some_and(|old| old.paused) {
        resume(context, &[key]);
    }
    writers
        .entry(key)
        .or_insert_with(|| spawn_writer(context.clone(), kind, partition))
}

/// `command_writer_starts_total{aggregate, partition}` counts every writer this process started
/// for a partition (each start replays the partition), and `command_writer_owned` says which
/// partitions it holds now: together they show that a rebalance restarted only the partitions
/// that moved.
fn count_owned(kind: AggregateKind, partition: i32, owned: bool) {
    metrics::gauge!("command_writer_owned", "aggregate" => kind.as_str(), "partition" => partition.to_string())
        .set(if owned { 1.0 } else { 0.0 });
}

fn spawn_writer(context: Arc<WriterContext>, kind: AggregateKind, partition: i32) -> RunningWriter {
    metrics::counter!("command_writer_starts_total", "aggregate" => kind.as_str(), "partition" => partition.to_string())
        .increment(1);
    count_owned(kind, partition, true);
    let (commands, rx) = mpsc::channel(1024);
    let revoked = CancellationToken::new();
    let fenced = Arc::new(AtomicBool::new(false));
    let lifecycle = writer::Lifecycle {
        revoked: revoked.clone(),
        fenced: fenced.clone(),
    };
    let task = match kind {
        AggregateKind::Customer => tokio::spawn(Writer::<CustomerAggregate>::run(
            context, partition, rx, lifecycle,
        )),
        AggregateKind::InventoryItem => tokio::spawn(Writer::<InventoryItem>::run(
            context, partition, rx, lifecycle,
        )),
        AggregateKind::Order => tokio::spawn(Writer::<OrderAggregate>::run(
            context, partition, rx, lifecycle,
        )),
        AggregateKind::OrderSaga => tokio::spawn(Writer::<OrderSagaAggregate>::run(
            context, partition, rx, lifecycle,
        )),
        AggregateKind::IdempotencyKey => tokio::spawn(Writer::<IdempotencyKey>::run(
            context, partition, rx, lifecycle,
        )),
    };
    RunningWriter {
        commands,
        revoked,
        fenced,
        task,
        overflow: VecDeque::new(),
        paused: false,
    }
}
