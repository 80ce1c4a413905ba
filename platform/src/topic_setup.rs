//! Creating the topics a service uses, and refusing to run on one that would lose data.
//!
//! Every service calls [`ensure_topics`] at start-up with the topics it reads or writes. Missing
//! topics are created with the replication the deployment asks for and the retention their role
//! needs ([`Topics::retention`]). Existing topics are left as they are, but checked: a topic that
//! holds the source of truth (events, saga events, dead letters) and would delete records by age
//! or size, or compact them away, stops the service with a message naming the topic and the
//! setting. Kafka's defaults (7 days) would otherwise quietly delete the log a week later. An
//! events topic whose broker stamps records itself (`LogAppendTime`) is refused too: the
//! log-order rule's clock reads the writers' own timestamps (decision 0008).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

use crate::config::KafkaSettings;
use crate::topics::{Retention, Topics};

#[derive(Debug, Error)]
pub enum KafkaSetupError {
    #[error("could not create the Kafka client")]
    Client(#[source] KafkaError),
    #[error("could not create topic {topic}: {code:?}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic creation request failed")]
    Admin(#[source] KafkaError),
    #[error("could not read the configs of topic {topic}: {code:?}")]
    DescribeTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(transparent)]
    WouldDeleteData(#[from] DataLossRisk),
    #[error(
        "refusing to start: topic {0} has message.timestamp.type=LogAppendTime, but the \
         log-order rule's clock reads the writers' own record timestamps; set \
         message.timestamp.type=CreateTime on it (for example: kafka-configs.sh --alter \
         --entity-type topics --entity-name {0} --add-config message.timestamp.type=CreateTime)"
    )]
    BrokerTimestamps(String),
    #[error(
        "refusing to start: topic {0} holds the writers' snapshots but is not cleanup.policy=compact, \
         so the broker would delete the records of aggregates that did not change for a while; \
         set cleanup.policy=compact on it (for example: kafka-configs.sh --alter --entity-type \
         topics --entity-name {0} --add-config cleanup.policy=compact)"
    )]
    NotCompacted(String),
    #[error("some partitions of these topics are not served after 15 s: {0}")]
    NoLeader(String),
}

/// A topic holding the source of truth whose configs would let the broker delete records.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "refusing to start: topic {topic} holds the source of truth but has {key}={value}, so the \
     broker would delete its records; set {key}={wanted} on it (for example: kafka-configs.sh \
     --alter --entity-type topics --entity-name {topic} --add-config {key}={wanted})"
)]
pub struct DataLossRisk {
    pub topic: String,
    pub key: String,
    pub value: String,
    pub wanted: &'static str,
}

/// Creates the topics that do not exist yet, then checks that none of `topics` that must keep
/// its records forever would delete them. Existing topics keep their configs (this never alters
/// a topic an operator set up).
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[String],
    partitions: i32,
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = crate::kafka::client_config(&settings.brokers)
        .create()
        .map_err(KafkaSetupError::Client)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    create_missing(&admin, &options, settings, topics, partitions).await?;
    // Served first: on a cluster, the broker asked for configs may not know a topic created a
    // moment ago.
    wait_until_served(settings, topics).await?;
    check_retention(&admin, &options, topics).await
}

