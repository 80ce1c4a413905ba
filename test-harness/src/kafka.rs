//! A unique topic namespace per test, and small client helpers.

use std::time::Duration;

use platform::config::KafkaSettings;
use platform::kafka::{consumer_config, ensure_topics, producer_config};
use platform::topics::Topics;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// One test's view of the broker: its own topic prefix.
#[derive(Debug, Clone)]
pub struct TestKafka {
    pub settings: KafkaSettings,
}

impl TestKafka {
    /// Uses `KAFKA_BROKERS` with a fresh prefix.
    pub fn new() -> Self {
        Self::at(&crate::env::kafka_brokers())
    }

    /// A fresh prefix on a given broker (e.g. a [`crate::BrokerProcess`]).
    pub fn at(brokers: &str) -> Self {
        Self {
            settings: KafkaSettings::local(brokers, &crate::unique_name(), 3),
        }
    }

    pub fn topics(&self) -> Topics {
        Topics::new(self.settings.topic_prefix.clone())
    }

    /// `<prefix>.<name>`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.settings.topic_prefix)
    }

    /// Creates `<prefix>.<name>` with `partitions` partitions and returns its full name.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> String {
        let topic = self.topic(name);
        ensure_topics(&self.settings, std::slice::from_ref(&topic), partitions)
            .await
            .expect("create topic");
        // Metadata is eventually consistent: wait until the broker reports the partitions.
        crate::kafka::wait_for_partitions(&self.settings.brokers, &topic, partitions).await;
        topic
    }

    /// The production producer settings.
    pub fn producer(&self) -> FutureProducer {
        producer_config(&self.settings)
            .create()
            .expect("create producer")
    }

    /// The production consumer settings, plus any overrides.
    pub fn consumer(&self, group: &str, overrides: &[(&str, &str)]) -> StreamConsumer {
        let mut config: ClientConfig = consumer_config(&self.settings, group);
        for (key, value) in overrides {
            config.set(*key, *value);
        }
        config.create().expect("create consumer")
    }

    /// A group id unique to this test.
    pub fn group(&self, name: &str) -> String {
        format!("{}.{name}", self.settings.topic_prefix)
    }
}

impl Default for TestKafka {
    fn default() -> Self {
        Self::new()
    }
}

/// Waits (up to 10 s) until metadata shows `topic` with `partitions` partitions.
pub async fn wait_for_partitions(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    for _ in 0..100 {
        if let Ok(metadata) = client.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                if t.error().is_none() && t.partitions().len() == partitions as usize {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {topic} did not appear with {partitions} partitions");
}
