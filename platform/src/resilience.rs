//! Resilience on outbound calls: a circuit breaker per dependency that can be down (Postgres
//! behind query-api, the broker behind command-api), and exponential backoff with jitter for
//! retries. Both come from maintained crates (`failsafe`, `backon`); this module only picks the
//! policies and publishes the breaker's state as metrics.
//!
//! Why a breaker: while a dependency is down every call would wait for its own timeout (3 s for
//! a pool connection, 5 s for a produce) and pile up; once the breaker has seen a few failures
//! in a row it answers "unavailable" at once, then lets a trial call through after a jittered,
//! growing pause, and closes again on the first success.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use failsafe::backoff::EqualJittered;
use failsafe::failure_policy::ConsecutiveFailures;
use failsafe::StateMachine;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// The first open period: between half of it and all of it (equal jitter, in whole
    /// seconds, so at least 2 s for a jitter to exist); it doubles while trials keep failing.
    pub open_at_least: Duration,
    pub open_at_most: Duration,
}

impl BreakerPolicy {
    /// The default policy with the first open period from `CIRCUIT_BREAKER_OPEN_MS` (the same
    /// variable in every service with a breaker): how long a dependency that just failed is
    /// left alone before a trial call, for deployments (and tests) that want longer or shorter
    /// than 2 s.
    pub fn from_env() -> Result<Self, crate::config::InvalidSetting> {
        let default = Self::default();
        let open =
            crate::config::positive_millis("CIRCUIT_BREAKER_OPEN_MS", default.open_at_least)?;
        Ok(default.first_open_for(open))
    }

    /// This policy with `open` as its first open period; the longest stays 16 s, or `open`
    /// if that is longer.
    pub fn first_open_for(self, open: Duration) -> Self {
        Self {
            open_at_least: open,
            open_at_most: self.open_at_most.max(open),
            ..self
        }
    }
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 3,
            open_at_least: Duration::from_secs(2),
            open_at_most: Duration::from_secs(16),
        }
    }
}

/// Publishes state changes as `circuit_breaker_open{dependency}` (1 open, 0.5 half-open,
/// 0 closed) and rejected calls as `circuit_breaker_rejections_total{dependency}`.
#[derive(Debug, Clone, Copy)]
struct Published(&'static str);

impl failsafe::Instrument for Published {
    fn on_call_rejected(&self) {
        metrics::counter!("circuit_breaker_rejections_total", "dependency" => self.0).increment(1);
    }
    fn on_open(&self) {
        tracing::warn!(dependency = self.0, "circuit breaker open: failing fast");
        metrics::gauge!("circuit_breaker_open", "dependency" => self.0).set(1.0);
    }
    fn on_half_open(&self) {
        metrics::gauge!("circuit_breaker_open", "dependency" => self.0).set(0.5);
    }
    fn on_closed(&self) {
        tracing::info!(dependency = self.0, "circuit breaker closed");
        metrics::gauge!("circuit_breaker_open", "dependency" => self.0).set(0.0);
    }
}

/// A circuit breaker guarding one dependency. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Breaker {
    dependency: &'static str,
    machine: StateMachine<ConsecutiveFailures<EqualJittered>, Published>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("dependency", &self.dependency)
            .field("permits", &self.machine.is_call_permitted())
            .finish()
    }
}

impl Breaker {
    pub fn new(dependency: &'static str, policy: BreakerPolicy) -> Self {
        // failsafe asserts whole seconds and min <= max; clamp rather than panic.
        let least = policy.open_at_least.max(Duration::from_secs(2));
        let backoff = failsafe::backoff::equal_jittered(least, policy.open_at_most.max(least));
        let machine = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                policy.failures,
                backoff,
            ))
            .instrument(Published(dependency))
            .build();
        // Installed first, or this series would be recorded nowhere.
        let _ = crate::telemetry::metrics_handle();
        metrics::gauge!("circuit_breaker_open", "dependency" => dependency).set(0.0);
        metrics::counter!("circuit_breaker_rejections_total", "dependency" => dependency)
            .increment(0);
        Self {
            dependency,
            machine,
        }
    }

    /// Whether a call may go out now (closed, or open long enough for a trial). A refusal is
    /// counted as a rejection.
    pub fn permits(&self) -> bool {
        self.machine.is_call_permitted()
    }

    /// The dependency answered.
    pub fn succeeded(&self) {
        self.machine.on_success();
    }

    /// The dependency failed (unreachable, timed out), not the request itself.
    pub fn failed(&self) {
        self.machine.on_error();
    }
}

