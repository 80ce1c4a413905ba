//! How many aggregates a replay keeps in memory between its snapshots (decision 0012). A
//! writer serving commands keeps its newest `WRITER_RESIDENT_AGGREGATES`, because those are the
//! ones commands touch next. A replay from offset 0 needs far fewer: an order's events lie close
//! together in the log, so the aggregates a replay is still working on are a few hundred, and a
//! process replaying a dozen partitions at once held a dozen times the configured number for
//! nothing. So a replay starts by keeping [`REPLAY_KEEP_START`] and learns its working set:
//! whenever a quarter of the slack it grows by between snapshots has come back from the file
//! (the working set is larger than what it keeps, and every snapshot would write it again), it
//! keeps twice as many, up to the configured number. It learns as aggregates come back, not at
//! the next snapshot: a keep raised at once also puts that snapshot off, so a thrashing replay
//! does not write its working set again and again (every such record is one more for the next
//! takeover to read until the topic is compacted).
//!
//! A replay from offset 0 (no usable snapshot: there is no restore point to lose) writes only
//! the aggregates that changed in those snapshots, after deleting the checkpoint, and one
//! restore point (command uses and a checkpoint) when it ends. Writing the window's command
//! uses at every snapshot wrote each command twice (its use, then its deletion once the
//! window forgot it): snapshot partitions larger than the events they covered, which every
//! takeover read whole until compaction. The cost: a replay cut short starts from offset 0
//! again, not from its last snapshot. A replay from a restore point writes restore points, so
//! it never deletes the one it started from. Pure: the writer counts and asks.

/// What a replay keeps in memory at first, before it has seen its working set.
pub(super) const REPLAY_KEEP_START: usize = 500;

/// A replay keeps twice as many once this share (1/N) of its slack came back from the file.
const THRASH_SHARE: usize = 4;

/// What one replay keeps, and what it has taken back from the file since it last decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplayMemory {
    keep: usize,
    most: usize,
    slack: usize,
    taken_back: usize,
    /// Whether this replay has let aggregates go (a snapshot of its own committed): before
    /// that, an aggregate from the file is one a restored snapshot held, met for the first
    /// time, not one the replay let go too early.
    let_go: bool,
    /// Whether the replay started from offset 0: its snapshots are no restore points.
    from_the_start: bool,
    /// Whether a snapshot of this replay deleted the checkpoint.
    owes_restore_point: bool,
}

impl ReplayMemory {
    /// A replay from events offset `from` (a restore point, or 0) of a writer configured to keep
    /// `most` aggregates, which snapshots whenever it holds `slack` more than it keeps.
    pub(super) fn new(most: usize, slack: usize, from: i64) -> Self {
        Self {
            keep: REPLAY_KEEP_START.min(most),
            most,
            slack,
            taken_back: 0,
            let_go: false,
            from_the_start: from == 0,
            owes_restore_point: false,
        }
    }

    /// Whether the replay's next snapshot is a restore point, and notes that one that is not
    /// deletes the checkpoint (even if it then fails): one is owed at the end.
    pub(super) fn next_snapshot_restores(&mut self) -> bool {
        self.owes_restore_point |= self.from_the_start;
        !self.from_the_start
    }

    /// Whether the replay deleted the checkpoint: the writer writes a restore point when the
    /// replay ends, or the next takeover replays from the start.
    pub(super) fn owes_restore_point(self) -> bool {
        self.owes_restore_point
    }

    /// How many aggregates the replay keeps in memory after a snapshot.
    pub(super) fn keep(self) -> usize {
        self.keep
    }

    /// An aggregate came back from the file: once a quarter of the slack has, the working set
    /// is larger than what the replay keeps, and it keeps twice as many from now on.
    pub(super) fn taken_back(&mut self) {
        if !self.let_go {
            return;
        }
        self.taken_back += 1;
        if self.taken_back.saturating_mul(THRASH_SHARE) > self.slack {
            self.keep = self.keep.max(1).saturating_mul(2).min(self.most);
            self.taken_back = 0;
        }
    }

    /// A snapshot of this replay committed (and let aggregates go): what comes back from now on
    /// is counted afresh.
    pub(super) fn after_snapshot(&mut self) {
        self.let_go = true;
        self.taken_back = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK: usize = 1_000;

    fn taken_back(replay: &mut ReplayMemory, n: usize) {
        for _ in 0..n {
            replay.taken_back();
        }
    }

    #[test]
    fn a_replay_starts_keeping_few_and_never_more_than_configured() {
        assert_eq!(ReplayMemory::new(5_000, SLACK, 0).keep(), REPLAY_KEEP_START);
        assert_eq!(ReplayMemory::new(100, SLACK, 0).keep(), 100);
        assert_eq!(ReplayMemory::new(0, SLACK, 0).keep(), 0);
    }

    #[test]
    fn aggregates_met_before_the_replay_let_any_go_are_not_thrash() {
        let mut replay = ReplayMemory::new(5_000, SLACK, 0);
        taken_back(&mut replay, 10 * SLACK);
        assert_eq!(replay.keep(), REPLAY_KEEP_START);
    }

    #[test]
    fn a_replay_whose_aggregates_do_not_come_back_keeps_what_it_kept() {
        let mut replay = ReplayMemory::new(5_000, SLACK, 0);
        replay.after_snapshot();
        taken_back(&mut replay, SLACK / THRASH_SHARE);
        replay.after_snapshot();
        taken_back(&mut replay, SLACK / THRASH_SHARE);
        assert_eq!(replay.keep(), REPLAY_KEEP_START);
    }

    #[test]
    fn a_replay_that_thrashes_keeps_twice_as_many_at_once_up_to_the_configured_number() {
        let mut replay = ReplayMemory::new(3_000, SLACK, 0);
        replay.after_snapshot();
        let mut kept = vec![replay.keep()];
        for _ in 0..4 {
            taken_back(&mut replay, SLACK / THRASH_SHARE + 1);
            kept.push(replay.keep());
        }
        assert_eq!(kept, [500, 1_000, 2_000, 3_000, 3_000]);
    }

    #[test]
    fn only_a_replay_from_the_start_writes_snapshots_that_are_no_restore_points() {
        let mut from_a_restore_point = ReplayMemory::new(5_000, SLACK, 1_000);
        assert!(from_a_restore_point.next_snapshot_restores());
        assert!(!from_a_restore_point.owes_restore_point());
        let mut from_the_start = ReplayMemory::new(5_000, SLACK, 0);
        assert!(!from_the_start.owes_restore_point(), "no snapshot yet");
        assert!(!from_the_start.next_snapshot_restores());
        assert!(from_the_start.owes_restore_point());
    }
}
