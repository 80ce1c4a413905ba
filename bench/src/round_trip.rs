//! The raw request/reply baselines: what the broker sustains for the shape of a command, with no
//! service involved. A client produces a request and waits for its reply; an echo reads each
//! request and produces it back as a reply; the client's listener consumes it. That is two
//! acknowledged produces and two fetches per request (a command takes three of each plus a
//! transaction), with the same consumer settings as the services' request/response path (5 ms
//! fetch wait, `read_committed`).
//!
//! Three echoes:
//! - [`Echo::Plain`] produces each reply as soon as it read the request: the broker's ceiling.
//! - [`Echo::Transactional`] and [`Echo::TransactionalPerPartition`] are Kafka's own
//!   exactly-once processing (a transaction per batch with the replies and the consumer's
//!   offsets), in one transaction stream for all partitions and in one per partition
//!   (`transactional_echo`): what a transaction per batch costs the broker and librdkafka, with
//!   none of our code; the difference to the plain echo.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use platform::config::KafkaSettings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::load::{self, Latency};
use crate::report::RoundTripFigures;
use crate::transactional_echo::{self, reply_to, Shape};
use crate::Plan;

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// How long a client waits for its reply before counting the request as failed.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// A baseline: throughput under `clients` closed-loop clients for the plan's throughput
/// length, then latency at the command latency measure's rate, warm-up and length, on fresh
/// topics (as the command latency measure has: not the logs the throughput run grew).
pub(crate) async fn measure(
    kafka: &KafkaSettings,
    echo: Echo,
    plan: &Plan,
    clients: usize,
    (payload, headers): (Vec<u8>, OwnedHeaders),
) -> anyhow::Result<RoundTripFigures> {
    let start = |run| RoundTrip::start(kafka, echo, run, payload.clone(), headers.clone());
    let throughput = Arc::new(start("throughput").await?);
    let (per_s, failures) = throughput.closed_loop(clients, plan.throughput_for).await?;
    finish(throughput).await?;
    let latency_run = Arc::new(start("latency").await?);
    let latency = latency_run
        .open_loop(plan.latency_rate, plan.latency_warm_up, plan.latency_for)
        .await?;
    finish(latency_run).await?;
    Ok(RoundTripFigures {
        per_s,
        failures,
        latency: Some(latency),
    })
}

/// Stops a run's echo and listener; an echo that failed fails the run.
async fn finish(run: Arc<RoundTrip>) -> anyhow::Result<()> {
    Arc::into_inner(run)
        .context("a request of the round trip outlived its run")?
        .stop()
        .await
}

/// How requests become replies.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Echo {
    /// Each reply produced as soon as its request is read, no transaction.
    Plain,
    /// Replies and consumer offsets committed in one transaction per batch of requests, one
    /// transaction stream for all partitions.
    Transactional,
    /// The same with a transaction stream per partition.
    TransactionalPerPartition,
}

impl Echo {
    fn topic_infix(self) -> &'static str {
        match self {
            Self::Plain => "rt",
            Self::Transactional => "eos",
            Self::TransactionalPerPartition => "eos-pp",
        }
    }
}

/// A running echo, its listener and the clients' producer, on topics of its own. Dropped
/// without [`RoundTrip::stop`] (a run that failed), it still tells both to stop: the
/// transactional echo's blocking thread would otherwise keep the process from exiting.
pub(crate) struct RoundTrip {
    requests: String,
    producer: FutureProducer,
    waiting: Waiting,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    stop: Arc<AtomicBool>,
    echo: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RoundTrip {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn every_partition(topic: &str, partitions: i32) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    Ok(list)
}

impl RoundTrip {
    /// Creates the topics of `run` and starts the echo and the listener; returns once the
    /// echo reads.
    async fn start(
        kafka: &KafkaSettings,
        echo: Echo,
        run: &str,
        payload: Vec<u8>,
        headers: OwnedHeaders,
    ) -> anyhow::Result<Self> {
        let topic = |what| format!("{}.{}.{run}.{what}", kafka.topic_prefix, echo.topic_infix());
        let (requests, replies) = (topic("requests"), topic("replies"));
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
                let topics = (requests.as_str(), replies.as_str());
                transactional_echo::start(kafka, Shape::OneStream, topics, stop.clone()).await?
            }
            Echo::TransactionalPerPartition => {
                let topics = (requests.as_str(), replies.as_str());
                transactional_echo::start(kafka, Shape::PerPartition, topics, stop.clone()).await?
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
            echo: Some(echo),
            listener: Some(listener),
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
        let waiting = self.waiting.clone();
        async move {
            let answered = sent && matches!(tokio::time::timeout(REPLY_WAIT, rx).await, Ok(Ok(())));
            if !answered {
                waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key);
            }
            answered
        }
    }

    /// Requests answered per second with `clients` concurrent clients for `duration`, and the
    /// requests not answered.
    async fn closed_loop(
        self: &Arc<Self>,
        clients: usize,
        duration: Duration,
    ) -> anyhow::Result<(f64, usize)> {
        let this = self.clone();
        load::closed_loop(clients, duration, move |_, _| this.request()).await
    }

    /// Latency of requests offered at `rate` per second, after `warm_up`.
    async fn open_loop(
        &self,
        rate: u32,
        warm_up: Duration,
        duration: Duration,
    ) -> anyhow::Result<Latency> {
        load::open_loop(rate, warm_up, duration, |_| self.request()).await
    }

    /// Stops the echo and the listener; an echo that failed fails the run.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(listener) = self.listener.take() {
            listener.await?;
        }
        match self.echo.take() {
            Some(echo) => echo.await?,
            None => Ok(()),
        }
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
