//! The log-order rule. Kafka cannot append conditionally, so during a partition handover two
//! writers may both append to an aggregate. Every reader (command writers, projectors, the saga,
//! rebuilds) applies this same rule to the same log, so all agree on which events count:
//!
//! an event is **accepted** only if it extends its aggregate's accepted chain: its version is the
//! next one, its predecessor is the chain's last accepted event, and its command id was not
//! already used by an earlier command in the partition **within the command window**. Anything
//! else is a **loser**: skipped, counted, inert. A zombie's later events follow a loser, so they
//! are losers too.
//!
//! The window keeps what every reader must remember bounded (decision 0008): a command's use is
//! forgotten once the partition's clock has passed its time by more than the window. The clock is
//! the log's own, so every reader computes the same one: the greatest Kafka record timestamp of
//! the partition's committed records up to and including the one judged (valid or not, judged or
//! not). A use is stamped with the clock at its first event. The clock only grows, so a use can
//! be dropped for good once expired; and a writer, which stamps its events with the time it
//! decides at, decides by `max(clock, now)`: a use it finds expired is expired where its events
//! land. Counting the record's own timestamp lets a retry after the window be a new command even
//! on a partition nothing else was appended to; the price is that a writer whose clock runs a
//! whole window ahead could run a command twice, as with any time-windowed idempotency.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use domain::Version;
use uuid::Uuid;

use crate::envelope::EventEnvelope;

/// How long the log remembers that a command id was used: a command retried within it is
/// answered from the log, and after it is a new command. One value for every reader of a
/// deployment (`IDEMPOTENCY_WINDOW_SECONDS`): readers with different windows would judge the
/// same log differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandWindow(Duration);

impl CommandWindow {
    /// A day, as the major payment APIs keep idempotency keys.
    pub const DEFAULT: Self = Self(Duration::from_secs(24 * 60 * 60));
    pub const SETTING: &'static str = "IDEMPOTENCY_WINDOW_SECONDS";

    pub fn new(window: Duration) -> Self {
        Self(window)
    }

    /// `IDEMPOTENCY_WINDOW_SECONDS`, a day by default.
    pub fn from_env() -> Result<Self, crate::config::InvalidSetting> {
        let default = Self::DEFAULT.0.as_secs();
        crate::config::positive_number(Self::SETTING, default)
            .map(|seconds| Self(Duration::from_secs(seconds)))
    }

    pub fn duration(self) -> Duration {
        self.0
    }

    /// The window in milliseconds.
    pub fn millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether a use stamped `used_at` still counts for a record judged at `clock` (both
    /// milliseconds of the partition's clock).
    pub fn remembers(self, used_at: i64, clock: i64) -> bool {
        clock.saturating_sub(used_at) <= self.millis()
    }

    /// The oldest use stamp that still counts at `clock`.
    pub fn oldest_remembered(self, clock: i64) -> i64 {
        clock.saturating_sub(self.millis())
    }
}

impl Default for CommandWindow {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A partition's clock: the greatest record timestamp read so far (milliseconds since the epoch;
/// 0 before the first record). A record without a timestamp leaves it as it is.
pub fn advance(clock: i64, record_timestamp: Option<i64>) -> i64 {
    record_timestamp.map_or(clock, |ts| clock.max(ts))
}

/// The last accepted event of one aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub version: Version,
    pub event_id: Uuid,
    pub command_id: String,
    pub offset: i64,
}

/// What a command did, as far as the log shows: used to answer a retried command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCommand {
    pub aggregate_id: String,
    pub version: Version,
    pub event_types: Vec<String>,
    pub offsets: Vec<i64>,
    pub request_hash: Option<String>,
    /// The partition's clock after the command's first event (milliseconds).
    pub used_at: i64,
}

/// Why an event does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoserReason {
    /// Not the next version (a second event at a taken version, or a gap).
    Version { expected: Version, found: Version },
    /// The right version, but it follows an event that is not the chain's head.
    Predecessor,
    /// Its command id was already used by an earlier command within the window.
    RepeatedCommand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Loser(LoserReason),
}

