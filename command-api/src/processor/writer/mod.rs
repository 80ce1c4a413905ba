//! The writer of one partition of one aggregate kind: the only process that appends to events
//! partition p. It first fences every earlier writer of the partition (`init_transactions` under
//! the partition's transactional id aborts their open transaction and refuses their later
//! sends), restores state from the partition's snapshot and reads the committed events after it
//! (applying the log-order rule; all of them when there is no usable snapshot), then handles
//! commands in batches, one Kafka transaction each: decide on the current
//! state, send the command offsets, the events and the answers together, check that the events
//! landed right after what it has read, commit. Callers see the answers only once the
//! transaction commits.
//!
//! The decisions themselves are pure and live in [`super::partition`]; the writer does the I/O.
//!
//! Layout: this file holds the partition's lifecycle (fencing, rebuild, reading the tail);
//! `batch` a batch's transaction; `recovery` what must be done after an attempt that did not
//! commit; `plan` the decision's span and trace around the partition model; `replay_memory`
//! how many aggregates a replay keeps in memory; `snapshot` restoring from and writing the
//! partition's snapshot; `spill` the aggregates kept on disk rather than in memory (decision
//! 0012); `transaction` the producer's transactional calls and what their failures mean.
mod batch;
mod plan;
mod recovery;
mod replay_memory;
mod snapshot;
mod spill;
mod transaction;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use platform::envelope::EventEnvelope;
use platform::polled_producer::PolledProducer;
use platform::spill::{SpillError, SpillFile};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::partition::{Judged, PartitionModel};
use super::write_model::WriteModel;
use super::{IncomingCommand, WriterContext};
use batch::Handled;
pub(super) use recovery::Recovery;
use replay_memory::ReplayMemory;

/// At most this many commands are decided and appended together.
const MAX_BATCH: usize = 256;

/// How long an empty fetch of a partition's tail waits at the broker. The broker answers a
/// waiting fetch as soon as a record or a marker moves the last stable offset (a batch's marker
/// wait sees it 2 ms after the commit at 100 ms or 500 ms alike), so this bounds idle fetches
/// only: librdkafka's default, 500 ms, keeps a process's 30 idle tails at 60 fetches a second
/// (an idle command-api: 8.5% -> 6.4% of a core against 100 ms).
const TAIL_FETCH_WAIT_MS: &str = "500";

/// While a takeover replays, a snapshot is written (and the aggregates it makes clean leave
/// memory) whenever the model holds this many aggregates more than the replay keeps (see
/// `replay_memory`): a replay of a long log holds about this many, not every aggregate of the
/// partition.
const REPLAY_SPILL_SLACK: usize = 1_000;

/// How long a batch waits for the tail to pass the writer's last commit marker before it goes
/// ahead anyway (and pays librdkafka's retries if the coordinator is still completing).
const MARKER_WAIT: Duration = Duration::from_millis(500);

/// While a replay's records keep coming, the tail's position is asked for once in this many.
const POSITION_EVERY: usize = 256;

/// How close to its target a read asks for the tail's position after every record: what is
/// left may be transaction markers, which take offsets but are never handed over.
const NEAR_THE_END: i64 = 16;

/// How long a rebuild or a takeover may read the partition without getting any further before
/// it gives up (and tries again). Not a bound on the whole read: a replay of a long log takes
/// as long as it takes (with a 60 s bound, a writer replaying 800,000 events on a busy machine
/// started over every minute and never served).
const REBUILD_STALL: Duration = Duration::from_secs(60);

/// How the dispatcher and a writer tell each other that the writer must stop.
pub(in crate::processor) struct Lifecycle {
    /// Cancelled when the partition is revoked: finish or abort the open transaction, drop
    /// whatever is queued, stop.
    pub(in crate::processor) revoked: CancellationToken,
    /// Set by the writer when the broker fenced it (a newer writer of the partition exists).
    pub(in crate::processor) fenced: Arc<AtomicBool>,
}

