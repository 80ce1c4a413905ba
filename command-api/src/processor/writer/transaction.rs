//! The writer's transactional producer: one transactional id per (aggregate kind, partition),
//! so the broker lets exactly one writer of a partition commit: the one that called
//! `init_transactions` last. The blocking librdkafka calls run on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use domain::AggregateKind;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use super::WriterError;
use crate::processor::WriterContext;

/// Bounds each blocking transactional call (fencing, offsets, commit, abort).
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The transactional id of a partition's writer. It depends on the topic prefix (the
/// deployment) and the partition only, never on the process or the consumer group, so every
/// writer that could ever append to the partition shares it and fences the ones before it.
pub(super) fn transactional_id(prefix: &str, kind: AggregateKind, partition: i32) -> String {
    format!("{prefix}.writer.{}.{partition}", kind.as_str())
}

/// A producer that has fenced every earlier writer of the partition: the broker has aborted
/// (or finished committing) their open transaction and refuses their later sends and commits.
pub(super) async fn fence_earlier_writers(
    ctx: &WriterContext,
    kind: AggregateKind,
    partition: i32,
) -> Result<FutureProducer, WriterError> {
    let id = transactional_id(&ctx.kafka.topic_prefix, kind, partition);
    let producer: FutureProducer = platform::kafka::transactional_producer_config(&ctx.kafka, &id)
        .create()
        .map_err(WriterError::Kafka)?;
    let initialising = producer.clone();
    blocking(move || initialising.init_transactions(TRANSACTION_CALL_TIMEOUT))
        .await
        .map_err(WriterError::Kafka)?;
    Ok(producer)
}

/// Why a batch's transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub(super) enum TransactionFailure {
    /// A newer writer of the partition exists (or the producer hit another fatal error): this
    /// writer can never commit again.
    #[error("fenced by a newer writer of the partition")]
    Fenced(#[source] KafkaError),
    /// The broker did not acknowledge every event: aborted, nothing of the batch counts.
    #[error("the broker did not acknowledge every event")]
    NotAcknowledged,
    /// Records this writer had not read lie before or between its events (another producer
    /// wrote to the partition): aborted, so the log never holds an answer judged on a stale
    /// view.
    #[error("another producer appended to the partition")]
    Interleaved,
    /// The offsets or the commit failed (group generation moved, broker trouble): aborted.
    #[error("the transaction could not commit")]
    Commit(#[source] KafkaError),
}

/// Opens the batch's transaction.
pub(super) fn begin(producer: &FutureProducer) -> Result<(), TransactionFailure> {
    producer
        .begin_transaction()
        .map_err(|e| classify(producer, e))
}

/// Adds the command offsets (with the group's metadata, so the broker refuses them from a
/// member of an older generation) and commits everything the transaction holds.
pub(super) async fn commit(
    producer: &FutureProducer,
    group: &Arc<rdkafka::consumer::BaseConsumer<crate::processor::GroupContext>>,
    offsets: TopicPartitionList,
) -> Result<(), TransactionFailure> {
    let Some(metadata) = group.group_metadata() else {
        return Err(TransactionFailure::Commit(KafkaError::Canceled));
    };
    let committing = producer.clone();
    blocking(move || {
        committing.send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)?;
        committing.commit_transaction(TRANSACTION_CALL_TIMEOUT)
    })
    .await
    .map_err(|e| classify(producer, e))
}

/// Aborts the open transaction; a producer that cannot abort is treated as fenced.
pub(super) async fn abort(producer: &FutureProducer) -> Result<(), TransactionFailure> {
    let aborting = producer.clone();
    blocking(move || aborting.abort_transaction(TRANSACTION_CALL_TIMEOUT))
        .await
        .map_err(TransactionFailure::Fenced)
}

/// A fatal producer (fenced, or the broker lost its epoch) can never commit again; anything
/// else aborts and retries.
pub(super) fn classify(producer: &FutureProducer, error: KafkaError) -> TransactionFailure {
    let fatal = matches!(&error, KafkaError::Transaction(e) if e.is_fatal())
        || producer.client().fatal_error().is_some();
    if fatal {
        TransactionFailure::Fenced(error)
    } else {
        TransactionFailure::Commit(error)
    }
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|_| KafkaError::Canceled)?
}
