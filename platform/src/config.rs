//! Kafka settings, read once from the environment (12-factor), with loopback defaults.

use std::env;

use crate::log_order::CommandWindow;

/// Where the broker is and which topic namespace this deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `KAFKA_BROKERS`: comma-separated `host:port` list.
    pub brokers: String,
    /// `KAFKA_TOPIC_PREFIX`: lets several deployments (or test runs) share one broker.
    pub topic_prefix: String,
    /// Partitions per topic when this process creates topics.
    pub partitions: i32,
    /// `KAFKA_REPLICATION_FACTOR`: replicas per topic this process creates (1 on one local
    /// broker; 3 in production).
    pub replication_factor: i32,
    /// `KAFKA_MIN_INSYNC_REPLICAS`: replicas that must have a record before `acks=all` is
    /// answered, set on every topic this process creates (1 locally; 2 in production).
    pub min_insync_replicas: i32,
    /// `IDEMPOTENCY_WINDOW_SECONDS` (default a day): how long the log remembers a command id
    /// and an Idempotency-Key's claim. Part of the log-order rule, so like the topic prefix and
    /// the partition count it must be the same for every service reading the deployment's
    /// logs (decision 0008).
    pub command_window: CommandWindow,
}

impl KafkaSettings {
    pub const DEFAULT_BROKERS: &'static str = "127.0.0.1:9092";
    pub const DEFAULT_PREFIX: &'static str = "orderstream";
    pub const DEFAULT_PARTITIONS: i32 = 6;

    /// Settings for a test or a tool: `brokers` and `prefix`, `partitions` per topic, one
    /// replica (a single local broker).
    pub fn local(brokers: &str, prefix: &str, partitions: i32) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topic_prefix: prefix.to_owned(),
            partitions,
            replication_factor: 1,
            min_insync_replicas: 1,
            command_window: CommandWindow::DEFAULT,
        }
    }

    /// The settings from the environment; an invalid `IDEMPOTENCY_WINDOW_SECONDS` is refused
    /// (a service guessing the window would judge the log unlike the others).
    pub fn from_env() -> Result<Self, InvalidSetting> {
        Ok(Self {
            brokers: env::var("KAFKA_BROKERS").unwrap_or_else(|_| Self::DEFAULT_BROKERS.into()),
            topic_prefix: env::var("KAFKA_TOPIC_PREFIX")
                .unwrap_or_else(|_| Self::DEFAULT_PREFIX.into()),
            partitions: env::var("KAFKA_PARTITIONS")
                .ok()
                .and_then(|raw| raw.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(Self::DEFAULT_PARTITIONS),
            replication_factor: positive_env("KAFKA_REPLICATION_FACTOR", 1),
            min_insync_replicas: positive_env("KAFKA_MIN_INSYNC_REPLICAS", 1),
            command_window: CommandWindow::from_env()?,
        })
    }
}

fn positive_env(name: &str, default: i32) -> i32 {
    env::var(name)
        .ok()
        .and_then(|raw| raw.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// A setting whose value is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} is invalid: {value:?}")]
pub struct InvalidSetting {
    pub name: &'static str,
    pub value: String,
}

/// A positive whole number from `name`, or `default` when unset (0 and garbage are refused:
/// every such setting is a count, a rate or a duration).
pub fn positive_number(name: &'static str, default: u64) -> Result<u64, InvalidSetting> {
    number_setting(name, env::var(name).ok(), default, |n| n > 0)
}

/// A whole number from `name`, 0 included, or `default` when unset (garbage is refused): for
/// counts where none is a meaningful choice.
pub fn whole_number(name: &'static str, default: u64) -> Result<u64, InvalidSetting> {
    number_setting(name, env::var(name).ok(), default, |_| true)
}

/// `raw` (the setting's value, if set) read as a number that `allowed` accepts.
fn number_setting(
    name: &'static str,
    raw: Option<String>,
    default: u64,
    allowed: fn(u64) -> bool,
) -> Result<u64, InvalidSetting> {
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| allowed(*n))
            .ok_or(InvalidSetting { name, value: raw }),
    }
}

/// [`positive_number`] read as milliseconds.
pub fn positive_millis(
    name: &'static str,
    default: std::time::Duration,
) -> Result<std::time::Duration, InvalidSetting> {
    let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    positive_number(name, default).map(std::time::Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positive(raw: Option<&str>) -> Result<u64, InvalidSetting> {
        number_setting("N", raw.map(str::to_owned), 7, |n| n > 0)
    }

    fn whole(raw: Option<&str>) -> Result<u64, InvalidSetting> {
        number_setting("N", raw.map(str::to_owned), 7, |_| true)
    }

    #[test]
    fn an_unset_number_setting_takes_its_default() {
        assert_eq!(positive(None), Ok(7));
        assert_eq!(whole(None), Ok(7));
    }

    #[test]
    fn zero_is_refused_where_a_setting_must_be_positive_and_kept_where_none_is_a_choice() {
        assert_eq!(
            positive(Some("0")),
            Err(InvalidSetting {
                name: "N",
                value: "0".to_owned()
            })
        );
        assert_eq!(whole(Some("0")), Ok(0));
        assert_eq!(whole(Some(" 12 ")), Ok(12));
    }

    #[test]
    fn garbage_is_refused_with_the_value_it_was_given() {
        for raw in ["", "-1", "five", "1.5"] {
            assert_eq!(
                whole(Some(raw)),
                Err(InvalidSetting {
                    name: "N",
                    value: raw.to_owned()
                })
            );
        }
    }
}
