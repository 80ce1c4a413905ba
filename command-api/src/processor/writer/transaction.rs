//! The writer's transactional producer: one transactional id per (aggregate kind, partition),
//! so the broker lets exactly one writer of a partition commit: the one that called
//! `init_transactions` last. The blocking librdkafka calls run on the blocking pool, and their
//! failures are sorted by what librdkafka says they mean: fatal (fenced), abortable, or
//! retriable (the same call is made again: a commit that timed out may still complete).

use std::sync::Arc;
use std::time::Duration;

use domain::AggregateKind;
use platform::polled_producer::PolledProducer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::WriterError;
use crate::processor::{GroupContext, WriterContext};

/// Bounds each blocking transactional call (fencing, offsets, commit, abort).
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a retriable `send_offsets_to_transaction` or commit is made again before the
/// outcome is given up as unknown.
const RETRIES: usize = 3;

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
) -> Result<PolledProducer, WriterError> {
    let id = transactional_id(&ctx.kafka.topic_prefix, kind, partition);
    let producer = PolledProducer::create(&platform::kafka::transactional_producer_config(
        &ctx.kafka, &id,
    ))
    .map_err(WriterError::Kafka)?;
    let initialising = producer.clone();
    blocking(move || initialising.init_transactions(TRANSACTION_CALL_TIMEOUT))
        .await
        .map_err(WriterError::Kafka)?;
    Ok(producer)
}

/// The group's committed offset of a commands partition: every command below it was handled
/// in a committed transaction (its events and answer are in the log). Read after
/// `init_transactions`, so no earlier writer's offsets are still pending; `read_committed`
/// makes librdkafka wait for stable offsets.
pub(super) async fn committed_floor(
    group: &Arc<BaseConsumer<GroupContext>>,
    topic: &str,
    partition: i32,
) -> Result<i64, WriterError> {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let group = group.clone();
    let committed = blocking(move || group.committed_offsets(list, TRANSACTION_CALL_TIMEOUT))
        .await
        .map_err(WriterError::Kafka)?;
    Ok(committed
        .elements()
        .first()
        .and_then(|e| match e.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
        .unwrap_or(0))
}

/// Why a batch's transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub(super) enum TransactionFailure {
    /// A newer writer of the partition exists (or the producer hit another fatal error): this
    /// producer can never commit again.
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
    /// The log-order rule refused events planned on this writer's own view: the view and the
    /// log disagree, so the writer rebuilds its view from the log.
    #[error("the log-order rule refused the batch's own events")]
    Refused,
    /// The offsets or the commit were refused (group generation moved, broker trouble): the
    /// transaction must be aborted.
    #[error("the transaction could not commit")]
    Abortable(#[source] KafkaError),
    /// The commit or the abort did not finish: the transaction may or may not have committed.
    /// Only a new producer under the same id settles it (its `init_transactions` completes or
    /// aborts it), and the committed offset then tells which.
    #[error("the transaction's outcome is unknown")]
    Unknown(#[source] KafkaError),
    /// The writer could not give its model an aggregate it keeps on disk (decision 0012):
    /// nothing is decided on a view without it.
    #[error("an aggregate kept on disk could not be read back")]
    Incomplete,
}

/// Opens the batch's transaction.
pub(super) fn begin(producer: &PolledProducer) -> Result<(), TransactionFailure> {
    producer
        .begin_transaction()
        .map_err(|e| classify(producer, e, TransactionFailure::Unknown))
}

/// Adds the command offsets to the open transaction, with the group's metadata, so the broker
/// refuses them from a member of an older generation. Runs while the batch's records are sent
/// (they are independent parts of one transaction); the commit waits for it.
pub(super) async fn send_offsets(
    producer: PolledProducer,
    group: Arc<BaseConsumer<GroupContext>>,
    offsets: TopicPartitionList,
) -> Result<(), TransactionFailure> {
    if offsets.count() == 0 {
        return Ok(());
    }
    retrying(&producer, TransactionFailure::Abortable, move |p| {
        // Asked here, on the blocking pool: the group's metadata is a request served by
        // librdkafka's thread, which a runtime thread would block on. No metadata (the
        // consumer left the group) makes the batch abort, as a refused call does.
        let metadata = group.group_metadata().ok_or(KafkaError::Canceled)?;
        p.send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)
    })
    .await
}

/// Commits everything the transaction holds. Every message is acknowledged by now; librdkafka
/// may still count one in flight for a moment, and rdkafka's flush inside the commit would then
/// sleep a whole 100 ms poll, so wait for it here first.
pub(super) async fn commit(producer: &PolledProducer) -> Result<(), TransactionFailure> {
    let mut waited = 0;
    while producer.in_flight_count() > 0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += 1;
    }
    retrying(producer, TransactionFailure::Unknown, |p| {
        p.commit_transaction(TRANSACTION_CALL_TIMEOUT)
    })
    .await
}

/// Aborts the open transaction. A producer that cannot abort is fenced (fatal) or in an
/// unknown state (the abort timed out or a commit is still in flight).
pub(super) async fn abort(producer: &PolledProducer) -> Result<(), TransactionFailure> {
    if let Some((code, _)) = producer.client().fatal_error() {
        return Err(TransactionFailure::Fenced(KafkaError::MessageProduction(
            code,
        )));
    }
    let aborting = producer.clone();
    blocking(move || aborting.abort_transaction(TRANSACTION_CALL_TIMEOUT))
        .await
        .map_err(|e| classify(producer, e, TransactionFailure::Unknown))
}

/// Makes `call` and makes it again while librdkafka says it is retriable; `otherwise` names a
/// failure that is neither fatal nor abortable, or still retriable after `RETRIES`.
async fn retrying<F>(
    producer: &PolledProducer,
    otherwise: fn(KafkaError) -> TransactionFailure,
    call: F,
) -> Result<(), TransactionFailure>
where
    F: Fn(&PolledProducer) -> Result<(), KafkaError> + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (calling, call) = (producer.clone(), call.clone());
        match blocking(move || call(&calling)).await {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < RETRIES => {}
            Err(error) => return Err(classify(producer, error, otherwise)),
        }
    }
}

/// Fatal (fenced) first, then "abort and retry", then `otherwise`.
fn classify(
    producer: &PolledProducer,
    error: KafkaError,
    otherwise: fn(KafkaError) -> TransactionFailure,
) -> TransactionFailure {
    let (fatal, abortable) = match &error {
        KafkaError::Transaction(e) => (e.is_fatal(), e.txn_requires_abort()),
        _ => (false, false),
    };
    if fatal || producer.client().fatal_error().is_some() {
        TransactionFailure::Fenced(error)
    } else if abortable {
        TransactionFailure::Abortable(error)
    } else {
        otherwise(error)
    }
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|_| KafkaError::Canceled)?
}
