//! The transactional echoes of the round-trip baselines: Kafka's own exactly-once processing in
//! its two shapes, with none of our code.
//!
//! - [`Shape::OneStream`], Kafka Streams' `exactly_once_v2` (KIP-447): one transactional
//!   producer for all partitions; each batch of requests read (everything fetched so far) is
//!   one transaction.
//! - [`Shape::PerPartition`]: a transactional producer per input partition (as in Kafka Streams'
//!   first `exactly_once`, KIP-129, which ran a thread's tasks one after another), each running
//!   its own transactions on its own thread, fed by the one group consumer. This is the shape
//!   of our writers (a transactional id per partition, each writer a task of its own, decision
//!   0002), so the difference between the two shapes is what per-partition fencing costs in
//!   Kafka's own terms.
//!
//! Either way a transaction holds the replies and the consumer's offsets
//! (`send_offsets_to_transaction` with the group's metadata) and is committed as soon as its
//! replies are produced (no commit interval), with the writers' producer settings, and
//! librdkafka as it comes: unlike our writers, an echo does not wait for its last commit's
//! marker before its next transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use platform::config::KafkaSettings;
use platform::polled_producer::PolledProducer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

/// Bounds each blocking transactional call (as the writers do).
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many requests in one transaction.
const MAX_BATCH: usize = 5_000;
/// How long an echo may take to join its group and get its partitions.
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// How long an idle poll lasts before the echo looks whether it should stop.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How the echo's transactions are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One producer, one transaction stream for all partitions.
    OneStream,
    /// A producer and a transaction stream per partition.
    PerPartition,
}

/// The reply to `request` on `replies`: its key, payload and headers.
pub(crate) fn reply_to<'a, M: Message>(
    replies: &'a str,
    request: &'a M,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut reply = FutureRecord::to(replies)
        .key(request.key().unwrap_or_default())
        .payload(request.payload().unwrap_or_default());
    if let Some(headers) = request.headers() {
        let mut owned = OwnedHeaders::new_with_capacity(headers.count());
        for header in headers.iter() {
            owned = owned.insert(header);
        }
        reply = reply.headers(owned);
    }
    reply
}

/// Starts the echo on threads of its own (its calls block) and waits until its consumer has
/// its partitions. The echo runs until `stop` is set, or fails with the call that failed.
pub(crate) async fn start(
    kafka: &KafkaSettings,
    shape: Shape,
    (requests, replies): (&str, &str),
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let group = format!("{requests}.echo");
    let consumer: BaseConsumer =
        platform::kafka::latency_consumer_config(kafka, &group).create()?;
    consumer.subscribe(&[requests])?;
    let producer = |id: String| {
        PolledProducer::create(&platform::kafka::transactional_producer_config(kafka, &id))
    };
    let producers = match shape {
        Shape::OneStream => vec![producer(group.clone())?],
        Shape::PerPartition => (0..kafka.partitions)
            .map(|partition| producer(format!("{group}.{partition}")))
            .collect::<Result<_, _>>()?,
    };
    let (ready, reading) = oneshot::channel();
    let topics = (requests.to_owned(), replies.to_owned());
    let echo_stop = stop.clone();
    let echo = tokio::task::spawn_blocking(move || {
        let shared = Shared {
            consumer: &consumer,
            requests: &topics.0,
            replies: &topics.1,
            stop: &echo_stop,
        };
        match (shape, producers.as_slice()) {
            (Shape::OneStream, [producer]) => shared.one_stream(producer, ready),
            (_, producers) => shared.per_partition(producers, ready),
        }
    });
    match tokio::time::timeout(JOIN_WAIT, reading).await {
        Ok(Ok(())) => Ok(echo),
        Ok(Err(_)) => {
            // The echo ended before it read: its error says why.
            echo.await??;
            anyhow::bail!("the transactional echo stopped before it read")
        }
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            anyhow::bail!("the transactional echo got no partitions within {JOIN_WAIT:?}")
        }
    }
}

/// What every thread of an echo shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    consumer: &'a BaseConsumer,
    requests: &'a str,
    replies: &'a str,
    stop: &'a AtomicBool,
}

