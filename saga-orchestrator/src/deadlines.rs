//! When a saga's awaited steps are past their deadline: the rule, apart from the clock and
//! the I/O (the worker reads the clock once per tick and sends the `DeadlinePassed` inputs).

use chrono::{DateTime, Duration, Utc};
use domain::Version;

/// The worker's view of time for one check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: DateTime<Utc>,
    /// When this worker started: a restarted orchestrator first re-sends what was in flight,
    /// so no deadline counts from before it.
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) step_timeout: Duration,
}

/// What the worker knows of one saga, as far as deadlines go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Awaiting {
    /// Whether the saga awaits any step.
    pub(crate) steps: bool,
    pub(crate) version: Version,
    /// When the saga last recorded anything.
    pub(crate) last_event_at: DateTime<Utc>,
    /// The version at which deadlines were last sent: each version gets them once.
    pub(crate) sent_at: Option<Version>,
}

/// Whether the saga's awaited steps get `DeadlinePassed` now.
pub(crate) fn due(clock: &Clock, saga: &Awaiting) -> bool {
    let since = saga.last_event_at.max(clock.started_at);
    saga.steps && clock.now - since >= clock.step_timeout && saga.sent_at != Some(saga.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(seconds)
    }

    fn clock(now: i64) -> Clock {
        Clock {
            now: at(now),
            started_at: at(0),
            step_timeout: Duration::seconds(10),
        }
    }

    fn awaiting(last_event_at: i64) -> Awaiting {
        Awaiting {
            steps: true,
            version: Version::new(3),
            last_event_at: at(last_event_at),
            sent_at: None,
        }
    }

    #[test]
    fn a_step_awaited_less_than_the_timeout_is_not_due() {
        assert!(!due(&clock(109), &awaiting(100)));
    }

    #[test]
    fn a_step_awaited_for_the_timeout_is_due() {
        assert!(due(&clock(110), &awaiting(100)));
    }

    #[test]
    fn a_saga_awaiting_nothing_is_never_due() {
        let saga = Awaiting {
            steps: false,
            ..awaiting(0)
        };
        assert!(!due(&clock(1_000), &saga));
    }

    #[test]
    fn deadlines_are_sent_once_per_version() {
        let sent = Awaiting {
            sent_at: Some(Version::new(3)),
            ..awaiting(0)
        };
        assert!(!due(&clock(1_000), &sent));
        let moved_on = Awaiting {
            version: Version::new(4),
            ..sent
        };
        assert!(due(&clock(1_000), &moved_on));
    }

    #[test]
    fn a_restarted_worker_counts_from_its_own_start() {
        let restarted = Clock {
            started_at: at(500),
            ..clock(505)
        };
        assert!(!due(&restarted, &awaiting(0)));
        let later = Clock {
            now: at(510),
            ..restarted
        };
        assert!(due(&later, &awaiting(0)));
    }
}
