//! The raw request/reply baselines: what the broker sustains for the shape of a command, with no
//! service involved. A client produces a request and waits for its reply; an echo reads each
//! request and produces it back as a reply; the client's listener consumes it. That is two
//! acknowledged produces and two fetches per request (a command takes three of each plus a
//! transaction), with the same consumer settings as the services' request/response path (5 ms
//! fetch wait, `read_committed`).
//!
//! Two echoes:
//! - [`Echo::Plain`] produces each reply as soon as it read the request: the broker's ceiling.
//! - [`Echo::Transactional`] is Kafka's own exactly-once processing, the way KIP-447 describes it
//!   and Kafka Streams' `exactly_once_v2` does it: one group consumer and one transactional
//!   producer for every partition, and for each batch of requests read (everything fetched so
//!   far) one transaction holding the replies and the consumer's offsets
//!   (`send_offsets_to_transaction` with its group metadata), committed at once (no commit
//!   interval). The writers' producer settings. What a command's transaction costs the broker
//!   and librdkafka, with none of our code: the difference to the plain echo.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use platform::config::KafkaSettings;
use platform::polled_producer::PolledProducer;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::load::{self, Latency};

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// How long a client waits for its reply before counting the request as failed.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Bounds each blocking transactional call of the transactional echo (as the writers do).
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many requests in one transaction of the transactional echo.
const MAX_BATCH: usize = 5_000;

/// How requests become replies.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Echo {
    /// Each reply produced as soon as its request is read, no transaction.
    Plain,
    /// Replies and consumer offsets committed in one transaction per batch of requests.
    Transactional,
}

impl Echo {
    fn topic_infix(self) -> &'static str {
        match self {
            Self::Plain => "rt",
            Self::Transactional => "eos",
        }
    }
}

/// A running echo, its listener and the clients' producer, on topics of its own.
pub(crate) struct RoundTrip {
    requests: String,
    producer: FutureProducer,
    waiting: Waiting,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    stop: Arc<AtomicBool>,
    echo: tokio::task::JoinHandle<anyhow::Result<()>>,
    listener: tokio::task::JoinHandle<()>,
}

fn every_partition(topic: &str, partitions: i32) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    Ok(list)
}

impl RoundTrip {
    /// Creates the topics and starts the echo and the listener; returns once the echo reads.
    pub(crate) async fn start(
        kafka: &KafkaSettings,
        echo: Echo,
        payload: Vec<u8>,
        headers: OwnedHeaders,
    ) -> anyhow::Result<Self> {
        let requests = format!("{}.{}.requests", kafka.topic_prefix, echo.topic_infix());
        let replies = format!("{}.{}.replies", kafka.topic_prefix, echo.topic_infix());
        platform::kafka::ensure_topics(
            kafka,
            &[requests.clone(), replies.clone()],
            kafka.partitions,
        )
        .await?;
        let producer: FutureProducer = platform::kafka::latency_producer_config(kafka).create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let echo = match echo {
            Echo::Plain => {
                let consumer: StreamConsumer =
                    platform::kafka::latency_consumer_config(kafka, &format!("{requests}.echo"))
                        .create()?;
                consumer.assign(&every_partition(&requests, kafka.partitions)?)?;
                tokio::spawn(plain_echo(
                    consumer,
                    producer.clone(),
                    replies.clone(),
                    stop.clone(),
                ))
            }
            Echo::Transactional => {
                start_transactional_echo(kafka, &requests, &replies, stop.clone()).await?
            }
        };
        let listener: StreamConsumer =
            platform::kafka::latency_consumer_config(kafka, &format!("{replies}.client"))
                .create()?;
        listener.assign(&every_partition(&replies, kafka.partitions)?)?;
        let waiting: Waiting = Arc::default();
        let listener = tokio::spawn(listen(listener, waiting.clone(), stop.clone()));
        Ok(Self {
            requests,
            producer,
            waiting,
            payload,
            headers,
            stop,
            echo,
            listener,
        })
    }

