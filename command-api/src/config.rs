//! Typed configuration from the environment (the names are the same in every service).

use std::net::SocketAddr;
use std::time::Duration;

use domain::AggregateKind;
use platform::config::KafkaSettings;
use platform::resilience::BreakerPolicy;

use crate::processor::{WriterMemory, COMMAND_KINDS};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{name} is not set")]
    Missing { name: &'static str },
    #[error("{name} is invalid: {value:?}")]
    Invalid { name: &'static str, value: String },
}

impl From<platform::config::InvalidSetting> for ConfigError {
    fn from(e: platform::config::InvalidSetting) -> Self {
        ConfigError::Invalid {
            name: e.name,
            value: e.value,
        }
    }
}

/// Everything `command-api` needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `COMMAND_API_ADDR` (default `127.0.0.1:8080`; port 0 picks a free one).
    pub addr: SocketAddr,
    pub kafka: KafkaSettings,
    /// `AUTH_JWT_SECRET`: HS256 key for bearer tokens. Required: there is no default secret.
    pub jwt_secret: String,
    /// `COMMAND_WAIT_MS`: how long a request waits for its command's outcome before answering
    /// 202 with where to look (default 5000).
    pub command_wait: Duration,
    /// `RATE_LIMIT_PER_SECOND` per token subject (default 500), with a burst of twice that.
    pub rate_limit_per_second: u32,
    /// `COMMAND_WRITER_GROUP`: the consumer group of partition writers (default
    /// `<prefix>.command-writers`). Every instance of one deployment must share it; tests give
    /// two instances different groups to force two writers onto one partition.
    pub writer_group: String,
    /// `COMMAND_WRITER_KINDS`: comma-separated aggregate kinds this instance writes (default:
    /// all of them, `customers,inventory,orders,order-sagas,idempotency-keys`). Lets a deployment isolate a
    /// participant's writers, and tests take a participant away to see the saga time out.
    pub writer_kinds: Vec<AggregateKind>,
    /// `WRITER_STATE_DIR` (default `orderstream-writer-state` in the temporary directory) and
    /// `WRITER_RESIDENT_AGGREGATES` (default 5000; 0 keeps only what the last snapshot has yet
    /// to write): what each partition writer keeps in memory and where it keeps the rest
    /// (decision 0012).
    pub writer_memory: WriterMemory,
    /// `CIRCUIT_BREAKER_OPEN_MS`: how long the command bus's broker breaker stays open after
    /// it opened, before a trial send (default 2000, whole seconds, jittered down to half).
    pub circuit_breaker: BreakerPolicy,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let addr = var_or("COMMAND_API_ADDR", "127.0.0.1:8080");
        Ok(Self {
            addr: addr.parse().map_err(|_| ConfigError::Invalid {
                name: "COMMAND_API_ADDR",
                value: addr.clone(),
            })?,
            writer_group: std::env::var("COMMAND_WRITER_GROUP").unwrap_or_else(|_| {
                format!(
                    "{}.{}",
                    var_or("KAFKA_TOPIC_PREFIX", KafkaSettings::DEFAULT_PREFIX),
                    crate::processor::GROUP_SUFFIX
                )
            }),
            kafka: KafkaSettings::from_env()?,
            writer_kinds: writer_kinds()?,
            writer_memory: WriterMemory {
                state_dir: std::env::var("WRITER_STATE_DIR").map_or_else(
                    |_| std::env::temp_dir().join("orderstream-writer-state"),
                    std::path::PathBuf::from,
                ),
                resident_aggregates: usize::try_from(platform::config::whole_number(
                    "WRITER_RESIDENT_AGGREGATES",
                    5000,
                )?)
                .unwrap_or(usize::MAX),
            },
            jwt_secret: std::env::var("AUTH_JWT_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or(ConfigError::Missing {
                    name: "AUTH_JWT_SECRET",
                })?,
            command_wait: Duration::from_millis(number("COMMAND_WAIT_MS", 5000)?),
            circuit_breaker: BreakerPolicy::from_env()?,
            rate_limit_per_second: u32::try_from(number("RATE_LIMIT_PER_SECOND", 500)?).map_err(
                |_| ConfigError::Invalid {
                    name: "RATE_LIMIT_PER_SECOND",
                    value: var_or("RATE_LIMIT_PER_SECOND", ""),
                },
            )?,
        })
    }
}

fn writer_kinds() -> Result<Vec<AggregateKind>, ConfigError> {
    let Ok(raw) = std::env::var("COMMAND_WRITER_KINDS") else {
        return Ok(COMMAND_KINDS.to_vec());
    };
    let invalid = || ConfigError::Invalid {
        name: "COMMAND_WRITER_KINDS",
        value: raw.clone(),
    };
    let kinds = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            name.parse::<AggregateKind>()
                .ok()
                .filter(|kind| COMMAND_KINDS.contains(kind))
                .ok_or_else(invalid)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if kinds.is_empty() {
        return Err(invalid());
    }
    Ok(kinds)
}

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &'static str, default: u64) -> Result<u64, ConfigError> {
    Ok(platform::config::positive_number(name, default)?)
}