impl Shared<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The next request read, if one comes within `timeout`. An error event (a broker
    /// connection lost, say) is librdkafka's to recover from and does not end the echo (the
    /// transactional calls, an unreadable assignment or a request from an unknown partition
    /// do). Tells `ready` once the group has given the consumer its partitions.
    fn poll(
        &self,
        timeout: Duration,
        ready: &mut Option<oneshot::Sender<()>>,
    ) -> anyhow::Result<Option<rdkafka::message::BorrowedMessage<'_>>> {
        let read = self.consumer.poll(timeout).and_then(Result::ok);
        if ready.is_some() && self.consumer.assignment()?.count() > 0 {
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
        }
        Ok(read)
    }

    /// One transaction stream: each batch of what was read is one transaction.
    fn one_stream(
        &self,
        producer: &PolledProducer,
        ready: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        init(producer)?;
        let mut ready = Some(ready);
        while !self.stopped() {
            let Some(first) = self.poll(IDLE_POLL, &mut ready)? else {
                continue;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.poll(Duration::ZERO, &mut ready)? {
                    Some(read) => batch.push(read),
                    None => break,
                }
            }
            self.transaction(producer, &batch)?;
        }
        Ok(())
    }

    /// A transaction stream per partition, each on its own thread, fed by this one (which polls
    /// the group, as our writers' dispatcher does). Every producer is initialised before the
    /// echo says it reads, as in [`Self::one_stream`].
    fn per_partition(
        &self,
        producers: &[PolledProducer],
        ready: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        for producer in producers {
            init(producer)?;
        }
        std::thread::scope(|scope| {
            let mut feeds = Vec::with_capacity(producers.len());
            let mut streams = Vec::with_capacity(producers.len());
            for producer in producers {
                let (feed, requests) = mpsc::channel::<OwnedMessage>();
                feeds.push(feed);
                streams.push(scope.spawn(move || self.partition_stream(producer, &requests)));
            }
            let dispatched = self.dispatch(&feeds, &streams, ready);
            // Whatever ended the dispatch, every stream stops and is joined, and each error is
            // reported: the dispatch's first, then the streams'.
            self.stop.store(true, Ordering::Relaxed);
            drop(feeds);
            let mut ended = dispatched;
            for stream in streams {
                let stream_ended = stream
                    .join()
                    .map_err(|_| anyhow::anyhow!("a partition's echo panicked"))
                    .and_then(|ended| ended);
                ended = ended.and(stream_ended);
            }
            ended
        })
    }

    /// Hands each request read to its partition's stream until the echo stops or a stream
    /// ended (failed).
    fn dispatch<T>(
        &self,
        feeds: &[mpsc::Sender<OwnedMessage>],
        streams: &[std::thread::ScopedJoinHandle<'_, T>],
        ready: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        let mut ready = Some(ready);
        while !self.stopped() && !streams.iter().any(|s| s.is_finished()) {
            let Some(read) = self.poll(IDLE_POLL, &mut ready)? else {
                continue;
            };
            let feed = usize::try_from(read.partition())
                .ok()
                .and_then(|partition| feeds.get(partition))
                .context("a request from a partition the echo has no stream for")?;
            if feed.send(read.detach()).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// One partition's transaction stream: each batch of what its feed holds is one
    /// transaction.
    fn partition_stream(
        &self,
        producer: &PolledProducer,
        feed: &mpsc::Receiver<OwnedMessage>,
    ) -> anyhow::Result<()> {
        while !self.stopped() {
            let first = match feed.recv_timeout(IDLE_POLL) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            batch.extend(feed.try_iter().take(MAX_BATCH - 1));
            self.transaction(producer, &batch)?;
        }
        Ok(())
    }

    /// The replies to `batch` and the offsets past it, in one committed transaction.
    fn transaction<M: Message>(
        &self,
        producer: &PolledProducer,
        batch: &[M],
    ) -> anyhow::Result<()> {
        producer
            .begin_transaction()
            .context("the transactional echo's begin_transaction")?;
        let mut next_offsets = HashMap::new();
        let mut deliveries = Vec::with_capacity(batch.len());
        for request in batch {
            deliveries.push(
                producer
                    .send_result(reply_to(self.replies, request))
                    .context("a reply of the transactional echo")?,
            );
            next_offsets.insert(request.partition(), request.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in next_offsets {
            offsets.add_partition_offset(self.requests, partition, Offset::Offset(next))?;
        }
        let metadata = self
            .consumer
            .group_metadata()
            .context("no group metadata")?;
        producer
            .send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)
            .context("the transactional echo's send_offsets_to_transaction")?;
        for delivery in futures::executor::block_on(futures::future::join_all(deliveries)) {
            delivery?
                .map_err(|(e, _)| e)
                .context("a reply of the transactional echo")?;
        }
        // librdkafka may count an acknowledged record in flight for a moment more, and the
        // flush inside rdkafka's commit would then sleep a whole 100 ms poll (as the writers).
        let waiting_since = Instant::now();
        while producer.in_flight_count() > 0 && waiting_since.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_micros(100));
        }
        producer
            .commit_transaction(TRANSACTION_CALL_TIMEOUT)
            .context("the transactional echo's commit_transaction")
    }
}

fn init(producer: &PolledProducer) -> anyhow::Result<()> {
    producer
        .init_transactions(TRANSACTION_CALL_TIMEOUT)
        .context("the transactional echo's init_transactions")
}