pub(super) struct Writer<A: WriteModel>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    ctx: Arc<WriterContext>,
    partition: i32,
    events_topic: String,
    commands_topic: String,
    /// Transactional, under the partition's transactional id: only the newest holder commits.
    producer: PolledProducer,
    tail: Arc<StreamConsumer>,
    /// The offset after the last record this writer has judged (read or appended itself).
    next_offset: i64,
    /// Every offset below this one is accounted for: records judged, transaction markers and
    /// aborted records passed. A batch's events must land exactly here to be judged in place.
    known_end: i64,
    /// Where the commit marker of this writer's last batch with events ends: the broker writes
    /// the marker after the commit has returned, and the next batch waits for the tail to pass
    /// it (see [`Self::await_last_marker`]). 0 until the writer commits events: the transactions
    /// of earlier writers were settled by `init_transactions`.
    marker_end: i64,
    /// The offset after the last record the tail has handed over (where it started, before
    /// any). The tail's position passes a commit marker only after it has handed over the
    /// record before the marker, so [`Self::marker_served`] asks for the position (a blocking
    /// round trip to librdkafka's thread) only from then on, not after each of the batch's own
    /// events read back.
    handed_end: i64,
    /// The commit marker (its `marker_end`) the last marker wait saw served: the next batch
    /// does not wait for, nor ask the position of, a marker already passed.
    marker_passed: i64,
    /// What the log says of the partition, and the decisions on it.
    model: PartitionModel<A>,
    /// The aggregates the model does not hold in memory (decision 0012).
    spilled: SpillFile,
    /// Command ids the batch being decided found neither in memory nor in `spilled`: its own
    /// events of them, judged as it appends them, need not look in the file again (only a
    /// spill after a committed snapshot adds uses to the file, and it clears this).
    absent_uses: HashSet<String>,
    /// Commands below this offset of the commands partition were handled in a committed
    /// transaction: a second delivery of one (after a handover or a restart) is dropped.
    command_floor: i64,
    recovery: Recovery,
    /// When the snapshot last caught up with the model (for a writer that just started
    /// serving, its phase of an interval before: `snapshot::counted_from`).
    last_snapshot: std::time::Instant,
    /// When the last snapshot failed, until one commits: a replay does not try again before
    /// `SNAPSHOT_INTERVAL` has passed (it would otherwise try after every record).
    snapshot_failed_at: Option<std::time::Instant>,
    /// While the writer replays with snapshots (a takeover or a rebuild): what it keeps in
    /// memory, learned as it goes.
    replay: Option<ReplayMemory>,
}

