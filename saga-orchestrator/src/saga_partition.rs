//! One partition's sagas. `orders.events` p and `order-sagas.events` p hold the same order ids
//! (same key, same partition count), so one worker owns both. It starts from the order and saga
//! writers' snapshots of the partition (`takeover`, decision 0010), or from offset 0 where
//! there is none, folds what follows (applying the log-order rule), and acts on what it reads
//! past the group's committed offsets:
//!
//! - an accepted `OrderPlaced` / `OrderCancellationRequested` becomes a saga input;
//! - an accepted saga event that requests a step becomes the participant command, whose reply
//!   becomes the saga's next input (`domain::saga::reply_for`);
//! - every step awaited longer than the step timeout gets a `DeadlinePassed` input.
//!
//! An offset is committed only once everything it caused is done, so a killed orchestrator
//! redoes exactly the unfinished work, with the same command ids, which the command path
//! answers from the log instead of acting twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use command_bus::snapshots::{self, chain_head, CopyError, RestoreError};
use domain::order::OrderEvent;
use domain::saga::{reply_for, OrderSaga, OrderSagaAggregate, SagaEvent, SagaState};
use domain::{Current, Version, Versioned};
use platform::dead_letters::DeadLetter;
use platform::envelope::{EventEnvelope, Trace};
use platform::kafka::LagContext;
use platform::log_order::{LogOrder, Verdict};
use platform::spill::{SpillError, SpillFile};
use platform::telemetry::propagation::{self as telemetry, SpanRole};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemas::wire::snapshots::Snapshot;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::deadlines;
use crate::ids;
use crate::offset_book::{OffsetBook, Source};
use crate::pace;
use crate::saga_context::SagaContext;
use crate::saga_metrics::{self, SagaGauges};
use crate::settled::{Settled, SettledError, SettledSaga};
use crate::takeover;
use crate::timers::Timers;
use crate::translate::{order_event_input, outcome_of, ORDER_EVENTS_OF_INTEREST};

/// How often a worker commits, sends deadlines, reports and paces.
const TICK: Duration = Duration::from_millis(200);

/// What the worker knows of one saga.
struct Tracked {
    current: Current<OrderSagaAggregate>,
    last_event: Option<SagaEvent>,
    /// When the saga last recorded anything (deadlines count from here).
    last_event_at: DateTime<Utc>,
    /// When it last made progress (stuck sagas are told by this).
    last_progress_at: DateTime<Utc>,
    /// The version at which deadlines were last sent, so each is sent once per version.
    deadlines_sent_at: Option<Version>,
    /// Counted in the stuck gauge (and warned about): no progress past the stuck threshold.
    stuck_reported: bool,
    /// An accepted event of this saga cannot be decoded: hands off until fixed (dead-lettered).
    unreadable: bool,
    /// The trace context of its latest event, so a deadline continues the saga's trace.
    last_traceparent: Option<String>,
}

impl Tracked {
    /// A saga this worker did not see the events of (restored from a snapshot, or taken back
    /// from disk): its deadline and stuck check count from `started_at`, the worker's start.
    fn taken_on(current: Current<OrderSagaAggregate>, started_at: DateTime<Utc>) -> Self {
        Self {
            current,
            last_event: None,
            last_event_at: started_at,
            last_progress_at: started_at,
            deadlines_sent_at: None,
            stuck_reported: false,
            unreadable: false,
            last_traceparent: None,
        }
    }
}

/// The saga, once started (a free function, so callers can borrow other fields mutably).
fn running(current: &Current<OrderSagaAggregate>) -> Option<&OrderSaga> {
    match &current.state {
        SagaState::Running(saga) => Some(saga),
        SagaState::NotStarted => None,
    }
}

