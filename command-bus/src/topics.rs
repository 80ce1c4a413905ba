//! The kinds that take commands, and the set-up of every topic the command path uses.

use std::sync::Arc;
use std::time::Duration;

use domain::AggregateKind;
use platform::config::KafkaSettings;
use platform::kafka::{ensure_topics, KafkaSetupError};
use platform::topics::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use thiserror::Error;

/// The aggregate kinds that take commands (each has a commands topic and partition writers).
/// The order saga is one of them: the orchestrator records its inputs through the same path;
/// so are idempotency keys, which requests claim before their command is sent.
pub const COMMAND_KINDS: [AggregateKind; 5] = [
    AggregateKind::Customer,
    AggregateKind::InventoryItem,
    AggregateKind::Order,
    AggregateKind::OrderSaga,
    AggregateKind::IdempotencyKey,
];

/// Why the command path's topics could not be set up.
#[derive(Debug, Error)]
pub enum TopicSetupError {
    #[error("Kafka set-up failed")]
    Kafka(#[from] KafkaSetupError),
    #[error("Kafka client failed")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("topics {events} and {commands} have different partition counts ({a} and {b}); they must match")]
    PartitionMismatch {
        events: String,
        commands: String,
        a: usize,
        b: usize,
    },
}

/// Creates every topic the write path uses and returns the partition count, refusing to start
/// when an events topic and its commands topic disagree (writers map partition p to p).
/// Shared with the saga orchestrator, which sends commands down the same path.
pub async fn ensure_all_topics(
    kafka: &KafkaSettings,
    topics: &Topics,
) -> Result<i32, TopicSetupError> {
    let mut names: Vec<String> = topics.all_events();
    names.extend(COMMAND_KINDS.iter().map(|k| topics.commands(*k)));
    names.extend(COMMAND_KINDS.iter().map(|k| topics.snapshots(*k)));
    names.push(topics.replies());
    ensure_topics(kafka, &names, kafka.partitions).await?;
    let client: Arc<BaseConsumer> =
        Arc::new(platform::kafka::client_config(&kafka.brokers).create()?);
    let mut partitions = 0;
    for kind in COMMAND_KINDS {
        let (events, commands) = (topics.events(kind), topics.commands(kind));
        let (a, b) = (
            partition_count(&client, &events).await?,
            partition_count(&client, &commands).await?,
        );
        if a != b || a == 0 {
            return Err(TopicSetupError::PartitionMismatch {
                events,
                commands,
                a,
                b,
            });
        }
        // Writer p snapshots into partition p: fewer snapshot partitions would mix writers.
        let snapshots = topics.snapshots(kind);
        let c = partition_count(&client, &snapshots).await?;
        if c != a {
            return Err(TopicSetupError::PartitionMismatch {
                events,
                commands: snapshots,
                a,
                b: c,
            });
        }
        partitions = a;
    }
    Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
}

/// Partitions of `topic` once metadata shows them. A freshly created topic (or a broker that
/// has just started) answers "not leader" for a moment while its partitions elect a leader:
/// such answers are retried for five seconds before they count as a failure.
async fn partition_count(
    client: &Arc<BaseConsumer>,
    topic: &str,
) -> Result<usize, TopicSetupError> {
    let mut last_error = None;
    for _ in 0..50 {
        let (client, name) = (client.clone(), topic.to_owned());
        let count = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(Some(&name), Duration::from_secs(5))
                .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        })
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)?;
        match count {
            Ok(count) if count > 0 => return Ok(count),
            Ok(_) => {}
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match last_error {
        Some(error) => Err(error.into()),
        None => Ok(0),
    }
}