impl<A: WriteModel> Writer<A>
where
    A::Event: schemas::WireRecord + Send + Sync,
    A::Command: schemas::WireRecord + Clone + Send + Sync,
    A::State: Send + Sync,
{
    /// Serves commands for one partition until the partition is revoked, the writer is fenced,
    /// or the channel closes (shutdown: what is queued is handled first).
    pub(super) async fn run(
        ctx: Arc<WriterContext>,
        partition: i32,
        mut commands: mpsc::Receiver<IncomingCommand>,
        lifecycle: Lifecycle,
    ) {
        let kind = A::KIND;
        let Some(mut writer) = Self::start_until_revoked(&ctx, partition, &lifecycle).await else {
            return;
        };
        ctx.writers_ready.fetch_add(1, Ordering::SeqCst);
        loop {
            let first = tokio::select! {
                biased;
                _ = lifecycle.revoked.cancelled() => break,
                next = commands.recv() => match next {
                    Some(command) => command,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            match writer.handle(batch, &lifecycle.revoked).await {
                Handled::Committed => {}
                Handled::Abandoned => break,
                Handled::Fenced => {
                    lifecycle.fenced.store(true, Ordering::SeqCst);
                    warn!(%kind, partition, "fenced by a newer writer of the partition; stopping");
                    break;
                }
            }
        }
        ctx.writers_ready.fetch_sub(1, Ordering::SeqCst);
        writer.count_none();
        debug!(%kind, partition, "writer stopped");
    }

    /// Starts (fences, rebuilds), retrying every second, until it works or the partition is
    /// revoked. A start is never cut short: an `init_transactions` left running after a revoke
    /// could land after the new owner's and fence it.
    async fn start_until_revoked(
        ctx: &Arc<WriterContext>,
        partition: i32,
        lifecycle: &Lifecycle,
    ) -> Option<Self> {
        loop {
            let started = Self::start(ctx.clone(), partition).await;
            if lifecycle.revoked.is_cancelled() {
                if let Ok(writer) = &started {
                    writer.count_none();
                }
                return None;
            }
            match started {
                Ok(writer) => return Some(writer),
                Err(error) => {
                    warn!(kind = %A::KIND, partition, %error, "could not take over the partition; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = lifecycle.revoked.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Fences every earlier writer, learns which commands they committed, reads the partition.
    async fn start(ctx: Arc<WriterContext>, partition: i32) -> Result<Self, WriterError> {
        let events_topic = ctx.topics.events(A::KIND);
        let commands_topic = ctx.topics.commands(A::KIND);
        let started = std::time::Instant::now();
        let producer = transaction::fence_earlier_writers(&ctx, A::KIND, partition).await?;
        let command_floor =
            transaction::committed_floor(&ctx.group, &commands_topic, partition).await?;
        let fenced_ms = millis_since(started);
        let restored = snapshot::restore::<A>(&ctx, partition).await?;
        let restored_ms = millis_since(started);
        let from = restored.events_end;
        let tail = Self::tail(&ctx, &events_topic, partition, from)?;
        let mut writer = Self {
            partition,
            events_topic,
            commands_topic,
            producer,
            tail: Arc::new(tail),
            next_offset: from,
            known_end: from,
            marker_end: 0,
            handed_end: from,
            marker_passed: 0,
            model: restored.model,
            spilled: restored.spilled,
            absent_uses: HashSet::new(),
            command_floor,
            recovery: Recovery::None,
            last_snapshot: std::time::Instant::now(),
            snapshot_failed_at: None,
            replay: None,
            ctx,
        };
        writer.catch_up(REBUILD_STALL).await?;
        let replayed = writer.known_end - from;
        let elapsed_ms = millis_since(started);
        metrics::histogram!("writer_takeover_seconds", "aggregate" => A::KIND.as_str())
            .record(started.elapsed().as_secs_f64());
        // The takeover's phases, in milliseconds since it started: earlier writers fenced (and
        // the command offsets read), the snapshot restored, the events after it replayed.
        info!(kind = %A::KIND, partition, from, end = writer.known_end, replayed, fenced_ms, restored_ms, elapsed_ms, "partition state rebuilt");
        if replayed >= snapshot::SNAPSHOT_AFTER_REPLAY {
            writer.snapshot_alone().await;
        }
        // Counted from when it serves, not when it was built: a takeover's catch-up would
        // otherwise make a snapshot due with its first batch, and writers taking over together
        // would snapshot together (a failed snapshot still waits a whole interval).
        if writer.snapshot_failed_at.is_none() {
            writer.last_snapshot =
                snapshot::counted_from(A::KIND, partition, writer.ctx.partitions);
        }
        writer.count_resident();
        Ok(writer)
    }

    /// A consumer of the events partition from offset `from`. It is read between batches
    /// for records this writer did not append (there are none unless the deployment is
    /// misconfigured), so it need not poll at the request path's 5 ms: idle fetches at 5 ms
    /// from every partition's tail cost the broker more than the commands do. A process runs
    /// one per partition and kind, all replaying at once in a takeover, so each prefetches
    /// 1,000 records (256 KiB fetches) and keeps no statistics (librdkafka's latency histograms
    /// cost about 1 MiB a client; the writer's lag is its own `known_end`, not the tail's).
    fn tail(
        ctx: &WriterContext,
        events_topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<StreamConsumer, WriterError> {
        let mut config = platform::kafka::consumer_config(
            &ctx.kafka,
            &format!("{}.writer-tail", ctx.kafka.topic_prefix),
        );
        config.set("fetch.wait.max.ms", TAIL_FETCH_WAIT_MS);
        platform::kafka::one_partition_prefetch(&mut config, 1_000)
            .set("statistics.interval.ms", "0");
        let tail: StreamConsumer = config.create().map_err(WriterError::Kafka)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(events_topic, partition, Offset::Offset(from))
            .map_err(WriterError::Kafka)?;
        tail.assign(&assignment).map_err(WriterError::Kafka)?;
        Ok(tail)
    }

    /// Does what `recovery` asks, and clears it once done, unless the recovery itself asked for
    /// more (a file that failed while it read asks for a restart). A catch-up that fails after
    /// the tail handed it a record it could not judge (the aggregate's file failed) has lost
    /// that record, so a restart follows it, never another catch-up from the same tail.
    async fn recover(&mut self) -> Result<(), WriterError> {
        let pending = self.recovery;
        let done = match pending {
            Recovery::None => Ok(()),
            Recovery::CatchUp { past } => self.catch_up_past(past).await,
            Recovery::Rebuild => self.rebuild().await,
            Recovery::Restart => {
                let restarted = Self::start(self.ctx.clone(), self.partition).await?;
                // The new writer's own request (its first spill failed) stands.
                *self = restarted;
                return Ok(());
            }
        };
        if let Err(error) = &done {
            // A rebuild reads with a new tail and file each time: only a catch-up loses one.
            if matches!(pending, Recovery::CatchUp { .. }) && error.lost_a_record() {
                self.recovery = self.recovery.and(Recovery::Restart);
            }
        }
        done?;
        if self.recovery == pending {
            self.recovery = Recovery::None;
        }
        Ok(())
    }

    /// Reads what others appended, up to the last stable offset and at least up to `past`.
    async fn catch_up_past(&mut self, past: i64) -> Result<(), WriterError> {
        let stable = self.last_stable_offset().await?;
        self.read_until(stable.max(past), Duration::from_secs(10), false)
            .await
    }

    /// Rebuilds the model from the snapshot and the events after it, with the same producer.
    async fn rebuild(&mut self) -> Result<(), WriterError> {
        let restored = snapshot::restore::<A>(&self.ctx, self.partition).await?;
        let from = restored.events_end;
        self.tail = Arc::new(Self::tail(
            &self.ctx,
            &self.events_topic,
            self.partition,
            from,
        )?);
        self.model = restored.model;
        self.spilled = restored.spilled;
        self.absent_uses.clear();
        self.next_offset = from;
        self.known_end = from;
        self.handed_end = from;
        self.catch_up(REBUILD_STALL).await
    }

    /// Reads every committed record up to the partition's last stable offset. Earlier writers
    /// are fenced, so nothing this writer has not read can commit below it afterwards. No
    /// transaction is open, so snapshots are written as it goes (`REPLAY_SPILL_SLACK`).
    async fn catch_up(&mut self, stall: Duration) -> Result<(), WriterError> {
        let stable = self.last_stable_offset().await?;
        self.read_until(stable, stall, true).await
    }

    /// The high watermark as a `read_committed` client sees it: the last stable offset.
    async fn last_stable_offset(&self) -> Result<i64, WriterError> {
        let (tail, topic, partition) =
            (self.tail.clone(), self.events_topic.clone(), self.partition);
        tokio::task::spawn_blocking(move || {
            tail.fetch_watermarks(&topic, partition, Duration::from_secs(5))
        })
        .await
        .map_err(|_| WriterError::Timeout)?
        .map(|(_, high)| high)
        .map_err(WriterError::Kafka)
    }

    /// Reads the partition until every offset below `target` is accounted for, applying the
    /// log-order rule to each record. Transaction markers and aborted records take offsets but
    /// are never delivered, so the end is told by the consumer's position (librdkafka moves it
    /// past markers), not by the offset of the last record. Fails once `stall` passes without
    /// getting further. With `snapshots` (no transaction open), a snapshot is written whenever
    /// the model holds [`REPLAY_SPILL_SLACK`] aggregates more than the replay keeps.
    async fn read_until(
        &mut self,
        target: i64,
        stall: Duration,
        snapshots: bool,
    ) -> Result<(), WriterError> {
        if snapshots {
            self.replay = Some(ReplayMemory::new(
                self.ctx.memory.resident_aggregates,
                REPLAY_SPILL_SLACK,
                self.next_offset,
            ));
        }
        let read = self.read_records_until(target, stall, snapshots).await;
        self.count_to_read(0);
        let owes_restore_point = self.replay.is_some_and(ReplayMemory::owes_restore_point);
        self.replay = None;
        read?;
        if owes_restore_point {
            // The replay's own snapshots deleted the checkpoint: the next takeover would
            // replay from the start without this one (a restore point, no replay under way).
            self.snapshot_alone().await;
        }
        Ok(())
    }

    /// [`Self::read_until`]'s reading, with the replay's memory (if any) already set.
    async fn read_records_until(
        &mut self,
        target: i64,
        stall: Duration,
        snapshots: bool,
    ) -> Result<(), WriterError> {
        let mut deadline = tokio::time::Instant::now() + stall;
        let mut reached = self.known_end;
        // The tail's position is asked for (a round trip to librdkafka's main thread) at the
        // start, when no record came, near the target (only markers may be left) and every
        // `POSITION_EVERY` records; otherwise the offset after the last record judged says it.
        let mut since_position = POSITION_EVERY;
        loop {
            if since_position >= POSITION_EVERY || target - self.next_offset <= NEAR_THE_END {
                since_position = 0;
                self.known_end = self.known_end.max(self.position());
                self.count_to_read(target - self.known_end);
            }
            self.known_end = self.known_end.max(self.next_offset);
            if self.known_end >= target {
                return Ok(());
            }
            if self.known_end > reached {
                reached = self.known_end;
                deadline = tokio::time::Instant::now() + stall;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriterError::Timeout);
            }
            let slice = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            let tail = self.tail.clone();
            match tokio::time::timeout_at(slice, tail.recv()).await {
                Ok(received) => {
                    self.absorb_handed_over(received.map_err(WriterError::Kafka)?)
                        .await?;
                    since_position += 1;
                }
                Err(_) => since_position = POSITION_EVERY,
            }
            if snapshots && self.replay_snapshot_due() {
                self.snapshot_alone().await;
                if self.recovery == Recovery::Restart {
                    return Err(WriterError::Spilling);
                }
            }
        }
    }

    /// Whether a replay holds so many aggregates over what it keeps that it writes a snapshot
    /// now (unless the last one failed less than `SNAPSHOT_INTERVAL` ago).
    fn replay_snapshot_due(&self) -> bool {
        self.model.resident() > self.keeps().saturating_add(REPLAY_SPILL_SLACK)
            && self
                .snapshot_failed_at
                .is_none_or(|at| at.elapsed() >= snapshot::SNAPSHOT_INTERVAL)
    }

    /// Publishes how many offsets a rebuild or a catch-up still has to read before the writer
    /// serves again (`writer_replay_remaining{aggregate,partition}`, 0 when none is under way):
    /// a long takeover's progress, set each time the tail's position is asked.
    pub(super) fn count_to_read(&self, remaining: i64) {
        metrics::gauge!("writer_replay_remaining", "aggregate" => A::KIND.as_str(), "partition" => self.partition.to_string())
            .set(remaining.max(0) as f64);
    }

    /// The tail consumer's position in the partition (0 before it has fetched anything).
    fn position(&self) -> i64 {
        platform::log_end::position(&*self.tail, &self.events_topic, self.partition).unwrap_or(0)
    }

    /// How many aggregates the model keeps in memory once a snapshot has made them clean: what
    /// the replay under way has learned it needs, or the configured number.
    fn keeps(&self) -> usize {
        self.replay
            .map_or(self.ctx.memory.resident_aggregates, ReplayMemory::keep)
    }

    /// Absorbs a record the tail handed over, then lets the other tasks of the runtime thread
    /// run (decision 0014: a tail with records queued is ready at once, and would hold the
    /// thread for a whole backlog).
    async fn absorb_handed_over(
        &mut self,
        message: BorrowedMessage<'_>,
    ) -> Result<(), WriterError> {
        self.absorb(&message)?;
        drop(message);
        platform::runtime::take_turn().await;
        Ok(())
    }

    /// Absorbs one record read from the tail. Records below `next_offset` were already judged
    /// (a batch whose appends were contiguous judges them as it appends, see `batch`) and are
    /// skipped.
    fn absorb(&mut self, message: &BorrowedMessage<'_>) -> Result<(), WriterError> {
        self.handed_end = self.handed_end.max(message.offset() + 1);
        if message.offset() < self.next_offset {
            return Ok(());
        }
        let timestamp = message.timestamp().to_millis();
        let envelope = match EventEnvelope::from_headers(message.headers()) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.next_offset = message.offset() + 1;
                self.model.pass(timestamp);
                warn!(topic = %self.events_topic, partition = self.partition, offset = message.offset(), %error, "event without a valid envelope ignored");
                return Ok(());
            }
        };
        self.absorb_record(message.offset(), &envelope, message.payload(), timestamp)
            .map(drop)
    }

    /// Judges the record at `offset` (the next one in the partition, stamped `timestamp`) by the
    /// log-order rule and, when accepted, applies it to the aggregate's state (given back from
    /// the writer's file first when the model does not hold it). Returns the event id and
    /// whether it counts; fails, judging nothing, when the file cannot give the aggregate back.
    fn absorb_record(
        &mut self,
        offset: i64,
        envelope: &EventEnvelope,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
    ) -> Result<(Uuid, bool), WriterError> {
        self.take_back(&envelope.aggregate_id)?;
        self.take_back_command(&envelope.command_id)?;
        self.next_offset = offset + 1;
        let accepted = match self.model.judge(offset, envelope, payload, timestamp) {
            Judged::Accepted => true,
            Judged::Rejected(reason) => {
                metrics::counter!("log_order_rejections_total", "reader" => "command-writer", "aggregate" => A::KIND.as_str())
                    .increment(1);
                warn!(aggregate_id = %envelope.aggregate_id, version = %envelope.version, offset, ?reason, "inert event (lost in log order)");
                false
            }
            Judged::Unreadable(error) => {
                error!(aggregate_id = %envelope.aggregate_id, offset, %error, "accepted event cannot be decoded; aggregate refused until fixed");
                true
            }
        };
        Ok((envelope.event_id, accepted))
    }

    /// Waits (up to `MARKER_WAIT`) until the tail has passed the commit marker of this writer's
    /// last batch with events, absorbing whatever it hands over on the way (records this writer
    /// did not append: none unless the deployment is misconfigured).
    ///
    /// Only a matter of speed: a commit returns once the coordinator has decided it; the
    /// coordinator then writes the markers and completes the transaction, and until it has, it
    /// refuses the same transactional id's next `AddPartitionsToTxn` and `AddOffsetsToTxn`
    /// (`CONCURRENT_TRANSACTIONS`, librdkafka's transaction protocol `TV_0`), which librdkafka
    /// retries after 20 ms and after 100 ms or more. A batch begun at once after the commit paid
    /// those retries most of the time. The tail sees the marker a few milliseconds after the
    /// commit (its fetch wakes when the last stable offset moves), by when the coordinator has
    /// mostly completed the transaction too. When the tail does not get there in time (or
    /// reports an error), the batch goes ahead: the coordinator's refusals keep it from adding
    /// the partition before the marker is written, so its events still land after it
    /// (`writer_marker_waits_missed_total` counts those batches).
    async fn await_last_marker(&mut self) -> Result<(), WriterError> {
        if self.marker_passed >= self.marker_end {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + MARKER_WAIT;
        loop {
            let tail = self.tail.clone();
            // Passing a marker hands nothing over. The task is woken when the fetch queues the
            // marker; the poll of `recv` that follows serves it (librdkafka stores its position)
            // and stays pending. So the position is looked at right after every poll (once the
            // record before the marker has come): the moment the marker has been served, not on
            // a timer (and not only at the deadline).
            let mut received = std::pin::pin!(tail.recv());
            let woken = std::future::poll_fn(|cx| {
                if self.marker_served() {
                    return std::task::Poll::Ready(None);
                }
                match received.as_mut().poll(cx) {
                    std::task::Poll::Pending if self.marker_served() => {
                        std::task::Poll::Ready(None)
                    }
                    polled => polled.map(Some),
                }
            });
            match tokio::time::timeout_at(deadline, woken).await {
                Ok(None) => {
                    self.marker_passed = self.marker_end;
                    return Ok(());
                }
                Ok(Some(Ok(message))) => self.absorb_handed_over(message).await?,
                // A broker's trouble reported to every client: the tail goes on by itself.
                Ok(Some(Err(error))) => {
                    debug!(kind = %A::KIND, partition = self.partition, %error, "the tail reported an error while the batch waited for its marker");
                }
                Err(_) => {
                    metrics::counter!("writer_marker_waits_missed_total", "aggregate" => A::KIND.as_str())
                        .increment(1);
                    return Ok(());
                }
            }
        }
    }

    /// Whether the tail has served the commit marker of this writer's last batch with events.
    /// Its position is asked for only once the record before the marker has been handed over:
    /// until then the position is below it.
    fn marker_served(&self) -> bool {
        self.handed_end + 1 >= self.marker_end && self.position() >= self.marker_end
    }

    /// Whatever the tail already has (records this writer did not append: none unless the
    /// deployment is misconfigured), without waiting. The tail's position (a blocking round
    /// trip to librdkafka's thread) is asked for only when such records came, since a marker
    /// may follow them: this writer's own commit marker is in `known_end` since its commit, and
    /// the catch-up after an abort reads past its aborted records when it knows where they
    /// ended. Otherwise (an abort marker the broker had not yet written when the catch-up
    /// looked, a foreign transaction's marker) the batch's events land past where it expects
    /// them, and it is aborted and tried again after a catch-up that reads past them (`batch`):
    /// one extra attempt, never a wrong answer.
    async fn absorb_pending(&mut self) -> Result<(), WriterError> {
        loop {
            let tail = self.tail.clone();
            // Polled once, not under a zero timeout: tokio fires even a zero timer only on the
            // timer's next millisecond tick, which every batch would wait for.
            match tail.recv().now_or_never() {
                Some(Ok(message)) => self.absorb_handed_over(message).await?,
                _ => break,
            }
        }
        let others_appended = self.handed_end > self.known_end;
        self.known_end = self.known_end.max(self.next_offset);
        if others_appended {
            self.known_end = self.known_end.max(self.position());
        }
        Ok(())
    }
}

/// Whole milliseconds since `start`, for logs.
fn millis_since(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, thiserror::Error)]
pub(super) enum WriterError {
    #[error("kafka")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error("reading the partition got no further for too long")]
    Timeout,
    #[error("aggregates kept on disk")]
    Spill(#[from] SpillError),
    #[error("an aggregate kept on disk cannot be read back")]
    Spilled(#[from] schemas::DecodeError),
    #[error("an aggregate kept on disk cannot be read back")]
    TakenBack(#[from] super::partition::RestoreError),
    #[error("an aggregate cannot be kept on disk")]
    Encode(#[source] schemas::EncodeError),
    #[error("aggregates could not be kept on disk during the replay")]
    Spilling,
}

impl WriterError {
    /// Whether the failure came after the tail handed over a record the writer could not judge
    /// (its aggregate could not be given back from the file): the tail has moved past it, so
    /// only a new tail (a restart) reads it again.
    fn lost_a_record(&self) -> bool {
        matches!(
            self,
            WriterError::Spill(_)
                | WriterError::Spilled(_)
                | WriterError::TakenBack(_)
                | WriterError::Encode(_)
                | WriterError::Spilling
        )
    }
}
