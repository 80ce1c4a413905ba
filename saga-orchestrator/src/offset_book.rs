//! Which offsets a saga worker may commit: per source topic, the lowest offset whose effects
//! are not all done. Pure bookkeeping (the worker does the I/O), so a killed orchestrator's
//! redo is decided here: everything at or above the committed offset is read and acted on
//! again, everything below it never is.

use std::collections::BTreeMap;

/// The two topics a worker reads, as indices into the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Orders = 0,
    Sagas = 1,
}

/// Per source: what is committed, what has been read, and what is still running.
#[derive(Debug, Default)]
pub(crate) struct OffsetBook {
    committed: [i64; 2],
    next: [i64; 2],
    /// Offsets whose effects are still running (offset -> running actions).
    pending: [BTreeMap<i64, usize>; 2],
}

impl OffsetBook {
    /// A book that starts where the group's committed offsets are.
    pub(crate) fn starting_at(committed: [i64; 2]) -> Self {
        Self {
            committed,
            next: committed,
            pending: Default::default(),
        }
    }

    /// The record at `offset` of `source` was read.
    pub(crate) fn read(&mut self, source: Source, offset: i64) {
        self.next[source as usize] = offset + 1;
    }

    /// An action caused by the record at `offset` started.
    pub(crate) fn begin(&mut self, source: Source, offset: i64) {
        *self.pending[source as usize].entry(offset).or_default() += 1;
    }

    /// An action caused by the record at `offset` ended.
    pub(crate) fn finish(&mut self, source: Source, offset: i64) {
        let pending = &mut self.pending[source as usize];
        if let Some(count) = pending.get_mut(&offset) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&offset);
            }
        }
    }

    /// Per source, the offset to commit now, or `None` where it would not move.
    pub(crate) fn to_commit(&self) -> [Option<i64>; 2] {
        std::array::from_fn(|i| {
            let done_below = self.pending[i]
                .keys()
                .next()
                .copied()
                .unwrap_or(self.next[i]);
            let position = done_below.max(self.committed[i]);
            (position > self.committed[i]).then_some(position)
        })
    }

    /// The broker took `positions` (from [`Self::to_commit`]).
    pub(crate) fn committed(&mut self, positions: [Option<i64>; 2]) {
        for (committed, position) in self.committed.iter_mut().zip(positions) {
            if let Some(position) = position {
                *committed = (*committed).max(position);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_records_with_nothing_running_are_committed_past() {
        let mut book = OffsetBook::starting_at([10, 4]);
        book.read(Source::Orders, 10);
        book.read(Source::Orders, 11);
        assert_eq!(book.to_commit(), [Some(12), None]);
    }

    #[test]
    fn an_offset_is_committed_only_once_everything_it_caused_is_done() {
        let mut book = OffsetBook::starting_at([0, 0]);
        book.read(Source::Sagas, 0);
        book.begin(Source::Sagas, 0);
        book.begin(Source::Sagas, 0);
        book.read(Source::Sagas, 1);
        assert_eq!(book.to_commit(), [None, None], "offset 0 still has actions");
        book.finish(Source::Sagas, 0);
        assert_eq!(
            book.to_commit(),
            [None, None],
            "one of its two actions is still running"
        );
        book.finish(Source::Sagas, 0);
        assert_eq!(book.to_commit(), [None, Some(2)]);
    }

    #[test]
    fn a_later_action_done_first_does_not_commit_past_an_earlier_one_still_running() {
        let mut book = OffsetBook::starting_at([0, 0]);
        for offset in 0..3 {
            book.read(Source::Orders, offset);
            book.begin(Source::Orders, offset);
        }
        book.finish(Source::Orders, 2);
        book.finish(Source::Orders, 0);
        assert_eq!(book.to_commit(), [Some(1), None]);
    }

    #[test]
    fn what_was_committed_is_never_committed_again_or_moved_back() {
        let mut book = OffsetBook::starting_at([5, 0]);
        book.read(Source::Orders, 5);
        let positions = book.to_commit();
        book.committed(positions);
        assert_eq!(book.to_commit(), [None, None]);
        book.committed([Some(3), None]);
        assert_eq!(
            book.to_commit(),
            [None, None],
            "a stale commit does not move it back"
        );
    }
}
