//! What a saga worker reports: the `sagas{state, partition}`, `sagas_stuck{partition}` and
//! `sagas_settled{partition}` (finished sagas kept on disk, not in memory) gauges, kept as events
//! are read (never by scanning every saga), `saga_replay_remaining{topic, partition}` (what a
//! replaying worker still has to read), and the counters and
//! histograms of what the sagas did. The names of phases and outcomes come from their own types
//! (`SagaPhase::NAMES`, `ReplyOutcome::as_str`), never copied here.

use std::collections::HashMap;
use std::time::Duration;

use domain::saga::SagaPhase;
use schemas::ReplyOutcome;

/// One partition's saga gauges.
pub(crate) struct SagaGauges {
    partition: String,
    /// Running sagas by phase name.
    phases: HashMap<&'static str, u64>,
    /// Sagas counted as stuck.
    stuck: u64,
    /// Finished sagas on disk (decision 0011).
    settled: u64,
    /// Per topic (orders, sagas), the offsets a replaying worker still has to read before it
    /// acts: a long takeover's progress.
    replay_remaining: [u64; 2],
}

impl SagaGauges {
    pub(crate) fn new(partition: i32) -> Self {
        Self {
            partition: partition.to_string(),
            phases: HashMap::new(),
            stuck: 0,
            settled: 0,
            replay_remaining: [0; 2],
        }
    }

    /// A saga moved from phase `before` to `after` (`None`: not started). `live`: the event
    /// happened after this worker started, so a saga that just ended counts as finished.
    pub(crate) fn moved(
        &mut self,
        before: Option<&'static str>,
        after: Option<&'static str>,
        live: bool,
    ) {
        if before == after {
            return;
        }
        if let Some(count) = before.and_then(|p| self.phases.get_mut(p)) {
            *count = count.saturating_sub(1);
        }
        if let Some(phase) = after {
            *self.phases.entry(phase).or_default() += 1;
            if live && SagaPhase::TERMINAL_NAMES.contains(&phase) {
                metrics::counter!("sagas_finished_total", "state" => phase).increment(1);
            }
        }
    }

    pub(crate) fn stuck(&mut self) {
        self.stuck += 1;
    }

    pub(crate) fn unstuck(&mut self) {
        self.stuck = self.stuck.saturating_sub(1);
    }

    /// `change` sagas went to disk (taken back when negative).
    pub(crate) fn settled(&mut self, change: i64) {
        self.settled = self.settled.saturating_add_signed(change);
    }

    /// What a replay still has to read of each topic (orders, sagas).
    pub(crate) fn replay_remaining(&mut self, remaining: [u64; 2]) {
        self.replay_remaining = remaining;
    }

    /// Publishes the gauges as they stand.
    pub(crate) fn publish(&self) {
        for state in SagaPhase::NAMES {
            metrics::gauge!("sagas", "state" => state, "partition" => self.partition.clone())
                .set(self.phases.get(state).copied().unwrap_or(0) as f64);
        }
        metrics::gauge!("sagas_stuck", "partition" => self.partition.clone())
            .set(self.stuck as f64);
        metrics::gauge!("sagas_settled", "partition" => self.partition.clone())
            .set(self.settled as f64);
        for (topic, remaining) in ["orders", "sagas"].into_iter().zip(self.replay_remaining) {
            metrics::gauge!("saga_replay_remaining", "topic" => topic, "partition" => self.partition.clone())
                .set(remaining as f64);
        }
    }

    /// The partition left this worker: its sagas are counted elsewhere now.
    pub(crate) fn clear(&mut self) {
        self.phases.clear();
        self.stuck = 0;
        self.settled = 0;
        self.replay_remaining = [0; 2];
        self.publish();
    }
}

/// A participant command answered after `took`.
pub(crate) fn command_answered(step: &str, outcome: ReplyOutcome, took: Duration) {
    metrics::histogram!("saga_step_duration_seconds", "step" => step_kind(step))
        .record(took.as_secs_f64());
    metrics::counter!("saga_commands_total", "step" => step_kind(step), "outcome" => outcome.as_str())
        .increment(1);
}

/// A participant command that got no reply in time.
pub(crate) fn command_unanswered(step: &str) {
    metrics::counter!("saga_commands_total", "step" => step_kind(step), "outcome" => "no-reply")
        .increment(1);
}

/// A `DeadlinePassed` input sent for `step`.
pub(crate) fn deadline_sent(step: &str) {
    metrics::counter!("saga_deadlines_total", "step" => step_kind(step)).increment(1);
}

/// Step names without the line number, to keep metric labels bounded.
fn step_kind(step: &str) -> String {
    step.split('/').next().unwrap_or(step).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saga_counts_in_one_phase_at_a_time() {
        let mut gauges = SagaGauges::new(0);
        gauges.moved(None, Some("RESERVING_STOCK"), false);
        gauges.moved(Some("RESERVING_STOCK"), Some("APPROVING"), false);
        gauges.moved(Some("APPROVING"), Some("APPROVED"), false);
        assert_eq!(gauges.phases.get("RESERVING_STOCK"), Some(&0));
        assert_eq!(gauges.phases.get("APPROVING"), Some(&0));
        assert_eq!(gauges.phases.get("APPROVED"), Some(&1));
    }

    #[test]
    fn step_labels_drop_the_line() {
        assert_eq!(step_kind("reserve-stock/3"), "reserve-stock");
        assert_eq!(step_kind("approve"), "approve");
    }
}
