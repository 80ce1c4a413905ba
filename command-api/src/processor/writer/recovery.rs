//! What a writer must do after an attempt that did not commit, before it decides anything
//! more. Kept apart from the I/O that does it so the one rule that matters is plain: a pending
//! recovery is only ever replaced by one that does at least as much.

/// What a writer must do before its next attempt, after one did not commit. Cleared only once
/// done: no attempt runs on a state that may hold aborted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::processor) enum Recovery {
    /// Nothing: the model is what the log says.
    None,
    /// The attempt aborted before its events were judged: read what others appended, at least
    /// up to `past` (beyond this writer's aborted records and the abort marker).
    CatchUp { past: i64 },
    /// The model judged events of an aborted attempt: rebuild it from the log (same producer).
    Rebuild,
    /// The transaction's outcome is unknown (or the producer is unusable): a new producer under
    /// the same transactional id settles it, and the committed floor says whether it committed.
    Restart,
}

impl Recovery {
    /// What must be done when `self` is pending and `next` is asked for too: the more thorough
    /// of the two (a restart rebuilds, a rebuild reads everything a catch-up would), and the
    /// further of two catch-ups. Never less than either: a pending restart overwritten by a
    /// catch-up would let the writer decide on a view it knows to be incomplete.
    pub(in crate::processor) fn and(self, next: Recovery) -> Recovery {
        match (self, next) {
            (Recovery::CatchUp { past: a }, Recovery::CatchUp { past: b }) => {
                Recovery::CatchUp { past: a.max(b) }
            }
            (a, b) if b.thoroughness() > a.thoroughness() => b,
            (a, _) => a,
        }
    }

    fn thoroughness(self) -> u8 {
        match self {
            Recovery::None => 0,
            Recovery::CatchUp { .. } => 1,
            Recovery::Rebuild => 2,
            Recovery::Restart => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Recovery::{self, CatchUp, None, Rebuild, Restart};

    const ALL: [Recovery; 5] = [
        None,
        CatchUp { past: 10 },
        CatchUp { past: 20 },
        Rebuild,
        Restart,
    ];

    #[test]
    fn a_pending_restart_is_never_replaced_by_less() {
        for next in ALL {
            assert_eq!(Restart.and(next), Restart, "{next:?}");
            assert_eq!(next.and(Restart), Restart, "{next:?}");
        }
    }

    #[test]
    fn the_more_thorough_recovery_wins_and_two_catch_ups_read_the_further() {
        assert_eq!(None.and(CatchUp { past: 10 }), CatchUp { past: 10 });
        assert_eq!(CatchUp { past: 10 }.and(None), CatchUp { past: 10 });
        assert_eq!(
            CatchUp { past: 20 }.and(CatchUp { past: 10 }),
            CatchUp { past: 20 }
        );
        assert_eq!(
            CatchUp { past: 10 }.and(CatchUp { past: 20 }),
            CatchUp { past: 20 }
        );
        assert_eq!(CatchUp { past: 20 }.and(Rebuild), Rebuild);
        assert_eq!(Rebuild.and(CatchUp { past: 20 }), Rebuild);
        assert_eq!(None.and(None), None);
    }
}
