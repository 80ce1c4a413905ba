//! Kafka settings, read once from the environment (12-factor), with loopback defaults.

use std::env;

/// Where the broker is and which topic namespace this deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `KAFKA_BROKERS`: comma-separated `host:port` list.
    pub brokers: String,
    /// `KAFKA_TOPIC_PREFIX`: lets several deployments (or test runs) share one broker.
    pub topic_prefix: String,
    /// Partitions per topic when this process creates topics.
    pub partitions: i32,
}

impl KafkaSettings {
    pub const DEFAULT_BROKERS: &'static str = "127.0.0.1:9092";
    pub const DEFAULT_PREFIX: &'static str = "orderstream";
    pub const DEFAULT_PARTITIONS: i32 = 6;

    pub fn from_env() -> Self {
        Self {
            brokers: env::var("KAFKA_BROKERS").unwrap_or_else(|_| Self::DEFAULT_BROKERS.into()),
            topic_prefix: env::var("KAFKA_TOPIC_PREFIX")
                .unwrap_or_else(|_| Self::DEFAULT_PREFIX.into()),
            partitions: env::var("KAFKA_PARTITIONS")
                .ok()
                .and_then(|raw| raw.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(Self::DEFAULT_PARTITIONS),
        }
    }
}