/// What the log shows of a command's earlier accepted events: the aggregate they extended, the
/// version of the last one, and when it was first used. A reader that keeps no [`LogOrder`] (a
/// projector, which keeps chain heads in its rows) stores these to apply the repeated-command
/// part of the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandUse {
    pub aggregate_id: String,
    pub last_version: Version,
    /// The partition's clock after the command's first event (milliseconds).
    pub used_at: i64,
}

/// The log-order rule for one event, the one implementation every reader applies: it extends
/// its aggregate's accepted chain iff its version is the next one after `head` (version and
/// event id of the chain's last accepted event), it names `head` as its predecessor, and its
/// command id was not used before (`earlier`, a use the window still remembers: see
/// [`CommandWindow::remembers`]), unless the head itself is that command's own event (a command
/// that wrote several events to one aggregate).
pub fn extends_chain(
    head: Option<(Version, Uuid)>,
    envelope: &EventEnvelope,
    earlier: Option<(&str, Version)>,
) -> Verdict {
    let expected = head.map_or(Version::NONE, |(version, _)| version).next();
    if envelope.version != expected {
        return Verdict::Loser(LoserReason::Version {
            expected,
            found: envelope.version,
        });
    }
    if envelope.predecessor != head.map(|(_, event_id)| event_id) {
        return Verdict::Loser(LoserReason::Predecessor);
    }
    let continues_its_own_command = |(aggregate_id, last_version): (&str, Version)| {
        aggregate_id == envelope.aggregate_id && head.map(|(v, _)| v) == Some(last_version)
    };
    match earlier {
        Some(used) if !continues_its_own_command(used) => {
            Verdict::Loser(LoserReason::RepeatedCommand)
        }
        _ => Verdict::Accepted,
    }
}

/// The accepted chains of every aggregate in one partition, and the commands behind them that
/// the window still remembers (older ones are dropped: memory holds a window of commands).
#[derive(Debug, Default)]
pub struct LogOrder {
    window: CommandWindow,
    clock: i64,
    heads: HashMap<String, ChainHead>,
    commands: HashMap<String, RecordedCommand>,
    /// Commands in the order of their `used_at` (which only grows): the front expires first.
    by_age: VecDeque<(i64, String)>,
    /// Uses dropped since the last [`LogOrder::take_forgotten`] (a writer's snapshot deletes
    /// them too).
    forgotten: Vec<String>,
    losers: u64,
}

impl LogOrder {
    pub fn new(window: CommandWindow) -> Self {
        Self {
            window,
            ..Self::default()
        }
    }

    /// The log order a snapshot recorded: the partition's `clock`, every chain head, and the
    /// command uses. Those the window no longer remembers are dropped at once, and reported by
    /// [`LogOrder::take_forgotten`] like any other, so the snapshot deletes them too.
    pub fn restored(
        window: CommandWindow,
        clock: i64,
        heads: impl IntoIterator<Item = (String, ChainHead)>,
        commands: impl IntoIterator<Item = (String, RecordedCommand)>,
    ) -> Self {
        let oldest = window.oldest_remembered(clock);
        let (commands, forgotten): (HashMap<String, RecordedCommand>, HashMap<_, _>) =
            commands.into_iter().partition(|(_, r)| r.used_at >= oldest);
        let mut by_age: Vec<(i64, String)> = commands
            .iter()
            .map(|(id, r)| (r.used_at, id.clone()))
            .collect();
        by_age.sort_unstable();
        Self {
            window,
            clock,
            heads: heads.into_iter().collect(),
            commands,
            by_age: by_age.into(),
            forgotten: forgotten.into_keys().collect(),
            losers: 0,
        }
    }

    /// The uses dropped since the last call.
    pub fn take_forgotten(&mut self) -> Vec<String> {
        std::mem::take(&mut self.forgotten)
    }

