//! Topic names and how long the broker keeps each topic's records. One events topic per
//! aggregate kind, keyed by aggregate id, and a dead-letter twin for every topic a consumer reads.
//!
//! Retention follows what losing a record would cost. Events, saga events and dead letters are
//! the source of truth: kept forever (`retention.ms=-1`, `retention.bytes=-1`; Kafka's default
//! deletes after 7 days). Commands and replies are requests and answers in flight: they matter
//! only until a writer has handled them or a caller has read them, so they are kept for a bounded,
//! documented time. Anything not recognised as in flight is kept forever: an unknown topic is
//! never the one that loses data.

use std::time::Duration;

use domain::AggregateKind;

/// How long a command stays on its topic: far past any command's deadline, long enough for a
/// writer group that was down for days to find what it has not handled, and bounded.
pub const COMMANDS_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long a reply stays on the replies topic: a requester waits seconds; a day leaves room to
/// debug what a requester was told.
pub const REPLIES_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the broker keeps a topic's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The source of truth: never deleted by time or size.
    Forever,
    /// In-flight traffic: deleted once older than this.
    For(Duration),
    /// Writers' snapshots: compacted (the newest record of each key is kept), a cache of state
    /// the events can always rebuild, so compaction loses nothing that counts.
    Compacted,
}

impl Retention {
    /// The topic's `retention.ms` as Kafka writes it (`-1`: forever).
    pub fn retention_ms(self) -> String {
        match self {
            Retention::Forever | Retention::Compacted => "-1".to_owned(),
            Retention::For(age) => age.as_millis().to_string(),
        }
    }

    /// The topic configs our code creates the topic with (replication aside). Every topic is
    /// `cleanup.policy=delete`, never `compact`: compaction would drop an aggregate's older
    /// events, and the whole chain is the source of truth. Record timestamps are the
    /// producer's (`CreateTime`): a writer stamps its events' records with their `occurred_at`
    /// and judges them by it, so the log-order rule's clock must read what the writer wrote.
    ///
    /// A compacted topic rolls segments every 10 minutes and cleans once a tenth is dirty, so a
    /// snapshot topic holds about one record per key, not every write since the last roll.
    pub fn topic_configs(self) -> Vec<(&'static str, String)> {
        let mut configs = vec![
            ("retention.ms", self.retention_ms()),
            ("retention.bytes", "-1".to_owned()),
            ("message.timestamp.type", "CreateTime".to_owned()),
        ];
        match self {
            Retention::Compacted => configs.extend([
                ("cleanup.policy", "compact".to_owned()),
                ("segment.ms", "600000".to_owned()),
                ("min.cleanable.dirty.ratio", "0.1".to_owned()),
            ]),
            Retention::Forever | Retention::For(_) => {
                configs.push(("cleanup.policy", "delete".to_owned()));
            }
        }
        configs
    }
}

/// Names the topics of one deployment (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `<prefix>.<kind>.events`, e.g. `orderstream.orders.events`.
    pub fn events(&self, kind: AggregateKind) -> String {
        format!("{}.{}.events", self.prefix, kind.as_str())
    }

    /// `<prefix>.<kind>.commands`: commands for the writer of each partition. Same partition
    /// count as the events topic, so commands partition p is handled by the writer of events
    /// partition p.
    pub fn commands(&self, kind: AggregateKind) -> String {
        format!("{}.{}.commands", self.prefix, kind.as_str())
    }

    /// `<prefix>.<kind>.snapshots`: the partition writers' snapshots (compacted), partition p
    /// written by the writer of events partition p.
    pub fn snapshots(&self, kind: AggregateKind) -> String {
        format!("{}.{}.snapshots", self.prefix, kind.as_str())
    }

    /// `<prefix>.command-replies`: outcomes, keyed by the requester's reply key.
    pub fn replies(&self) -> String {
        format!("{}.command-replies", self.prefix)
    }

    /// The aggregate kind whose commands travel on `topic`, if any.
    pub fn kind_of_commands(&self, topic: &str) -> Option<AggregateKind> {
        AggregateKind::ALL
            .into_iter()
            .find(|kind| self.commands(*kind) == topic)
    }

    /// `<topic>.dlq`: where a consumer parks what it cannot handle.
    pub fn dead_letters(topic: &str) -> String {
        format!("{topic}.dlq")
    }

    /// How long the broker must keep `topic`'s records: bounded for commands and replies,
    /// forever for everything else (events, saga events, dead letters, anything unknown).
    pub fn retention(topic: &str) -> Retention {
        if topic.ends_with(".commands") {
            Retention::For(COMMANDS_RETENTION)
        } else if topic.ends_with(".command-replies") {
            Retention::For(REPLIES_RETENTION)
        } else if topic.ends_with(".snapshots") {
            Retention::Compacted
        } else {
            Retention::Forever
        }
    }

    /// Every events topic of the deployment.
    pub fn all_events(&self) -> Vec<String> {
        AggregateKind::ALL
            .iter()
            .map(|kind| self.events(*kind))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_events_and_dead_letter_topics_under_the_prefix() {
        let topics = Topics::new("demo");
        assert_eq!(topics.events(AggregateKind::Order), "demo.orders.events");
        assert_eq!(
            Topics::dead_letters("demo.orders.events"),
            "demo.orders.events.dlq"
        );
        assert_eq!(topics.all_events().len(), AggregateKind::ALL.len());
    }

    #[test]
    fn keeps_events_and_dead_letters_forever_and_in_flight_traffic_for_a_bounded_time() {
        let topics = Topics::new("demo");
        for kind in AggregateKind::ALL {
            assert_eq!(Topics::retention(&topics.events(kind)), Retention::Forever);
            let dlq = Topics::dead_letters(&topics.events(kind));
            assert_eq!(Topics::retention(&dlq), Retention::Forever);
            assert_eq!(
                Topics::retention(&topics.commands(kind)),
                Retention::For(COMMANDS_RETENTION)
            );
        }
        assert_eq!(
            Topics::retention(&topics.replies()),
            Retention::For(REPLIES_RETENTION)
        );
        assert_eq!(Retention::Forever.retention_ms(), "-1");
        assert_eq!(Retention::For(REPLIES_RETENTION).retention_ms(), "86400000");
    }
}
