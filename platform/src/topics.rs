//! Topic names. One events topic per aggregate kind, keyed by aggregate id, and a dead-letter
//! twin for every topic a consumer reads.

use domain::AggregateKind;

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
}
