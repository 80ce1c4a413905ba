//! Typed configuration from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use platform::config::KafkaSettings;
use platform::resilience::BreakerPolicy;

use platform::config::positive_millis as millis;
pub use platform::config::InvalidSetting as ConfigError;

/// Everything the orchestrator needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaSettings,
    /// `SAGA_ORCHESTRATOR_ADDR` for `/healthz`, `/readyz` and `/metrics` (default 127.0.0.1:8083).
    pub addr: SocketAddr,
    /// `SAGA_STEP_TIMEOUT_MS`: how long a step may go unanswered before the saga is told its
    /// deadline passed (default 10000). Reservations then compensate and reject `TIMEOUT`;
    /// releases and the order's own steps are asked again.
    pub step_timeout: Duration,
    /// `SAGA_STUCK_AFTER_MS`: a running saga with no progress (no answer, only timeouts and
    /// re-requests) for this long is reported as stuck (default 60000).
    pub stuck_after: Duration,
    /// The consumer group (`<prefix>.saga-orchestrator`): instances share the partitions.
    pub group: String,
    /// `SAGA_STATE_DIR`: where each partition worker keeps its finished sagas on disk
    /// (decision 0011; default `orderstream-saga-state` in the temporary directory). A cache
    /// that lives as long as its worker: a local, non-persistent volume is right for it.
    pub state_dir: PathBuf,
    /// `CIRCUIT_BREAKER_OPEN_MS`: how long the command bus's broker breaker stays open after
    /// it opened, before a trial send (default 2000, whole seconds, jittered down to half).
    pub circuit_breaker: BreakerPolicy,
}

pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(60);

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let kafka = KafkaSettings::from_env()?;
        let addr =
            std::env::var("SAGA_ORCHESTRATOR_ADDR").unwrap_or_else(|_| "127.0.0.1:8083".into());
        Ok(Self {
            addr: addr.parse().map_err(|_| ConfigError {
                name: "SAGA_ORCHESTRATOR_ADDR",
                value: addr.clone(),
            })?,
            step_timeout: millis("SAGA_STEP_TIMEOUT_MS", DEFAULT_STEP_TIMEOUT)?,
            stuck_after: millis("SAGA_STUCK_AFTER_MS", DEFAULT_STUCK_AFTER)?,
            group: format!("{}.saga-orchestrator", kafka.topic_prefix),
            state_dir: std::env::var("SAGA_STATE_DIR").map_or_else(
                |_| std::env::temp_dir().join("orderstream-saga-state"),
                PathBuf::from,
            ),
            circuit_breaker: BreakerPolicy::from_env()?,
            kafka,
        })
    }
}
