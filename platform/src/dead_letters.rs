//! Dead-letter topics: `<topic>.dlq` keeps the original key, value and headers, plus headers
//! naming the source topic, partition, offset, the error and the attempt count.

use std::time::Duration;

use crate::topics::Topics;
use futures::future::try_join_all;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub mod names {
    pub const SOURCE_TOPIC: &str = "dlq-source-topic";
    pub const SOURCE_PARTITION: &str = "dlq-source-partition";
    pub const SOURCE_OFFSET: &str = "dlq-source-offset";
    pub const ERROR: &str = "dlq-error";
    pub const ATTEMPTS: &str = "dlq-attempts";
    /// The consumer that gave up on the record (a projection, or `saga-orchestrator`).
    pub const PROJECTION: &str = "dlq-projection";
    pub const AT: &str = "dlq-at";
}

/// One record on its way to a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub original_headers: Vec<(String, Option<Vec<u8>>)>,
    pub error: String,
    pub attempts: u32,
}

impl DeadLetter {
    pub fn from_message(topic: &str, message: &OwnedMessage, error: String, attempts: u32) -> Self {
        let original_headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            source_topic: topic.to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            original_headers,
            error,
            attempts,
        }
    }
}

/// Publishes dead letters and waits for Kafka to acknowledge them.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    projection: &'static str,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("projection", &self.projection)
            .finish()
    }
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, projection: &'static str) -> Self {
        crate::kafka::register_producer("dead-letters");
        Self {
            producer,
            projection,
        }
    }

    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), rdkafka::error::KafkaError> {
        let at = chrono::Utc::now().to_rfc3339();
        let sends = letters.iter().map(|letter| {
            let topic = Topics::dead_letters(&letter.source_topic);
            let mut headers = OwnedHeaders::new_with_capacity(letter.original_headers.len() + 7);
            for (key, value) in &letter.original_headers {
                headers = headers.insert(Header {
                    key: key.as_str(),
                    value: value.as_deref(),
                });
            }
            let (partition, offset, attempts) = (
                letter.source_partition.to_string(),
                letter.source_offset.to_string(),
                letter.attempts.to_string(),
            );
            for (key, value) in [
                (names::SOURCE_TOPIC, letter.source_topic.as_str()),
                (names::SOURCE_PARTITION, partition.as_str()),
                (names::SOURCE_OFFSET, offset.as_str()),
                (names::ERROR, letter.error.as_str()),
                (names::ATTEMPTS, attempts.as_str()),
                (names::PROJECTION, self.projection),
                (names::AT, at.as_str()),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let producer = self.producer.clone();
            async move {
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&topic).headers(headers);
                if let Some(key) = &letter.key {
                    record = record.key(key.as_slice());
                }
                if let Some(payload) = &letter.payload {
                    record = record.payload(payload.as_slice());
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(error, _)| error)
            }
        });
        try_join_all(sends).await.map(|_| ()).inspect_err(|_| {
            crate::kafka::count_producer_error("dead-letters");
        })
    }
}