    /// A command's recorded use as held in memory, remembered by the window or not yet dropped.
    pub fn recorded(&self, command_id: &str) -> Option<&RecordedCommand> {
        self.commands.get(command_id)
    }

    /// Judges the next event read from the partition (its record's timestamp `timestamp`), and
    /// records it if accepted.
    pub fn judge(
        &mut self,
        envelope: &EventEnvelope,
        offset: i64,
        timestamp: Option<i64>,
    ) -> Verdict {
        self.pass(timestamp);
        let head = self
            .heads
            .get(&envelope.aggregate_id)
            .map(|h| (h.version, h.event_id));
        let earlier = self
            .command(&envelope.command_id)
            .map(|r| (r.aggregate_id.as_str(), r.version));
        let verdict = extends_chain(head, envelope, earlier);
        match verdict {
            Verdict::Accepted => self.accept(envelope, offset),
            Verdict::Loser(_) => self.losers += 1,
        }
        verdict
    }

    /// Moves the clock past a record that is not judged (no valid envelope).
    pub fn pass(&mut self, timestamp: Option<i64>) {
        self.clock = advance(self.clock, timestamp);
    }

    fn accept(&mut self, envelope: &EventEnvelope, offset: i64) {
        self.heads.insert(
            envelope.aggregate_id.clone(),
            ChainHead {
                version: envelope.version,
                event_id: envelope.event_id,
                command_id: envelope.command_id.clone(),
                offset,
            },
        );
        let remembered = self.command(&envelope.command_id).is_some();
        if !remembered {
            self.commands.insert(
                envelope.command_id.clone(),
                RecordedCommand {
                    aggregate_id: envelope.aggregate_id.clone(),
                    version: envelope.version,
                    event_types: vec![],
                    offsets: vec![],
                    request_hash: envelope.request_hash.clone(),
                    used_at: self.clock,
                },
            );
            self.by_age
                .push_back((self.clock, envelope.command_id.clone()));
        }
        if let Some(record) = self.commands.get_mut(&envelope.command_id) {
            record.version = envelope.version;
            record.event_types.push(envelope.event_type.clone());
            record.offsets.push(offset);
        }
        self.forget_expired();
    }

    /// Drops the uses the window no longer remembers: they can never count again, since the
    /// clock only grows.
    fn forget_expired(&mut self) {
        let oldest = self.window.oldest_remembered(self.clock);
        while let Some((used_at, _)) = self.by_age.front() {
            if *used_at >= oldest {
                break;
            }
            let Some((used_at, command_id)) = self.by_age.pop_front() else {
                break;
            };
            // A command used again after it expired has a newer entry further back.
            if self
                .commands
                .get(&command_id)
                .is_some_and(|r| r.used_at == used_at)
            {
                self.commands.remove(&command_id);
                self.forgotten.push(command_id);
            }
        }
    }

    /// Takes an aggregate's chain head out of memory, for a reader that keeps finished
    /// aggregates elsewhere (the orchestrator's settled sagas, decision 0011). It must
    /// [`LogOrder::reinstate`] the head before the aggregate's next event is judged: judged
    /// without it, every later event of the aggregate would lose (it is no version 1).
    pub fn evict(&mut self, aggregate_id: &str) -> Option<ChainHead> {
        self.heads.remove(aggregate_id)
    }

    /// Puts back a head taken out by [`LogOrder::evict`].
    pub fn reinstate(&mut self, aggregate_id: String, head: ChainHead) {
        self.heads.insert(aggregate_id, head);
    }

    /// Whether a command's use is in memory: when it is not, a reader that keeps uses elsewhere
    /// (a writer's file, decision 0015) gives it back with [`LogOrder::reinstate_command`]
    /// before an event of that command is judged or the command decided.
    pub fn holds_command(&self, command_id: &str) -> bool {
        self.commands.contains_key(command_id)
    }

