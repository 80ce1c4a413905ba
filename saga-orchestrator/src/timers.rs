//! Timers ordered by due time, one per saga at most: the worker finds the sagas whose
//! deadline or stuck check is due by looking at the earliest entries, not by scanning every
//! saga it knows on every tick. A saga's timer is set when one of its events is read and
//! cancelled when nothing about it can come due (no awaited step, a terminal phase).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
pub(crate) struct Timers {
    queue: BTreeSet<(DateTime<Utc>, String)>,
    due_at: HashMap<String, DateTime<Utc>>,
}

impl Timers {
    /// Sets `id`'s timer to `at` (moving it if it had one); `None` cancels it.
    pub(crate) fn set(&mut self, id: &str, at: Option<DateTime<Utc>>) {
        if let Some(old) = self.due_at.remove(id) {
            self.queue.remove(&(old, id.to_owned()));
        }
        if let Some(at) = at {
            self.queue.insert((at, id.to_owned()));
            self.due_at.insert(id.to_owned(), at);
        }
    }

    /// Removes and returns the ids whose timers are due at `now` or before, earliest first.
    pub(crate) fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let mut due = Vec::new();
        while self.queue.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, id)) = self.queue.pop_first() {
                self.due_at.remove(&id);
                due.push(id);
            }
        }
        due
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(seconds)
    }

    #[test]
    fn due_timers_come_out_earliest_first_and_only_once() {
        let mut timers = Timers::default();
        timers.set("b", Some(at(20)));
        timers.set("a", Some(at(10)));
        timers.set("c", Some(at(30)));
        assert_eq!(timers.pop_due(at(5)), Vec::<String>::new());
        assert_eq!(timers.pop_due(at(20)), ["a", "b"]);
        assert_eq!(timers.pop_due(at(25)), Vec::<String>::new());
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn a_saga_has_one_timer_which_moves_or_is_cancelled() {
        let mut timers = Timers::default();
        timers.set("a", Some(at(10)));
        timers.set("a", Some(at(40)));
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.pop_due(at(30)), Vec::<String>::new(), "moved later");
        timers.set("a", None);
        assert_eq!(timers.pop_due(at(50)), Vec::<String>::new(), "cancelled");
        assert_eq!(timers.len(), 0);
    }
}