/// Waits (up to 15 s) until every partition of `topics` has a leader that answers a
/// list-offsets request (once, at start-up: a few milliseconds when they are). A topic the broker has just created answers "not leader" to
/// produce, fetch and list-offsets requests for a moment (metadata can name the leader before
/// the leader has loaded the partition); a service that starts right after creating its topics
/// would otherwise fail its first calls, and so would a second service that found the topics
/// a first one had just created.
async fn wait_until_served(
    settings: &KafkaSettings,
    topics: &[String],
) -> Result<(), KafkaSetupError> {
    if topics.is_empty() {
        return Ok(());
    }
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: std::sync::Arc<BaseConsumer> = std::sync::Arc::new(
        crate::kafka::client_config(&settings.brokers)
            .create()
            .map_err(KafkaSetupError::Client)?,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (client, wanted) = (client.clone(), topics.to_vec());
        let all_led = tokio::task::spawn_blocking(move || {
            let metadata = client.fetch_metadata(None, Duration::from_secs(5)).ok()?;
            let led = wanted.iter().all(|name| {
                metadata.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none())
                })
            });
            let served = led
                && metadata
                    .topics()
                    .iter()
                    .filter(|t| wanted.iter().any(|name| name == t.name()))
                    .all(|t| {
                        t.partitions().iter().all(|p| {
                            client
                                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(5))
                                .is_ok()
                        })
                    });
            Some(served)
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
        if all_led {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(KafkaSetupError::NoLeader(topics.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    settings: &KafkaSettings,
    topics: &[String],
    partitions: i32,
) -> Result<(), KafkaSetupError> {
    let min_insync = settings.min_insync_replicas.to_string();
    let configs: Vec<Vec<(&'static str, String)>> = topics
        .iter()
        .map(|name| Topics::retention(name).topic_configs())
        .collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&configs)
        .map(|(name, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    name,
                    partitions,
                    TopicReplication::Fixed(settings.replication_factor),
                )
                .set("min.insync.replicas", &min_insync),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new_topics, options)
        .await
        .map_err(KafkaSetupError::Admin)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

async fn check_retention(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topics: &[String],
) -> Result<(), KafkaSetupError> {
    let kept: Vec<&String> = topics
        .iter()
        .filter(|t| {
            matches!(
                Topics::retention(t),
                Retention::Forever | Retention::Compacted
            )
        })
        .collect();
    if kept.is_empty() {
        return Ok(());
    }
    let resources: Vec<ResourceSpecifier<'_>> = kept
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let results = admin
        .describe_configs(&resources, options)
        .await
        .map_err(KafkaSetupError::Admin)?;
    for (topic, result) in kept.into_iter().zip(results) {
        let resource = result.map_err(|code| KafkaSetupError::DescribeTopic {
            topic: topic.clone(),
            code,
        })?;
        let configs = resource
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()));
        if Topics::retention(topic) == Retention::Compacted {
            if !only_compacts(configs) {
                return Err(KafkaSetupError::NotCompacted(topic.clone()));
            }
            continue;
        }
        if let Some(risk) = data_loss_risk(topic, configs.clone()) {
            return Err(risk.into());
        }
        if topic.ends_with(".events") && stamps_records_itself(configs) {
            return Err(KafkaSetupError::BrokerTimestamps(topic.clone()));
        }
    }
    Ok(())
}

/// The first setting of a keep-forever topic's `configs` that would let the broker delete
/// records: a finite `retention.ms` or `retention.bytes`, or compaction.
pub fn data_loss_risk<'a>(
    topic: &str,
    configs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<DataLossRisk> {
    configs.into_iter().find_map(|(key, value)| {
        let wanted = match key {
            "retention.ms" | "retention.bytes" if value.trim() != "-1" => "-1",
            "cleanup.policy" if value.split(',').any(|p| p.trim() == "compact") => "delete",
            _ => return None,
        };
        Some(DataLossRisk {
            topic: topic.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            wanted,
        })
    })
}

/// Whether `configs` make the broker keep the newest record of every key and nothing less:
/// compaction alone (with `delete` too, records would also go by age).
pub fn only_compacts<'a>(configs: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    configs
        .into_iter()
        .any(|(key, value)| key == "cleanup.policy" && value.trim() == "compact")
}

/// Whether `configs` make the broker replace the producers' record timestamps.
pub fn stamps_records_itself<'a>(configs: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    configs
        .into_iter()
        .any(|(key, value)| key == "message.timestamp.type" && value.trim() == "LogAppendTime")
}

#[cfg(test)]
mod tests {
    use super::{data_loss_risk, stamps_records_itself};

    #[test]
    fn an_events_topic_stamped_by_the_broker_is_refused() {
        assert!(stamps_records_itself([(
            "message.timestamp.type",
            "LogAppendTime"
        )]));
        assert!(!stamps_records_itself([(
            "message.timestamp.type",
            "CreateTime"
        )]));
    }

    #[test]
    fn a_topic_kept_forever_passes() {
        let configs = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("segment.ms", "604800000"),
        ];
        assert_eq!(data_loss_risk("t", configs), None);
    }

    #[test]
    fn finite_retention_by_age_or_size_or_compaction_is_a_risk() {
        for (key, value, wanted) in [
            ("retention.ms", "604800000", "-1"),
            ("retention.bytes", "1073741824", "-1"),
            ("cleanup.policy", "compact", "delete"),
            ("cleanup.policy", "compact,delete", "delete"),
        ] {
            let risk = data_loss_risk("demo.orders.events", [(key, value)])
                .unwrap_or_else(|| panic!("{key}={value} must be refused"));
            assert_eq!((risk.key.as_str(), risk.wanted), (key, wanted));
            assert!(risk.to_string().contains("demo.orders.events"));
        }
    }
}