    /// Puts back a command use taken out by [`LogOrder::evict_commands`] (one already in
    /// memory wins: it is as new or newer). It is not ordered by age again: the window forgets
    /// it where it is kept, and it leaves memory at the next eviction.
    pub fn reinstate_command(&mut self, command_id: String, recorded: RecordedCommand) {
        self.commands.entry(command_id).or_insert(recorded);
    }

    /// Takes out of memory the command uses `leaves` names and returns those the window still
    /// remembers, for a reader that keeps them elsewhere (decision 0015). Uses the window has
    /// forgotten are dropped: the ordinary way (reported by [`LogOrder::take_forgotten`]) for
    /// those recorded here, silently for those given back, which the window forgets where they
    /// are kept.
    pub fn evict_commands(
        &mut self,
        mut leaves: impl FnMut(&str) -> bool,
    ) -> Vec<(String, RecordedCommand)> {
        self.forget_expired();
        let oldest = self.window.oldest_remembered(self.clock);
        let leaving: Vec<String> = self
            .commands
            .keys()
            .filter(|id| leaves(id))
            .cloned()
            .collect();
        let mut kept_elsewhere = Vec::with_capacity(leaving.len());
        for command_id in leaving {
            if let Some(recorded) = self.commands.remove(&command_id) {
                if recorded.used_at >= oldest {
                    kept_elsewhere.push((command_id, recorded));
                }
            }
        }
        let commands = &self.commands;
        self.by_age
            .retain(|(used_at, id)| commands.get(id).is_some_and(|r| r.used_at == *used_at));
        if self.commands.capacity() > 4 * self.commands.len().max(64) {
            self.commands.shrink_to_fit();
            self.by_age.shrink_to_fit();
        }
        kept_elsewhere
    }

    /// Gives back the memory of heads evicted since the maps were largest (after a restore
    /// that evicted most of what it loaded).
    pub fn shrink_to_fit(&mut self) {
        self.heads.shrink_to_fit();
        self.commands.shrink_to_fit();
        self.by_age.shrink_to_fit();
    }

    pub fn head(&self, aggregate_id: &str) -> Option<&ChainHead> {
        self.heads.get(aggregate_id)
    }

    /// How many aggregates have an accepted chain.
    pub fn aggregates(&self) -> usize {
        self.heads.len()
    }

    /// The window this log order judges with.
    pub fn window(&self) -> CommandWindow {
        self.window
    }

    /// The accepted outcome of a command id, if it has events in this partition that the
    /// window still remembers.
    pub fn command(&self, command_id: &str) -> Option<&RecordedCommand> {
        self.command_at(command_id, self.clock)
    }

    /// [`Self::command`] for an event stamped `now` (milliseconds) appended next: what a writer
    /// deciding at `now` must go by, since its event is judged by a clock at least `now`.
    pub fn command_at(&self, command_id: &str, now: i64) -> Option<&RecordedCommand> {
        let clock = self.clock.max(now);
        self.commands
            .get(command_id)
            .filter(|r| self.window.remembers(r.used_at, clock))
    }

    /// Whether the event at `offset` (stamped `timestamp`), read again by a reader restored to
    /// a point past it, was accepted when it was judged: it was iff its command's use records
    /// that offset. `None` when the window may have forgotten the use: the stamp is missing or
    /// older than the window at this clock. (A use is stamped no earlier than its events, since
    /// a writer stamps every event of a command with the command's one decision time, so an
    /// accepted event stamped within the window has its use remembered.)
    pub fn accepted_before(
        &self,
        envelope: &EventEnvelope,
        offset: i64,
        timestamp: Option<i64>,
    ) -> Option<bool> {
        let stamp = timestamp?;
        if stamp < self.window.oldest_remembered(self.clock) {
            return None;
        }
        Some(self.commands.get(&envelope.command_id).is_some_and(|r| {
            r.aggregate_id == envelope.aggregate_id && r.offsets.contains(&offset)
        }))
    }