/// Delays for retrying a call: exponential from 100 ms up to 5 s, with jitter so that many
/// clients retrying after one outage do not retry in step. Endless; the caller decides when
/// to give up.
pub fn backoff() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> BreakerPolicy {
        BreakerPolicy {
            failures: 3,
            open_at_least: Duration::from_secs(2),
            open_at_most: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_breaker_opens_after_consecutive_failures_and_fails_fast() {
        let breaker = Breaker::new("test-open", quick());
        for _ in 0..3 {
            assert!(breaker.permits());
            breaker.failed();
        }
        assert!(!breaker.permits(), "open after three failures in a row");
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let breaker = Breaker::new("test-closed", quick());
        for _ in 0..10 {
            breaker.failed();
            breaker.failed();
            breaker.succeeded();
        }
        assert!(breaker.permits());
    }

    #[test]
    fn an_open_breaker_lets_a_trial_through_later_and_closes_on_success() {
        let breaker = Breaker::new("test-trial", quick());
        for _ in 0..3 {
            breaker.failed();
        }
        assert!(!breaker.permits());
        std::thread::sleep(Duration::from_millis(2100));
        assert!(breaker.permits(), "half-open: a trial call may go");
        breaker.succeeded();
        assert!(breaker.permits());
        breaker.failed();
        assert!(
            breaker.permits(),
            "closed again: one failure does not open it"
        );
    }

    /// The only test that touches `CIRCUIT_BREAKER_OPEN_MS` (the environment is shared by the
    /// tests of this process).
    #[test]
    fn the_first_open_period_is_read_from_the_environment_and_garbage_is_refused_by_name() {
        std::env::set_var("CIRCUIT_BREAKER_OPEN_MS", "soon");
        let refused = BreakerPolicy::from_env().unwrap_err();
        assert_eq!(refused.name, "CIRCUIT_BREAKER_OPEN_MS");
        std::env::set_var("CIRCUIT_BREAKER_OPEN_MS", "0");
        assert!(
            BreakerPolicy::from_env().is_err(),
            "no breaker opens for 0 s"
        );
        std::env::set_var("CIRCUIT_BREAKER_OPEN_MS", "4000");
        let policy = BreakerPolicy::from_env().unwrap();
        assert_eq!(policy.open_at_least, Duration::from_secs(4));
        std::env::remove_var("CIRCUIT_BREAKER_OPEN_MS");
        let policy = BreakerPolicy::from_env().unwrap();
        assert_eq!(policy.open_at_least, BreakerPolicy::default().open_at_least);
    }

    #[test]
    fn a_longer_first_open_period_keeps_the_breaker_open_past_the_default_one() {
        let policy = BreakerPolicy::default().first_open_for(Duration::from_secs(30));
        assert_eq!(policy.open_at_most, Duration::from_secs(30));
        let breaker = Breaker::new("test-long-open", policy);
        for _ in 0..3 {
            breaker.failed();
        }
        // The default policy's longest first period (2 s) has passed.
        std::thread::sleep(Duration::from_millis(2100));
        assert!(!breaker.permits(), "still open: at least 15 s of 30");
        let short = BreakerPolicy::default().first_open_for(Duration::from_secs(4));
        assert_eq!(short.open_at_most, Duration::from_secs(16));
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_its_ceiling() {
        let delays: Vec<Duration> = backoff().take(12).collect();
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(delays[0] < Duration::from_millis(300));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(delays[11] >= Duration::from_secs(5), "{delays:?}");
    }
}
