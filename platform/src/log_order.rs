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

/// What the log shows of a command's earlier accepted events: the aggregate they extended and
/// the version of the last one. A reader that keeps no [`LogOrder`] (a projector, which keeps
/// chain heads in its rows) stores these to apply the repeated-command part of the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandUse {
    pub aggregate_id: String,
    pub last_version: Version,
}

/// The log-order rule for one event, the one implementation every reader applies: it extends
/// its aggregate's accepted chain iff its version is the next one after `head` (version and
/// event id of the chain's last accepted event), it names `head` as its predecessor, and its
/// command id was not used before (`earlier`), unless the head itself is that command's own
/// event (a command that wrote several events to one aggregate).
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
        let head = self
            .heads
            .get(&envelope.aggregate_id)
            .map(|h| (h.version, h.event_id));
        let earlier = self
            .commands
            .get(&envelope.command_id)
            .map(|r| (r.aggregate_id.as_str(), r.version));
        let verdict = extends_chain(head, envelope, earlier);
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

    #[test]
    fn a_command_that_created_one_aggregate_cannot_create_another() {
        // A keyed retry that drew a new order id: the same command id creates a second order.
        let mut log = LogOrder::default();
        let first = event("order-a", 1, None, "x");
        assert_eq!(log.judge(&first, 0), Verdict::Accepted);
        let phantom = event("order-b", 1, None, "x");
        assert_eq!(
            log.judge(&phantom, 1),
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
}
