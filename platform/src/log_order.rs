//! The log-order rule. Kafka cannot append conditionally, so during a partition handover two
//! writers may both append to an aggregate. Every reader (command writers, projectors, the saga,
//! rebuilds) applies this same rule to the same log, so all agree on which events count:
//!
//! an event is **accepted** only if it extends its aggregate's accepted chain: its version is the
//! next one, its predecessor is the chain's last accepted event, and its command id was not
//! already used by an earlier command in the partition. Anything else is a **loser**: skipped,
//! counted, inert. A zombie's later events follow a loser, so they are losers too.

use std::collections::HashMap;

use domain::Version;
use uuid::Uuid;

use crate::envelope::EventEnvelope;

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
}

/// Why an event does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoserReason {
    /// Not the next version (a second event at a taken version, or a gap).
    Version { expected: Version, found: Version },
    /// The right version, but it follows an event that is not the chain's head.
    Predecessor,
    /// Its command id was already used by an earlier command.
    RepeatedCommand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Loser(LoserReason),
}

/// The accepted chains of every aggregate in one partition, and the commands behind them.
#[derive(Debug, Default)]
pub struct LogOrder {
    heads: HashMap<String, ChainHead>,
    commands: HashMap<String, RecordedCommand>,
    losers: u64,
}

impl LogOrder {
    /// Judges the next event read from the partition, and records it if accepted.
    pub fn judge(&mut self, envelope: &EventEnvelope, offset: i64) -> Verdict {
        let head = self.heads.get(&envelope.aggregate_id);
        let expected = head.map_or(Version::NONE, |h| h.version).next();
        let verdict = if envelope.version != expected {
            Verdict::Loser(LoserReason::Version {
                expected,
                found: envelope.version,
            })
        } else if envelope.predecessor != head.map(|h| h.event_id) {
            Verdict::Loser(LoserReason::Predecessor)
        } else if self.commands.contains_key(&envelope.command_id)
            && head.is_none_or(|h| h.command_id != envelope.command_id)
        {
            Verdict::Loser(LoserReason::RepeatedCommand)
        } else {
            Verdict::Accepted
        };
        match verdict {
            Verdict::Accepted => self.accept(envelope, offset),
            Verdict::Loser(_) => self.losers += 1,
        }
        verdict
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
        let record = self
            .commands
            .entry(envelope.command_id.clone())
            .or_insert_with(|| RecordedCommand {
                aggregate_id: envelope.aggregate_id.clone(),
                version: envelope.version,
                event_types: vec![],
                offsets: vec![],
                request_hash: envelope.request_hash.clone(),
            });
        record.version = envelope.version;
        record.event_types.push(envelope.event_type.clone());
        record.offsets.push(offset);
    }

    pub fn head(&self, aggregate_id: &str) -> Option<&ChainHead> {
        self.heads.get(aggregate_id)
    }

    /// The accepted outcome of a command id, if it has events in this partition.
    pub fn command(&self, command_id: &str) -> Option<&RecordedCommand> {
        self.commands.get(command_id)
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
        assert_eq!(log.judge(&first, 0), Verdict::Accepted);
        let second = event("a", 2, Some(first.event_id), "c2");
        assert_eq!(log.judge(&second, 1), Verdict::Accepted);
        assert_eq!(log.head("a").map(|h| h.version), Some(Version::new(2)));
        assert_eq!(log.command("c2").map(|c| c.offsets.clone()), Some(vec![1]));
    }

    #[test]
    fn a_second_event_at_a_taken_version_loses() {
        let mut log = LogOrder::default();
        let winner = event("a", 1, None, "c1");
        log.judge(&winner, 0);
        let zombie = event("a", 1, None, "c2");
        assert_eq!(
            log.judge(&zombie, 1),
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
        log.judge(&winner, 0);
        let zombie = event("a", 1, None, "z1");
        log.judge(&zombie, 1);
        // The zombie pipelines its next event after its own (losing) one.
        let zombie_next = event("a", 2, Some(zombie.event_id), "z2");
        assert_eq!(
            log.judge(&zombie_next, 2),
            Verdict::Loser(LoserReason::Predecessor)
        );
        let honest_next = event("a", 2, Some(winner.event_id), "c3");
        assert_eq!(log.judge(&honest_next, 3), Verdict::Accepted);
    }

    #[test]
    fn a_repeated_command_id_loses() {
        let mut log = LogOrder::default();
        let first = event("a", 1, None, "c1");
        log.judge(&first, 0);
        let other = event("b", 1, None, "c2");
        log.judge(&other, 1);
        let again = event("a", 2, Some(first.event_id), "c2");
        assert_eq!(
            log.judge(&again, 2),
            Verdict::Loser(LoserReason::RepeatedCommand)
        );
    }

    #[test]
    fn several_events_of_one_command_are_one_chain_segment() {
        let mut log = LogOrder::default();
        let first = event("a", 1, None, "c1");
        log.judge(&first, 0);
        let second = event("a", 2, Some(first.event_id), "c1");
        assert_eq!(log.judge(&second, 1), Verdict::Accepted);
        assert_eq!(log.command("c1").map(|c| c.version), Some(Version::new(2)));
    }
}
