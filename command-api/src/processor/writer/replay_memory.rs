//! How many aggregates a replay keeps in memory between its snapshots (decision 0012). A
//! writer serving commands keeps its newest `WRITER_RESIDENT_AGGREGATES`, because those are the
//! ones commands touch next. A replay from offset 0 needs far fewer: an order's events lie close
//! together in the log, so the aggregates a replay is still working on are a few hundred, and a
//! process replaying a dozen partitions at once held a dozen times the configured number for
//! nothing. So a replay starts by keeping [`REPLAY_KEEP_START`] and learns its working set:
//! when many of the aggregates it met since its last snapshot came back from the file (the
//! working set is larger than what it keeps, and every snapshot writes it again), it keeps twice
//! as many, up to the configured number. Pure: the writer counts and asks.

/// What a replay keeps in memory at first, before it has seen its working set.
pub(super) const REPLAY_KEEP_START: usize = 500;

/// A replay keeps more once more than this share of the aggregates it let go since its
/// last snapshot came back (in 1/N).
const THRASH_SHARE: usize = 4;

/// What one replay keeps, and what it has taken back from the file since its last snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplayMemory {
    keep: usize,
    most: usize,
    taken_back: usize,
}

impl ReplayMemory {
    /// A replay of a writer configured to keep `most` aggregates.
    pub(super) fn new(most: usize) -> Self {
        Self {
            keep: REPLAY_KEEP_START.min(most),
            most,
            taken_back: 0,
        }
    }

    /// How many aggregates the replay keeps in memory after a snapshot.
    pub(super) fn keep(self) -> usize {
        self.keep
    }

    /// An aggregate came back from the file.
    pub(super) fn taken_back(&mut self) {
        self.taken_back += 1;
    }

    /// A snapshot committed after the model had grown by `grown` aggregates over what it keeps:
    /// if more than a quarter of those came back from the file, the working set is larger than
    /// what the replay keeps, and it keeps twice as many from now on.
    pub(super) fn after_snapshot(&mut self, grown: usize) {
        if self.taken_back * THRASH_SHARE > grown {
            self.keep = (self.keep.max(1) * 2).min(self.most);
        }
        self.taken_back = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_starts_keeping_few_and_never_more_than_configured() {
        assert_eq!(ReplayMemory::new(5_000).keep(), REPLAY_KEEP_START);
        assert_eq!(ReplayMemory::new(100).keep(), 100);
        assert_eq!(ReplayMemory::new(0).keep(), 0);
    }

    #[test]
    fn a_replay_whose_aggregates_do_not_come_back_keeps_what_it_kept() {
        let mut replay = ReplayMemory::new(5_000);
        for _ in 0..200 {
            replay.taken_back();
        }
        replay.after_snapshot(1_000);
        assert_eq!(replay.keep(), REPLAY_KEEP_START);
    }

    #[test]
    fn a_replay_that_thrashes_keeps_twice_as_many_up_to_the_configured_number() {
        let mut replay = ReplayMemory::new(3_000);
        let mut kept = vec![replay.keep()];
        for _ in 0..4 {
            for _ in 0..800 {
                replay.taken_back();
            }
            replay.after_snapshot(1_000);
            kept.push(replay.keep());
        }
        assert_eq!(kept, [500, 1_000, 2_000, 3_000, 3_000]);
    }

    #[test]
    fn what_came_back_is_counted_from_the_last_snapshot_only() {
        let mut replay = ReplayMemory::new(5_000);
        for _ in 0..200 {
            replay.taken_back();
        }
        replay.after_snapshot(1_000);
        for _ in 0..200 {
            replay.taken_back();
        }
        replay.after_snapshot(1_000);
        assert_eq!(replay.keep(), REPLAY_KEEP_START);
    }
}