    /// The partition's clock: the greatest record timestamp read so far (milliseconds).
    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// How many command uses are held in memory (the window's, and no more; a reader that
    /// evicts them, fewer).
    pub fn remembered_commands(&self) -> usize {
        self.commands.len()
    }

    /// How many losers were skipped so far.
    pub fn losers(&self) -> u64 {
        self.losers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Trace;
    use chrono::Utc;
    use domain::AggregateKind;

    fn event(
        aggregate: &str,
        version: u64,
        predecessor: Option<Uuid>,
        command: &str,
    ) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: "StockAdded".into(),
            aggregate_kind: AggregateKind::InventoryItem,
            aggregate_id: aggregate.into(),
            version: Version::new(version),
            predecessor,
            command_id: command.into(),
            request_hash: None,
            occurred_at: Utc::now(),
            trace: Trace {
                correlation_id: "c".into(),
                causation_id: "c".into(),
                traceparent: None,
            },
        }
    }

    #[test]
    fn accepts_a_chain_that_extends_one_event_at_a_time() {
        let mut log = LogOrder::default();
        let first = event("a", 1, None, "c1");
        assert_eq!(log.judge(&first, 0, None), Verdict::Accepted);
        let second = event("a", 2, Some(first.event_id), "c2");
        assert_eq!(log.judge(&second, 1, None), Verdict::Accepted);
        assert_eq!(log.head("a").map(|h| h.version), Some(Version::new(2)));
        assert_eq!(log.command("c2").map(|c| c.offsets.clone()), Some(vec![1]));
    }

    #[test]
    fn a_second_event_at_a_taken_version_loses() {
        let mut log = LogOrder::default();
        let winner = event("a", 1, None, "c1");
        log.judge(&winner, 0, None);
        let zombie = event("a", 1, None, "c2");
        assert_eq!(
            log.judge(&zombie, 1, None),
            Verdict::Loser(LoserReason::Version {
                expected: Version::new(2),
                found: Version::new(1)
            })
        );
        assert_eq!(log.losers(), 1);
        assert!(
            log.command("c2").is_none(),
            "a loser's command did not happen"
        );
    }

    #[test]
    fn an_event_following_a_loser_loses_too() {
        let mut log = LogOrder::default();
        let winner = event("a", 1, None, "c1");
        log.judge(&winner, 0, None);
        let zombie = event("a", 1, None, "z1");
        log.judge(&zombie, 1, None);
        // The zombie pipelines its next event after its own (losing) one.
        let zombie_next = event("a", 2, Some(zombie.event_id), "z2");
        assert_eq!(
            log.judge(&zombie_next, 2, None),
            Verdict::Loser(LoserReason::Predecessor)
        );
        let honest_next = event("a", 2, Some(winner.event_id), "c3");
        assert_eq!(log.judge(&honest_next, 3, None), Verdict::Accepted);
    }

    #[test]
    fn a_repeated_command_id_loses() {
        let mut log = LogOrder::default();
        let first = event("a", 1, None, "c1");
        log.judge(&first, 0, None);
        let other = event("b", 1, None, "c2");
        log.judge(&other, 1, None);
        let again = event("a", 2, Some(first.event_id), "c2");
        assert_eq!(
            log.judge(&again, 2, None),
            Verdict::Loser(LoserReason::RepeatedCommand)
        );
    }

    #[test]
    fn several_events_of_one_command_are_one_chain_segment() {
        let mut log = LogOrder::default();
        let first = event("a", 1, None, "c1");
        log.judge(&first, 0, None);
        let second = event("a", 2, Some(first.event_id), "c1");
        assert_eq!(log.judge(&second, 1, None), Verdict::Accepted);
        assert_eq!(log.command("c1").map(|c| c.version), Some(Version::new(2)));
    }

    #[test]
    fn a_command_that_created_one_aggregate_cannot_create_another() {
        // A keyed retry that drew a new order id: the same command id creates a second order.
        let mut log = LogOrder::default();
        let first = event("order-a", 1, None, "x");
        assert_eq!(log.judge(&first, 0, None), Verdict::Accepted);
        let phantom = event("order-b", 1, None, "x");
        assert_eq!(
            log.judge(&phantom, 1, None),
            Verdict::Loser(LoserReason::RepeatedCommand)
        );
        assert_eq!(
            extends_chain(None, &phantom, Some(("order-a", Version::new(1)))),
            Verdict::Loser(LoserReason::RepeatedCommand),
            "the rule alone, as a reader without a LogOrder applies it"
        );
    }

    #[test]
    fn a_command_repeated_after_another_command_on_the_same_aggregate_loses() {
        let x1 = event("a", 1, None, "x");
        let y2 = event("a", 2, Some(x1.event_id), "y");
        let x3 = event("a", 3, Some(y2.event_id), "x");
        assert_eq!(
            extends_chain(
                Some((Version::new(2), y2.event_id)),
                &x3,
                Some(("a", Version::new(1)))
            ),
            Verdict::Loser(LoserReason::RepeatedCommand)
        );
        let x2 = event("a", 2, Some(x1.event_id), "x");
        assert_eq!(
            extends_chain(
                Some((Version::new(1), x1.event_id)),
                &x2,
                Some(("a", Version::new(1)))
            ),
            Verdict::Accepted,
            "a command's second event continues its own first"
        );
    }

    const HOUR: i64 = 3_600_000;

    fn hourly() -> LogOrder {
        LogOrder::new(CommandWindow::new(std::time::Duration::from_secs(3600)))
    }

    #[test]
    fn a_command_id_repeated_within_the_window_loses() {
        let mut log = hourly();
        let first = event("a", 1, None, "x");
        log.judge(&first, 0, Some(0));
        let again = event("b", 1, None, "x");
        assert_eq!(
            log.judge(&again, 1, Some(HOUR)),
            Verdict::Loser(LoserReason::RepeatedCommand),
            "exactly a window later is still within it"
        );
        assert!(log.command("x").is_some());
    }

    #[test]
    fn a_command_id_used_again_after_the_window_is_a_new_command() {
        let mut log = hourly();
        let first = event("a", 1, None, "x");
        log.judge(&first, 0, Some(1_000));
        let other = event("c", 1, None, "y");
        log.judge(&other, 1, Some(1_000 + HOUR + 1));
        assert!(
            log.command("x").is_none(),
            "the partition's clock has passed the use by more than the window"
        );
        let again = event("b", 1, None, "x");
        assert_eq!(
            log.judge(&again, 2, Some(1_000 + HOUR + 2)),
            Verdict::Accepted
        );
        assert_eq!(
            log.command("x")
                .map(|c| (c.aggregate_id.clone(), c.offsets.clone())),
            Some(("b".to_owned(), vec![2])),
            "the new use is recorded, not added to the old one"
        );
    }

    #[test]
    fn a_record_is_judged_by_the_clock_including_its_own_timestamp() {
        // A retry after the window on a partition nothing else was appended to is new.
        let mut log = hourly();
        log.judge(&event("a", 1, None, "x"), 0, Some(0));
        assert!(log.command_at("x", HOUR).is_some());
        assert!(
            log.command_at("x", HOUR + 1).is_none(),
            "a writer deciding a window later finds the use expired"
        );
        let retry = event("b", 1, None, "x");
        assert_eq!(log.judge(&retry, 1, Some(HOUR + 1)), Verdict::Accepted);
    }

    #[test]
    fn records_that_are_not_judged_move_the_clock_too() {
        let mut log = hourly();
        log.judge(&event("a", 1, None, "x"), 0, Some(0));
        log.pass(Some(2 * HOUR));
        assert!(log.command("x").is_none());
        assert_eq!(log.clock(), 2 * HOUR);
        log.pass(Some(HOUR));
        assert_eq!(log.clock(), 2 * HOUR, "the clock never goes back");
    }

    #[test]
    fn memory_holds_the_window_of_commands_and_no_more() {
        let mut log = hourly();
        let minute = 60_000;
        for n in 0..600_i64 {
            let id = format!("agg-{n}");
            log.judge(&event(&id, 1, None, &format!("c{n}")), n, Some(n * minute));
        }
        // Ten hours of one command a minute; the last hour's 61 uses are remembered.
        assert_eq!(log.remembered_commands(), 61);
        assert!(log.command("c538").is_none());
        assert!(log.command("c539").is_some());
    }

    #[test]
    fn a_reader_past_an_event_tells_whether_it_was_accepted_as_the_judge_did() {
        // Judged in order: accepted, a second event at a taken version, a repeated command id,
        // and an accepted command of two events.
        let mut log = hourly();
        let first = event("a", 1, None, "c1");
        let taken = event("a", 1, None, "c2");
        let repeated = event("b", 1, None, "c1");
        let two = event("b", 1, None, "c3");
        let two_more = event("b", 2, Some(two.event_id), "c3");
        let stream = [&first, &taken, &repeated, &two, &two_more];
        let verdicts: Vec<bool> = stream
            .iter()
            .enumerate()
            .map(|(offset, e)| log.judge(e, offset as i64, Some(HOUR)) == Verdict::Accepted)
            .collect();
        assert_eq!(verdicts, [true, false, false, true, true]);
        // The log as it stands after them tells the same of each one.
        let told: Vec<Option<bool>> = stream
            .iter()
            .enumerate()
            .map(|(offset, e)| log.accepted_before(e, offset as i64, Some(HOUR)))
            .collect();
        assert_eq!(told, verdicts.into_iter().map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn a_reader_past_an_event_older_than_the_window_cannot_tell() {
        let mut log = hourly();
        let old = event("a", 1, None, "c1");
        log.judge(&old, 0, Some(0));
        log.pass(Some(HOUR + 1));
        assert_eq!(log.accepted_before(&old, 0, Some(0)), None);
        assert_eq!(
            log.accepted_before(&old, 0, None),
            None,
            "without a stamp nothing says the use is still remembered"
        );
    }

    #[test]
    fn a_command_use_evicted_and_given_back_judges_as_one_always_held() {
        let mut log = hourly();
        log.judge(&event("a", 1, None, "x"), 0, Some(0));
        log.judge(&event("b", 1, None, "y"), 1, Some(1));
        let kept = log.evict_commands(|id| id == "x");
        assert_eq!(
            kept.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["x"]
        );
        assert!(!log.holds_command("x"));
        assert!(log.holds_command("y"), "only the named uses leave");
        for (id, recorded) in kept {
            log.reinstate_command(id, recorded);
        }
        assert_eq!(
            log.judge(&event("c", 1, None, "x"), 2, Some(2)),
            Verdict::Loser(LoserReason::RepeatedCommand),
            "a use given back counts as before"
        );
        log.pass(Some(HOUR + 2));
        let _ = log.evict_commands(|_| false);
        assert_eq!(
            log.take_forgotten(),
            ["y"],
            "a use recorded here is forgotten the ordinary way"
        );
    }

    #[test]
    fn evicting_drops_a_given_back_use_the_window_forgot_without_reporting_it() {
        let mut log = hourly();
        log.judge(&event("a", 1, None, "x"), 0, Some(0));
        let kept = log.evict_commands(|_| true);
        assert!(log.take_forgotten().is_empty());
        for (id, recorded) in kept {
            log.reinstate_command(id, recorded);
        }
        log.pass(Some(2 * HOUR));
        assert!(
            log.evict_commands(|_| true).is_empty(),
            "a forgotten use is not kept elsewhere again"
        );
        assert_eq!(log.remembered_commands(), 0);
        assert!(
            log.take_forgotten().is_empty(),
            "where it was kept, the window forgets it"
        );
    }
}