pub(crate) struct SagaPartition {
    shared: Arc<SagaContext>,
    partition: i32,
    topics: [String; 2],
    tail: Arc<StreamConsumer<LagContext>>,
    logs: [LogOrder; 2],
    /// Offsets below these were handled before this worker started: fold only, do not act.
    replay_until: [i64; 2],
    /// Offsets below these are in the restored state already: a record read below one (past
    /// the committed offset) is only acted on, if the snapshot says it was accepted.
    restored_end: [i64; 2],
    /// A record past the committed offset and before the snapshot's end is too old for the
    /// snapshot to tell whether it was accepted: this worker stops and one replaying from 0
    /// takes its place.
    cannot_tell: bool,
    /// What may be committed: the offsets whose effects are all done.
    offsets: OffsetBook,
    /// The sagas in flight (and those whose events cannot be read); finished ones are
    /// `settled` on disk.
    sagas: HashMap<String, Tracked>,
    /// Finished sagas and their chain heads, until an event of theirs arrives (decision 0011).
    settled: Settled,
    /// Set when the settled sagas cannot be read or written: the worker stops, leaving the
    /// record it was reading unread, and a new one (with a new file) takes its place.
    settled_failed: bool,
    /// The timestamp of the last record read from each topic, and the topic paused for the
    /// other to catch up (`pace`).
    last_read_at: [Option<i64>; 2],
    held_back: Option<Source>,
    /// Per topic, whether records this worker only folds (below `replay_until`) are still to
    /// be read. Until none are, a saga's timers may fall due for steps the log answers further
    /// on: no deadline is sent and no saga counted stuck before the replay is over.
    replaying: [bool; 2],
    /// When each saga that awaits a step has its deadline.
    deadline_timers: Timers,
    /// When each running saga would count as stuck without progress.
    stuck_timers: Timers,
    /// The `sagas` and `sagas_stuck` gauges, kept as events are read.
    gauges: SagaGauges,
    started_at: DateTime<Utc>,
    actions: JoinSet<Option<(Source, i64)>>,
    /// Per saga, the end of its latest participant command: the next one waits for it, so a
    /// saga's commands reach participants in the order of its events. (A restarted worker
    /// re-acts on every event past its committed offset at once; unordered, a re-sent
    /// reservation could land after the re-sent release of the same hold and stay held.)
    saga_turns: HashMap<String, oneshot::Receiver<()>>,
    stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("a blocking kafka call did not finish")]
    Join,
    #[error(transparent)]
    Settled(#[from] SettledError),
    #[error("the file of a snapshot copied at takeover")]
    Copy(#[from] CopyError),
    #[error("the file of a snapshot copied at takeover")]
    Spill(#[from] SpillError),
}

impl SagaPartition {
    pub(crate) async fn run(shared: Arc<SagaContext>, partition: i32, stop: CancellationToken) {
        let mut from_snapshots = true;
        loop {
            let Some(mut worker) =
                Self::start_retrying(&shared, partition, &stop, from_snapshots).await
            else {
                return;
            };
            info!(
                partition,
                replay_orders = worker.replay_until[0],
                replay_sagas = worker.replay_until[1],
                restored_orders = worker.restored_end[0],
                restored_sagas = worker.restored_end[1],
                "saga partition started"
            );
            worker.serve().await;
            if stop.is_cancelled() {
                return;
            }
            if worker.cannot_tell {
                from_snapshots = false;
            } else if worker.settled_failed {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            } else {
                return;
            }
        }
    }

    async fn start_retrying(
        shared: &Arc<SagaContext>,
        partition: i32,
        stop: &CancellationToken,
        from_snapshots: bool,
    ) -> Option<Self> {
        loop {
            match Self::start(shared.clone(), partition, stop.clone(), from_snapshots).await {
                Ok(worker) => return Some(worker),
                Err(error) => {
                    warn!(partition, %error, "could not start the saga partition; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn start(
        shared: Arc<SagaContext>,
        partition: i32,
        stop: CancellationToken,
        from_snapshots: bool,
    ) -> Result<Self, WorkerError> {
        let topics = [shared.orders_topic.clone(), shared.sagas_topic.clone()];
        let mut wanted = TopicPartitionList::new();
        for topic in &topics {
            wanted.add_partition(topic, partition);
        }
        let group = shared.group.clone();
        let committed = tokio::task::spawn_blocking(move || {
            group.committed_offsets(wanted, Duration::from_secs(10))
        })
        .await
        .map_err(|_| WorkerError::Join)??;
        let mut replay_until = [0i64; 2];
        for (i, topic) in topics.iter().enumerate() {
            if let Some(Offset::Offset(n)) = committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                replay_until[i] = n;
            }
        }
        let mut config = platform::kafka::latency_consumer_config(
            &shared.settings.kafka,
            &format!("{}.saga-tail", shared.settings.kafka.topic_prefix),
        );
        let tail: StreamConsumer<LagContext> =
            platform::kafka::one_partition_prefetch(&mut config, 2_000).create_with_context(
                LagContext {
                    consumer: "saga-orchestrator",
                },
            )?;
        let start = if from_snapshots {
            takeover::restore(&shared, partition).await
        } else {
            takeover::Start::from_the_beginning(&shared)
        };
        let mut assignment = TopicPartitionList::new();
        let mut replaying = [false; 2];
        for (i, topic) in topics.iter().enumerate() {
            // From the committed offset when the snapshot stands past it (what lies between is
            // acted on, not folded again), else from the snapshot's end (0 without one).
            let from = start.restored_end[i].min(replay_until[i]);
            replaying[i] = from < replay_until[i];
            assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
        }
        tail.assign(&assignment)?;
        let shared_state_dir = shared.settings.state_dir.clone();
        let mut worker = Self {
            shared,
            partition,
            topics,
            tail: Arc::new(tail),
            logs: start.logs,
            replay_until,
            restored_end: start.restored_end,
            cannot_tell: false,
            offsets: OffsetBook::starting_at(replay_until),
            sagas: HashMap::new(),
            settled: Settled::create(&shared_state_dir, partition)?,
            settled_failed: false,
            last_read_at: [None; 2],
            held_back: None,
            replaying,
            deadline_timers: Timers::default(),
            stuck_timers: Timers::default(),
            gauges: SagaGauges::new(partition),
            started_at: Utc::now(),
            actions: JoinSet::new(),
            saga_turns: HashMap::new(),
            stop,
        };
        // Every order and saga of the copies decoded: seconds for a large partition.
        platform::runtime::blocking(|| worker.adopt_copies(start.copies)).await?;
        Ok(worker)
    }

    /// Takes on the orders and sagas of the writers' snapshots copied at takeover, one id at a
    /// time (both copies are read side by side in key order; an order and its saga share their
    /// id): each order's head comes into memory, then its saga is adopted, and a finished saga
    /// goes to disk at once with both heads. So the takeover holds the sagas in flight, never
    /// the whole snapshot.
    fn adopt_copies(&mut self, copies: [Option<SpillFile>; 2]) -> Result<(), WorkerError> {
        let [orders, sagas] = copies;
        let empty = |copy: Option<SpillFile>| match copy {
            Some(copy) => Ok(copy),
            None => SpillFile::create(&self.shared.settings.state_dir, "saga-takeover-none"),
        };
        let (mut orders, mut sagas) = (empty(orders)?, empty(sagas)?);
        platform::spill::try_for_each_pair(&mut orders, &mut sagas, |id, order, saga| {
            if let Some(command_id) = id.strip_prefix(snapshots::COMMAND_KEY_PREFIX) {
                return self.adopt_uses(command_id, order, saga);
            }
            if !snapshots::is_aggregate_key(id) {
                return Ok(());
            }
            let decoded = |bytes: &[u8]| {
                schemas::decode::<Snapshot>(bytes).map_err(|source| CopyError::Record {
                    key: id.to_owned(),
                    source,
                })
            };
            let foreign = || {
                WorkerError::Copy(CopyError::Restore(RestoreError::ForeignRecord {
                    key: id.to_owned(),
                    kind: "order or saga",
                }))
            };
            if let Some(bytes) = order {
                let Snapshot::Order(head, _) = decoded(bytes)? else {
                    return Err(foreign());
                };
                self.logs[Source::Orders as usize].reinstate(id.to_owned(), chain_head(&head));
            }
            if let Some(bytes) = saga {
                let Snapshot::OrderSaga(head, state) = decoded(bytes)? else {
                    return Err(foreign());
                };
                self.logs[Source::Sagas as usize].reinstate(id.to_owned(), chain_head(&head));
                let current = Current {
                    state: state.map_or(SagaState::NotStarted, SagaState::Running),
                    version: Version::new(head.version),
                };
                self.adopt(id.to_owned(), current);
            }
            Ok::<_, WorkerError>(())
        })?;
        Ok(())
    }

    /// Keeps the uses of `command_id` the order and saga snapshots hold in the settled file,
    /// not in memory (decision 0015).
    fn adopt_uses(
        &mut self,
        command_id: &str,
        order: Option<&[u8]>,
        saga: Option<&[u8]>,
    ) -> Result<(), WorkerError> {
        for (source, record) in [(Source::Orders, order), (Source::Sagas, saga)] {
            if let Some(record) = record {
                self.settled
                    .put_use_record(uses_of(source), command_id, record)?;
            }
        }
        Ok(())
    }

    /// Takes on a saga restored from its snapshot: its deadlines and stuck check count from
    /// this worker's start, as a restarted worker's do for every saga.
    fn adopt(&mut self, saga_id: String, current: Current<OrderSagaAggregate>) {
        self.sagas
            .insert(saga_id.clone(), Tracked::taken_on(current, self.started_at));
        self.follow(&saga_id, None, false, false);
        self.settle_if_finished(&saga_id);
    }

    /// Moves a saga that has finished and awaits nothing to disk, with its order's and its
    /// own chain heads. If it cannot be written it stays in memory, and the worker stops for a
    /// new one (with a new file) to take its place.
    fn settle_if_finished(&mut self, saga_id: &str) {
        let Some(tracked) = self.sagas.get(saga_id) else {
            return;
        };
        let finished = running(&tracked.current)
            .is_some_and(|saga| saga.phase.is_terminal() && saga.awaiting().is_empty());
        if tracked.unreadable || !finished {
            return;
        }
        let [orders, sagas] = &mut self.logs;
        let Some(saga_head) = sagas.head(saga_id).cloned() else {
            return;
        };
        let saga = SettledSaga {
            current: tracked.current.clone(),
            saga_head,
            order_head: orders.head(saga_id).cloned(),
        };
        match self.settled.put(saga_id.to_owned(), &saga) {
            Ok(()) => {
                self.sagas.remove(saga_id);
                sagas.evict(saga_id);
                orders.evict(saga_id);
                self.gauges.settled(1);
            }
            Err(error) => {
                error!(partition = self.partition, %saga_id, %error, "a finished saga could not be settled on disk; restarting the partition's worker");
                self.settled_failed = true;
            }
        }
    }

    /// Takes the saga of `aggregate_id` (an order's or a saga's id: the same) back from disk
    /// if it settled there, before an event of either is judged or acted on. False when the
    /// settled sagas cannot be read: the worker must stop without reading the record.
    fn unsettle(&mut self, aggregate_id: &str) -> bool {
        if self.sagas.contains_key(aggregate_id) {
            return true;
        }
        let saga = match self.settled.get(aggregate_id) {
            Ok(Some(saga)) => saga,
            Ok(None) => return true,
            Err(error) => {
                error!(partition = self.partition, %aggregate_id, %error, "settled sagas unreadable; restarting the partition's worker");
                self.settled_failed = true;
                return false;
            }
        };
        let [orders, sagas] = &mut self.logs;
        sagas.reinstate(aggregate_id.to_owned(), saga.saga_head);
        if let Some(head) = saga.order_head {
            orders.reinstate(aggregate_id.to_owned(), head);
        }
        self.sagas.insert(
            aggregate_id.to_owned(),
            Tracked::taken_on(saga.current, self.started_at),
        );
        self.gauges.settled(-1);
        true
    }

    /// Takes the use of `command_id` in `source`'s log back from disk (decision 0015) if it
    /// is there and not in memory, before an event of that command is judged. False when the
    /// file cannot be read: the worker must stop without reading the record.
    fn take_back_use(&mut self, source: Source, command_id: &str) -> bool {
        let log = &mut self.logs[source as usize];
        if log.holds_command(command_id) {
            return true;
        }
        match self.settled.get_use(uses_of(source), command_id) {
            Ok(Some(used)) => {
                log.reinstate_command(command_id.to_owned(), used);
                true
            }
            Ok(None) => true,
            Err(error) => {
                error!(partition = self.partition, %command_id, %error, "command uses unreadable; restarting the partition's worker");
                self.settled_failed = true;
                false
            }
        }
    }

    /// Moves every command use out of memory to the settled file, and forgets there those the
    /// window has passed (decision 0015): the worker holds the uses of the last tick, not the
    /// window's. If the file fails, the worker stops for a new one to take its place.
    fn keep_uses_on_disk(&mut self) {
        let mut moved = 0;
        for source in [Source::Orders, Source::Sagas] {
            let leaving = self.logs[source as usize].evict_commands(|_| true);
            moved += leaving.len();
            for (command_id, used) in leaving {
                if let Err(error) = self.settled.put_use(uses_of(source), &command_id, &used) {
                    error!(partition = self.partition, %error, "command uses could not be kept on disk; restarting the partition's worker");
                    self.settled_failed = true;
                    return;
                }
            }
        }
        // One file for both topics' uses, each judged by its own clock: forgotten by the
        // earlier of the two (an order's events and its saga's come close together). A topic
        // nothing was read from yet has no uses to keep, and holds nothing back.
        let Some(before) = self
            .logs
            .iter()
            .filter(|log| log.clock() > 0)
            .map(|log| log.window().oldest_remembered(log.clock()))
            .min()
        else {
            return;
        };
        if let Err(error) = self
            .settled
            .forget_uses_before(before, platform::spill::pass_size(moved))
        {
            error!(partition = self.partition, %error, "command uses could not be forgotten on disk; restarting the partition's worker");
            self.settled_failed = true;
        }
    }

    /// Reads and acts until stopped, and every [`TICK`] commits, sends deadlines, publishes
    /// the gauges and paces the two topics. The tick is due by the clock, checked between
    /// records: a timer alone would fire late while the tail has records queued (tokio fires
    /// timers when a thread looks up from its tasks, see `platform::runtime::take_turn`), and a
    /// replay that paces seldom lets one topic run far ahead of the other.
    async fn serve(&mut self) {
        let mut next_tick = Instant::now() + TICK;
        let tick = tokio::time::sleep_until(next_tick);
        tokio::pin!(tick);
        loop {
            if self.settled_failed {
                break;
            }
            if Instant::now() >= next_tick {
                self.tick().await;
                if self.settled_failed {
                    // The uses it was moving are in neither memory nor the file: no record
                    // may be judged without them.
                    break;
                }
                next_tick = Instant::now() + TICK;
                tick.as_mut().reset(next_tick);
            }
            let tail = self.tail.clone();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                received = tail.recv() => match received {
                    Ok(message) => {
                        self.absorb(&message).await;
                        if self.cannot_tell || self.settled_failed {
                            break;
                        }
                        drop(message);
                        platform::runtime::take_turn().await;
                    }
                    Err(error) => {
                        warn!(partition = self.partition, %error, "saga tail error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                Some(done) = self.actions.join_next(), if !self.actions.is_empty() => {
                    if let Ok(Some((source, offset))) = done {
                        self.offsets.finish(source, offset);
                    }
                }
                () = &mut tick => {}
            }
        }
        self.stop_gracefully().await;
    }

    /// What the worker does every [`TICK`]: forgets finished turns, sends deadlines once the
    /// replay is over, commits, reports and paces.
    async fn tick(&mut self) {
        // Forget the turns of sagas with nothing in flight.
        self.saga_turns
            .retain(|_, turn| matches!(turn.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        // The uses the window forgot are listed for a writer's snapshot; this worker writes
        // none, and the list would grow with the log.
        for log in &mut self.logs {
            log.take_forgotten();
        }
        // The file's expiry pass (and, when a batch fills, waiting for the one written behind
        // before it): up to tens of milliseconds a tick at load, off the runtime's threads.
        // A tick that read no event has nothing to move (what is due to be forgotten waits
        // for the next that did): no thread hand-off five times a second for nothing.
        if self.logs.iter().any(|log| log.remembered_commands() > 0) {
            platform::runtime::off_the_runtime(|| self.keep_uses_on_disk());
        }
        let replayed = self.replayed();
        if replayed {
            self.check_deadlines();
        }
        self.commit().await;
        self.report(replayed);
        self.pace().await;
    }

    /// Lets running actions finish for a moment, commits what is done, and leaves.
    async fn stop_gracefully(&mut self) {
        let grace = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut grace => break,
                done = self.actions.join_next() => match done {
                    Some(Ok(Some((source, offset)))) => self.offsets.finish(source, offset),
                    Some(_) => {}
                    None => break,
                }
            }
        }
        self.actions.abort_all();
        self.commit().await;
        self.gauges.clear();
        debug!(partition = self.partition, "saga partition stopped");
    }

    fn source_of(&self, topic: &str) -> Option<Source> {
        if topic == self.topics[0] {
            Some(Source::Orders)
        } else if topic == self.topics[1] {
            Some(Source::Sagas)
        } else {
            None
        }
    }

    async fn absorb(&mut self, message: &BorrowedMessage<'_>) {
        let Some(source) = self.source_of(message.topic()) else {
            return;
        };
        if let Some(timestamp) = message.timestamp().to_millis() {
            self.last_read_at[source as usize] = Some(timestamp);
        }
        let offset = message.offset();
        if offset < self.restored_end[source as usize] {
            return self.redo(source, message).await;
        }
        let live = offset >= self.replay_until[source as usize];
        if live {
            self.replaying[source as usize] = false;
        }
        let timestamp = message.timestamp().to_millis();
        let envelope = match EventEnvelope::from_headers(message.headers()) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.offsets.read(source, offset);
                self.logs[source as usize].pass(timestamp);
                if live {
                    self.dead_letter(source, message, format!("invalid envelope: {error}"))
                        .await;
                }
                return;
            }
        };
        if !self.unsettle(&envelope.aggregate_id)
            || !self.take_back_use(source, &envelope.command_id)
        {
            return;
        }
        self.offsets.read(source, offset);
        if let Verdict::Loser(reason) =
            self.logs[source as usize].judge(&envelope, offset, timestamp)
        {
            metrics::counter!("log_order_rejections_total", "reader" => "saga-orchestrator", "aggregate" => envelope.aggregate_kind.as_str())
                .increment(1);
            debug!(aggregate_id = %envelope.aggregate_id, ?reason, "inert event (lost in log order)");
            self.settle_if_finished(&envelope.aggregate_id);
            return;
        }
        match source {
            Source::Orders => self.on_order_event(message, &envelope, live).await,
            Source::Sagas => self.on_saga_event(message, &envelope, live).await,
        }
        self.settle_if_finished(&envelope.aggregate_id);
    }

    /// A record past the committed offset that the restored state already holds: acted on
    /// if the snapshot says it was accepted (it is not folded again), as it would have been
    /// when it was first read.
    async fn redo(&mut self, source: Source, message: &BorrowedMessage<'_>) {
        let offset = message.offset();
        let envelope = match EventEnvelope::from_headers(message.headers()) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.offsets.read(source, offset);
                self.dead_letter(source, message, format!("invalid envelope: {error}"))
                    .await;
                return;
            }
        };
        if !self.unsettle(&envelope.aggregate_id)
            || !self.take_back_use(source, &envelope.command_id)
        {
            return;
        }
        self.redo_event(source, message, &envelope).await;
        self.settle_if_finished(&envelope.aggregate_id);
    }

    /// [`Self::redo`] once the event's saga is in memory.
    async fn redo_event(
        &mut self,
        source: Source,
        message: &BorrowedMessage<'_>,
        envelope: &EventEnvelope,
    ) {
        let offset = message.offset();
        let timestamp = message.timestamp().to_millis();
        let verdict = self.logs[source as usize].accepted_before(envelope, offset, timestamp);
        if verdict.is_some() {
            self.offsets.read(source, offset);
        }
        match verdict {
            Some(true) => {}
            Some(false) => return,
            // Not read: the offset stays uncommitted, for the replaying worker to act on.
            None => {
                warn!(partition = self.partition, offset, topic = %self.topics[source as usize], "the snapshot cannot tell whether an event it covers was accepted (older than the command window); replaying from the start instead");
                metrics::counter!("saga_snapshot_restores_total", "aggregate" => envelope.aggregate_kind.as_str(), "outcome" => "abandoned")
                    .increment(1);
                self.cannot_tell = true;
                return;
            }
        }
        metrics::counter!("saga_events_redone_from_snapshot_total", "aggregate" => envelope.aggregate_kind.as_str())
            .increment(1);
        match source {
            Source::Orders => self.on_order_event(message, envelope, true).await,
            Source::Sagas => {
                let decoded = message
                    .payload()
                    .ok_or(schemas::DecodeError::TooShort { len: 0 })
                    .and_then(schemas::decode::<SagaEvent>);
                match decoded {
                    Ok(event) => {
                        self.act_on_saga_event(&envelope.aggregate_id, &event, envelope, offset)
                    }
                    Err(error) => {
                        self.dead_letter(Source::Sagas, message, error.to_string())
                            .await
                    }
                }
            }
        }
    }

    async fn on_order_event(
        &mut self,
        message: &BorrowedMessage<'_>,
        envelope: &EventEnvelope,
        live: bool,
    ) {
        if !live || !ORDER_EVENTS_OF_INTEREST.contains(&envelope.event_type.as_str()) {
            return;
        }
        let event = match message
            .payload()
            .ok_or(schemas::DecodeError::TooShort { len: 0 })
            .and_then(schemas::decode::<OrderEvent>)
        {
            Ok(event) => event,
            Err(error) => {
                self.dead_letter(Source::Orders, message, error.to_string())
                    .await;
                return;
            }
        };
        let Some(input) = order_event_input(event) else {
            return;
        };
        let command_id = ids::from_order_event(envelope.event_id);
        let trace = caused_by(envelope);
        let span = telemetry::record_span(
            &format!("saga on {}", envelope.event_type),
            SpanRole::Consumer,
            &envelope.aggregate_id,
            &envelope.trace,
        );
        let (sender, stop) = (self.shared.sender.clone(), self.stop.clone());
        let offset = message.offset();
        self.offsets.begin(Source::Orders, offset);
        self.actions.spawn(async move {
            match sender.record(command_id, &input, trace, &stop).await {
                Some(reply) if reply.outcome != schemas::ReplyOutcome::Accepted => {
                    warn!(saga_id = %input.saga_id, code = ?reply.code, detail = %reply.detail, "saga refused an order event's input");
                }
                Some(_) => {}
                None => return None,
            }
            Some((Source::Orders, offset))
        }.instrument(span));
    }

    async fn on_saga_event(
        &mut self,
        message: &BorrowedMessage<'_>,
        envelope: &EventEnvelope,
        live: bool,
    ) {
        let saga_id = envelope.aggregate_id.clone();
        let started_at = self.started_at;
        let tracked = self
            .sagas
            .entry(saga_id.clone())
            .or_insert_with(|| Tracked {
                current: Current::default(),
                last_event: None,
                last_event_at: envelope.occurred_at,
                last_progress_at: envelope.occurred_at,
                deadlines_sent_at: None,
                stuck_reported: false,
                unreadable: false,
                last_traceparent: None,
            });
        if tracked.unreadable {
            return;
        }
        let event = match message
            .payload()
            .ok_or(schemas::DecodeError::TooShort { len: 0 })
            .and_then(schemas::decode::<SagaEvent>)
        {
            Ok(event) => event,
            Err(error) => {
                tracked.unreadable = true;
                self.deadline_timers.set(&saga_id, None);
                error!(%saga_id, offset = message.offset(), %error, "accepted saga event cannot be decoded; saga parked");
                if live {
                    self.dead_letter(Source::Sagas, message, error.to_string())
                        .await;
                }
                return;
            }
        };
        let phase_before = running(&tracked.current).map(|saga| saga.phase.as_str());
        if let Err(gap) = tracked.current.apply(&Versioned {
            version: envelope.version,
            event: event.clone(),
        }) {
            error!(%saga_id, ?gap, "saga event out of order; saga parked");
            tracked.unreadable = true;
            self.deadline_timers.set(&saga_id, None);
            return;
        }
        let progressed = event.is_progress(tracked.last_event.as_ref());
        if progressed {
            tracked.last_progress_at = envelope.occurred_at;
        }
        tracked.last_event_at = envelope.occurred_at;
        tracked.last_event = Some(event.clone());
        tracked.last_traceparent = envelope.trace.traceparent.clone();
        let after_start = envelope.occurred_at >= started_at;

        self.follow(&saga_id, phase_before, progressed, after_start);
        if live {
            self.act_on_saga_event(&saga_id, &event, envelope, message.offset());
        }
    }

    /// Sends the participant command an accepted saga event (at `offset`) asks for, if any;
    /// its reply becomes the saga's next input.
    fn act_on_saga_event(
        &mut self,
        saga_id: &str,
        event: &SagaEvent,
        envelope: &EventEnvelope,
        offset: i64,
    ) {
        let Some(tracked) = self.sagas.get(saga_id).filter(|t| !t.unreadable) else {
            return;
        };
        let Some((order_id, command)) = running(&tracked.current)
            .and_then(|saga| Some((saga.order_id, saga.command_for(event)?)))
        else {
            return;
        };
        let saga_id = saga_id.to_owned();
        let trace = caused_by(envelope);
        let (sender, stop) = (self.shared.sender.clone(), self.stop.clone());
        let step = command.step.name();
        let span = telemetry::record_span(
            &format!("saga step {step}"),
            SpanRole::Consumer,
            &saga_id,
            &envelope.trace,
        );
        self.offsets.begin(Source::Sagas, offset);
        let previous = self.saga_turns.remove(&saga_id);
        let (turn_done, turn) = oneshot::channel::<()>();
        self.saga_turns.insert(saga_id.clone(), turn);
        self.actions.spawn(async move {
            // This saga's previous command first (its end is signalled when `turn_done` of
            // that action is dropped, whatever way it ended).
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let _turn_done = turn_done;
            let sent_at = std::time::Instant::now();
            let command_id = ids::participant_command(&saga_id, &command);
            let reply = sender.perform(command_id, &command, trace.clone(), &stop).await;
            let Some(reply) = reply else {
                if stop.is_cancelled() {
                    return None;
                }
                saga_metrics::command_unanswered(&step);
                return Some((Source::Sagas, offset));
            };
            saga_metrics::command_answered(&step, reply.outcome, sent_at.elapsed());
            let input = outcome_of(&reply).and_then(|outcome| reply_for(&command, &outcome));
            if let Some(input) = input {
                let message = domain::saga::SagaMessage {
                    saga_id: order_id,
                    input,
                };
                sender
                    .record(ids::answer(&saga_id, &command), &message, trace, &stop)
                    .await?;
            } else {
                debug!(%saga_id, %step, outcome = ?reply.outcome, code = ?reply.code, "reply means nothing to the saga");
            }
            Some((Source::Sagas, offset))
        }.instrument(span));
    }

    /// Keeps the gauges and the saga's timers (deadline, stuck check) in step with the event
    /// just applied to it, instead of a scan of every saga on every tick.
    fn follow(
        &mut self,
        saga_id: &str,
        phase_before: Option<&'static str>,
        progressed: bool,
        after_start: bool,
    ) {
        let Some(tracked) = self.sagas.get_mut(saga_id) else {
            return;
        };
        let saga = running(&tracked.current);
        let phase_after = saga.map(|saga| saga.phase.as_str());
        self.gauges.moved(phase_before, phase_after, after_start);
        let ended = saga.is_none_or(|saga| saga.phase.is_terminal());
        if tracked.stuck_reported && (progressed || ended) {
            tracked.stuck_reported = false;
            self.gauges.unstuck();
        }
        let (settings, started_at) = (&self.shared.settings, self.started_at);
        let awaits = saga.is_some_and(|saga| !saga.awaiting().is_empty());
        let deadline_at = awaits
            .then(|| later_of(tracked.last_event_at, started_at, settings.step_timeout))
            .flatten();
        self.deadline_timers.set(saga_id, deadline_at);
        let stuck_at = (!ended)
            .then(|| later_of(tracked.last_progress_at, started_at, settings.stuck_after))
            .flatten();
        self.stuck_timers.set(saga_id, stuck_at);
    }

    /// Sends `DeadlinePassed` for every step awaited longer than the step timeout. Time counts
    /// from the saga's last event, or from this worker's start if later (a restarted
    /// orchestrator first re-sends what was in flight).
    fn check_deadlines(&mut self) {
        let clock = deadlines::Clock {
            now: Utc::now(),
            started_at: self.started_at,
            step_timeout: chrono::Duration::from_std(self.shared.settings.step_timeout)
                .unwrap_or(chrono::Duration::MAX),
        };
        for saga_id in self.deadline_timers.pop_due(clock.now) {
            let Some(tracked) = self.sagas.get_mut(&saga_id) else {
                continue;
            };
            let saga_id = &saga_id;
            if tracked.unreadable {
                continue;
            }
            let version = tracked.current.version;
            let Some(saga) = running(&tracked.current) else {
                continue;
            };
            let (order_id, awaiting) = (saga.order_id, saga.awaiting());
            let state = deadlines::Awaiting {
                steps: !awaiting.is_empty(),
                version,
                last_event_at: tracked.last_event_at,
                sent_at: tracked.deadlines_sent_at,
            };
            if !deadlines::due(&clock, &state) {
                continue;
            }
            tracked.deadlines_sent_at = Some(version);
            for step in awaiting {
                let message = domain::saga::SagaMessage {
                    saga_id: order_id,
                    input: domain::saga::SagaInput::DeadlinePassed { step },
                };
                let command_id = ids::deadline(saga_id, step, version);
                let trace = Trace {
                    correlation_id: saga_id.clone(),
                    causation_id: command_id.clone(),
                    traceparent: tracked.last_traceparent.clone(),
                };
                let span = telemetry::record_span(
                    &format!("saga deadline {step}"),
                    SpanRole::Consumer,
                    saga_id,
                    &trace,
                );
                span.in_scope(|| info!(%saga_id, step = %step, "step deadline passed"));
                saga_metrics::deadline_sent(&step.name());
                let (sender, stop) = (self.shared.sender.clone(), self.stop.clone());
                self.actions.spawn(
                    async move {
                        sender.record(command_id, &message, trace, &stop).await;
                        None
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Pauses the topic that runs ahead of the other in log time, resumes it once the other
    /// caught up or reached its end (see `pace`).
    async fn pace(&mut self) {
        let wanted = match pace::ahead(self.last_read_at) {
            Some(ahead) if !self.read_to_end(pace::other(ahead)).await => Some(ahead),
            _ => None,
        };
        if wanted == self.held_back {
            return;
        }
        for (source, pause) in [(self.held_back, false), (wanted, true)] {
            let Some(source) = source else { continue };
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topics[source as usize], self.partition);
            let done = if pause {
                self.tail.pause(&list)
            } else {
                self.tail.resume(&list)
            };
            if let Err(error) = done {
                warn!(partition = self.partition, %error, pause, "could not pace the saga topics");
            }
        }
        self.held_back = wanted;
    }

    /// Whether the tail has read `source` up to its high watermark (unknown counts as read:
    /// the other topic is never held back on a guess).
    async fn read_to_end(&self, source: Source) -> bool {
        let (tail, topic, partition) = (
            self.tail.clone(),
            self.topics[source as usize].clone(),
            self.partition,
        );
        let Some(position) = platform::log_end::position(&*tail, &topic, partition) else {
            return true;
        };
        let high = tokio::task::spawn_blocking(move || {
            tail.fetch_watermarks(&topic, partition, Duration::from_secs(1))
        })
        .await;
        match high {
            Ok(Ok((_, high))) => position >= high,
            _ => true,
        }
    }

    /// Commits, per topic, the lowest offset whose effects are not all done.
    async fn commit(&mut self) {
        let positions = self.offsets.to_commit();
        let mut list = TopicPartitionList::new();
        for (topic, position) in self.topics.iter().zip(positions) {
            if let Some(position) = position {
                let _ = list.add_partition_offset(topic, self.partition, Offset::Offset(position));
            }
        }
        if list.count() == 0 {
            return;
        }
        let group = self.shared.group.clone();
        let result =
            tokio::task::spawn_blocking(move || group.commit(&list, CommitMode::Sync)).await;
        match result {
            Ok(Ok(())) => self.offsets.committed(positions),
            Ok(Err(error)) => {
                warn!(partition = self.partition, %error, "offset commit refused (partition moving?)")
            }
            Err(_) => warn!(partition = self.partition, "offset commit did not finish"),
        }
    }

    /// Whether the worker has read every record it only folds, on both topics: a live record
    /// read, or the tail's position past `replay_until` (markers may come last).
    /// Also publishes what is left to read (`saga_replay_remaining`).
    fn replayed(&mut self) -> bool {
        let mut remaining = [0u64; 2];
        for (i, topic) in self.topics.iter().enumerate() {
            if !self.replaying[i] {
                continue;
            }
            // Before the first fetch, the offset the tail was assigned.
            let position = platform::log_end::position(&*self.tail, topic, self.partition)
                .unwrap_or(self.restored_end[i].min(self.replay_until[i]));
            if position >= self.replay_until[i] {
                self.replaying[i] = false;
            } else {
                remaining[i] = u64::try_from(self.replay_until[i] - position).unwrap_or(0);
            }
        }
        self.gauges.replay_remaining(remaining);
        self.replaying.iter().all(|replaying| !replaying)
    }

    /// Counts the sagas whose stuck check is due and that made no progress since (once
    /// `replayed`: until then the log may show their progress further on), and publishes the
    /// gauges (kept as events are read).
    fn report(&mut self, replayed: bool) {
        let now = Utc::now();
        let stuck_after = self.shared.settings.stuck_after;
        let due = if replayed {
            self.stuck_timers.pop_due(now)
        } else {
            Vec::new()
        };
        for saga_id in due {
            let Some(tracked) = self.sagas.get_mut(&saga_id) else {
                continue;
            };
            let Some(saga) = running(&tracked.current) else {
                continue;
            };
            if saga.phase.is_terminal() || tracked.stuck_reported {
                continue;
            }
            let since = tracked.last_progress_at.max(self.started_at);
            if chrono::Duration::from_std(stuck_after).is_ok_and(|after| now - since <= after) {
                // Due to the millisecond, not past it: look again a moment later.
                let again = now.checked_add_signed(chrono::Duration::milliseconds(1));
                self.stuck_timers.set(&saga_id, again);
                continue;
            }
            tracked.stuck_reported = true;
            self.gauges.stuck();
            warn!(%saga_id, state = saga.phase.as_str(), awaiting = ?saga.awaiting().iter().map(|s| s.name()).collect::<Vec<_>>(), since = %since, "saga is stuck: no progress past its timeouts");
        }
        self.gauges.publish();
    }

    async fn dead_letter(&self, source: Source, message: &BorrowedMessage<'_>, error: String) {
        let letter = DeadLetter::from_message(
            &self.topics[source as usize],
            &message.detach(),
            error.clone(),
            1,
        );
        metrics::counter!("dead_letters_total", "consumer" => "saga-orchestrator").increment(1);
        error!(topic = %self.topics[source as usize], offset = message.offset(), %error, "poison record dead-lettered");
        if let Err(error) = self.shared.dead_letters.publish(&[letter]).await {
            error!(%error, "could not publish a dead letter");
        }
    }
}

/// The name of a topic's command uses in the settled file.
fn uses_of(source: Source) -> &'static str {
    match source {
        Source::Orders => "orders",
        Source::Sagas => "sagas",
    }
}

/// `duration` after the later of `time` and `started_at` (a restarted worker counts from its
/// start); `None` when that is past what a timestamp holds (a timeout meaning "never").
fn later_of(
    time: DateTime<Utc>,
    started_at: DateTime<Utc>,
    duration: Duration,
) -> Option<DateTime<Utc>> {
    let duration = chrono::Duration::from_std(duration).ok()?;
    time.max(started_at).checked_add_signed(duration)
}

/// Trace context for whatever an event causes.
fn caused_by(envelope: &EventEnvelope) -> Trace {
    Trace {
        correlation_id: envelope.trace.correlation_id.clone(),
        causation_id: envelope.event_id.to_string(),
        traceparent: envelope.trace.traceparent.clone(),
    }
}
