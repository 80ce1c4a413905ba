//! Kafka client settings shared by every service, and topic creation.
//!
//! Producers: `acks=all` and idempotence (an event exists once every in-sync replica has it, and
//! a retried batch is never written twice), murmur2 partitioning (the Java client's choice).
//! Consumers: no auto commit and no automatic offset store: a consumer stores an offset only
//! once the effect of that record is durable.

use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

pub use crate::topic_setup::{ensure_topics, KafkaSetupError};

/// What every client of ours starts from: the brokers, and no KIP-714 metrics push. librdkafka
/// pushes client metrics to brokers that ask for them by default, and for that keeps latency
/// histograms for every broker connection (a few hundred KiB each, whether or not the broker
/// ever asks): a command-api process with a writer per partition held about 11 MiB of them.
/// Our metrics are our own (`/metrics`), so none are pushed.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.metrics.push", "false");
    config
}

/// Settings for an idempotent producer that waits for all in-sync replicas.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(&settings.brokers);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "10000")
        .set("socket.keepalive.enable", "true");
    config
}

/// Settings for a group consumer that commits only offsets it stored itself.
pub fn consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = client_config(&settings.brokers);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Never see records of an aborted or still-open transaction (librdkafka's default,
        // stated because the write path's answers rely on it).
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("partition.assignment.strategy", "range,roundrobin")
        // Prefetched records per partition: librdkafka's defaults (64 MiB of payloads, and
        // 100,000 records, whose headers and bookkeeping are not counted in the 64 MiB) are
        // held for every partition of every consumer of a service. 16 MiB and 10,000 records
        // still hold two of the largest batches (a rebuild's 5,000 events); see
        // [`one_partition_prefetch`] for why the count matters and the backoff with it.
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "10000")
        .set("fetch.queue.backoff.ms", "10")
        // Statistics carry each partition's lag; contexts publish it (see [`publish_lag`]).
        .set("statistics.interval.ms", "5000");
    config
}

/// Bounds what a consumer of one partition (a writer's or saga worker's tail, a log-end reader)
/// prefetches to about `records` records: a service runs dozens of these at once during a
/// takeover.
///
/// librdkafka stops fetching a partition when its queue holds `queued.min.messages` records
/// (default 100,000) or `queued.max.messages.kbytes` of *payload*. Keys, headers, the
/// per-record bookkeeping and the fetch buffers the records point into are not counted, and our
/// events are mostly envelope headers around a small payload: with only the byte limit, each
/// replaying tail held hundreds of thousands of records (a heap profile of a 1,000,000-event
/// takeover showed 350 MiB in fetch buffers and queued records). So the count is bounded too,
/// and a full queue is looked at again after 10 ms instead of librdkafka's 1 s, or the reader
/// would wait most of that second for its next records. A fetch response is held whole until
/// its last record is consumed, so a response is bounded too (256 bytes a record, about one
/// envelope's headers; the broker still returns a larger first batch whole): at librdkafka's
/// 1 MiB a partition, twelve replaying writers' tails held 19 MiB of fetch buffers.
pub fn one_partition_prefetch(config: &mut ClientConfig, records: u32) -> &mut ClientConfig {
    config
        .set("queued.min.messages", records.to_string())
        .set("queued.max.messages.kbytes", records.to_string())
        .set("fetch.message.max.bytes", (records * 256).to_string())
        .set("fetch.queue.backoff.ms", "10")
}

/// Publishes every partition's consumer lag from librdkafka's statistics as the gauge
/// `kafka_consumer_lag{consumer, topic, partition}`: the log end minus the committed offset
/// for group consumers, minus the position handed to the application for consumers that
/// assign partitions themselves (writers, saga workers) and commit elsewhere.
pub fn publish_lag(consumer: &'static str, statistics: &rdkafka::Statistics) {
    for (topic, stats) in &statistics.topics {
        for (partition, p) in &stats.partitions {
            if *partition < 0 || p.hi_offset < 0 {
                continue;
            }
            let lag = if p.consumer_lag >= 0 {
                p.consumer_lag
            } else if p.app_offset >= 0 {
                (p.hi_offset - p.app_offset).max(0)
            } else {
                continue;
            };
            metrics::gauge!("kafka_consumer_lag", "consumer" => consumer, "topic" => topic.clone(), "partition" => partition.to_string())
                .set(lag as f64);
        }
    }
}

/// A client context that only publishes consumer lag, for consumers needing nothing else.
#[derive(Debug, Clone, Copy)]
pub struct LagContext {
    /// The `consumer` label: which part of which service reads.
    pub consumer: &'static str,
}

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        publish_lag(self.consumer, &statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}

/// Counts a record the broker did not take (`kafka_producer_errors_total{producer}`).
pub fn count_producer_error(producer: &'static str) {
    metrics::counter!("kafka_producer_errors_total", "producer" => producer).increment(1);
}

/// Shows `kafka_producer_errors_total{producer}` at 0 from the start, so alerts and dashboards
/// see the series before the first error.
pub fn register_producer(producer: &'static str) {
    let _ = crate::telemetry::metrics_handle();
    metrics::counter!("kafka_producer_errors_total", "producer" => producer).increment(0);
}

/// A group consumer on a request/response path (commands, a writer reading its own events back,
/// replies, the saga): an empty fetch returns after 5 ms instead of librdkafka's 500, so a
/// record that arrives just after a fetch went out waits milliseconds, not half a second.
/// Costs idle fetch requests; keep it off bulk consumers.
pub fn latency_consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = consumer_config(settings, group_id);
    config.set("fetch.wait.max.ms", "5");
    config
}

/// A producer on a request/response path (the command bus, a writer's transactions): records
/// go out as soon as they are queued (`linger.ms` 0) instead of waiting 2 ms for more. A
/// request waits for each hop, so every millisecond of linger is a millisecond of latency; under
/// load librdkafka still batches what queues up while a request is in flight.
pub fn latency_producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = producer_config(settings);
    config.set("linger.ms", "0");
    config
}

/// Settings for a transactional producer: `transactional.id` names the one logical writer it
/// stands for, so a newer instance initialising the same id fences every older one (their open
/// transaction is aborted, their later sends and commits refused). A transaction left open by a
/// crashed writer blocks `read_committed` readers of its partitions until a successor fences it
/// or `transaction.timeout.ms` passes; 30 s bounds that wait and stays above the longest batch
/// (each transactional call is bounded at 10 s), so the coordinator never aborts a live one.
///
/// A refused request is tried again after 5 ms, doubling up to librdkafka's 1 s cap, instead of
/// after 100 ms: the coordinator refuses `AddOffsetsToTxn` (`CONCURRENT_TRANSACTIONS`) for the
/// few milliseconds between the previous commit's marker reaching the events partition, which
/// the next batch waits for, and the transaction being completed, and each such refusal held a
/// batch about 100 ms (about 1% of batches at 1,000 commands/s: the whole p99).
/// `AddPartitionsToTxn`'s own retry is a fixed 20 ms in librdkafka.
pub fn transactional_producer_config(
    settings: &KafkaSettings,
    transactional_id: &str,
) -> ClientConfig {
    let mut config = latency_producer_config(settings);
    config
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "30000")
        .set("retry.backoff.ms", TRANSACTIONAL_RETRY_BACKOFF_MS);
    config
}

/// The first backoff of a transactional producer's refused request (see
/// [`transactional_producer_config`]).
const TRANSACTIONAL_RETRY_BACKOFF_MS: &str = "5";