    /// One request, answered or not within [`REPLY_WAIT`].
    fn request(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let key = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), tx);
        let record = FutureRecord::to(&self.requests)
            .key(&key)
            .payload(&self.payload)
            .headers(self.headers.clone());
        let sent = self.producer.send_result(record).is_ok();
        async move { sent && matches!(tokio::time::timeout(REPLY_WAIT, rx).await, Ok(Ok(()))) }
    }

    /// Requests answered per second with `clients` concurrent clients for `duration`.
    pub(crate) async fn closed_loop(
        self: &Arc<Self>,
        clients: usize,
        duration: Duration,
    ) -> anyhow::Result<f64> {
        let this = self.clone();
        let (per_s, _) = load::closed_loop(clients, duration, move |_, _| this.request()).await?;
        Ok(per_s)
    }

    /// Latency of requests offered at `rate` per second, after `warm_up`.
    pub(crate) async fn open_loop(
        &self,
        rate: u32,
        warm_up: Duration,
        duration: Duration,
    ) -> anyhow::Result<Latency> {
        load::open_loop(rate, warm_up, duration, |_| self.request()).await
    }

    /// Stops the echo and the listener; an echo that failed fails the run.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.listener.await?;
        self.echo.await?
    }
}

async fn plain_echo(
    echo: StreamConsumer,
    producer: FutureProducer,
    replies: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(request)) = tokio::time::timeout(Duration::from_millis(100), echo.recv()).await
        else {
            continue;
        };
        // Enqueued, not awaited: the client sees the reply only once it is acknowledged.
        let _ = producer.send_result(reply_to(&replies, &request));
    }
    Ok(())
}

fn reply_to<'a>(
    replies: &'a str,
    request: &'a BorrowedMessage<'_>,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut reply = FutureRecord::to(replies)
        .key(request.key().unwrap_or_default())
        .payload(request.payload().unwrap_or_default());
    if let Some(headers) = request.headers() {
        reply = reply.headers(headers.detach());
    }
    reply
}

async fn listen(listener: StreamConsumer, waiting: Waiting, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(100), listener.recv()).await
        else {
            continue;
        };
        let key = reply.key().map(String::from_utf8_lossy).unwrap_or_default();
        let waiter = waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key.as_ref());
        if let Some(waiter) = waiter {
            let _ = waiter.send(());
        }
    }
}

/// Starts the transactional echo on a thread of its own (its calls block) and waits until its
/// consumer has its partitions.
async fn start_transactional_echo(
    kafka: &KafkaSettings,
    requests: &str,
    replies: &str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let consumer: BaseConsumer =
        platform::kafka::latency_consumer_config(kafka, &format!("{requests}.echo")).create()?;
    consumer.subscribe(&[requests])?;
    let producer = PolledProducer::create(&platform::kafka::transactional_producer_config(
        kafka,
        &format!("{requests}.echo"),
    ))?;
    let (ready, reading) = oneshot::channel();
    let (requests, replies) = (requests.to_owned(), replies.to_owned());
    let echo = tokio::task::spawn_blocking(move || {
        let topics = (requests.as_str(), replies.as_str());
        transactional_echo(&consumer, &producer, topics, &stop, ready)
    });
    if reading.await.is_err() {
        // The echo ended before it read: its error says why.
        echo.await??;
        anyhow::bail!("the transactional echo stopped before it read");
    }
    Ok(echo)
}

fn transactional_echo(
    consumer: &BaseConsumer,
    producer: &PolledProducer,
    (requests, replies): (&str, &str),
    stop: &AtomicBool,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    producer.init_transactions(TRANSACTION_CALL_TIMEOUT)?;
    let mut ready = Some(ready);
    while !stop.load(Ordering::Relaxed) {
        let first = consumer.poll(Duration::from_millis(100)).transpose()?;
        if ready.is_some() && consumer.assignment()?.count() > 0 {
            let _ = ready.take().map(|ready| ready.send(()));
        }
        let Some(first) = first else {
            continue;
        };
        producer.begin_transaction()?;
        let mut next_offsets = HashMap::new();
        let mut deliveries = Vec::new();
        let mut request = Some(first);
        while let Some(read) = request {
            deliveries.push(producer.send_result(reply_to(replies, &read))?);
            next_offsets.insert(read.partition(), read.offset() + 1);
            request = if deliveries.len() < MAX_BATCH {
                consumer.poll(Duration::ZERO).transpose()?
            } else {
                None
            };
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in next_offsets {
            offsets.add_partition_offset(requests, partition, Offset::Offset(next))?;
        }
        let metadata = consumer.group_metadata().context("no group metadata")?;
        producer.send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)?;
        for delivery in futures::executor::block_on(futures::future::join_all(deliveries)) {
            delivery?.map_err(|(e, _)| e)?;
        }
        // librdkafka may count an acknowledged record in flight for a moment more, and the
        // flush inside rdkafka's commit would then sleep a whole 100 ms poll (as the writers).
        let waiting_since = Instant::now();
        while producer.in_flight_count() > 0 && waiting_since.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_micros(100));
        }
        producer.commit_transaction(TRANSACTION_CALL_TIMEOUT)?;
    }
    Ok(())
}
