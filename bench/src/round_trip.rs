//! The raw request/reply baseline: what the broker sustains for the shape of a command, with no
//! service involved. A client produces a request and waits for its reply; an echo consumer
//! reads each request and produces it back as a reply; the client's listener consumes it. That
//! is two acknowledged produces and two fetches per request (a command takes three of each plus
//! an offset commit), with the same consumer settings as the services' request/response path
//! (5 ms fetch wait) and the same number of concurrent clients as the command phase.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use platform::config::KafkaSettings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

fn every_partition(topic: &str, partitions: i32) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    Ok(list)
}

/// Requests answered per second with `clients` concurrent clients for `duration`.
pub(crate) async fn raw_round_trip(
    kafka: &KafkaSettings,
    clients: usize,
    duration: Duration,
    payload: Vec<u8>,
    headers: OwnedHeaders,
) -> anyhow::Result<f64> {
    let requests = format!("{}.rt.requests", kafka.topic_prefix);
    let replies = format!("{}.rt.replies", kafka.topic_prefix);
    platform::kafka::ensure_topics(
        kafka,
        &[requests.clone(), replies.clone()],
        kafka.partitions,
    )
    .await?;
    let producer: FutureProducer = platform::kafka::latency_producer_config(kafka).create()?;
    let echo: StreamConsumer =
        platform::kafka::latency_consumer_config(kafka, &format!("{requests}.echo")).create()?;
    echo.assign(&every_partition(&requests, kafka.partitions)?)?;
    let listener: StreamConsumer =
        platform::kafka::latency_consumer_config(kafka, &format!("{replies}.client")).create()?;
    listener.assign(&every_partition(&replies, kafka.partitions)?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let waiting: Waiting = Arc::default();

    let echo_task = {
        let (producer, stop, replies) = (producer.clone(), stop.clone(), replies.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(request)) =
                    tokio::time::timeout(Duration::from_millis(100), echo.recv()).await
                else {
                    continue;
                };
                let mut reply = FutureRecord::to(&replies)
                    .key(request.key().unwrap_or_default())
                    .payload(request.payload().unwrap_or_default());
                if let Some(headers) = request.headers() {
                    reply = reply.headers(headers.detach());
                }
                // Enqueued, not awaited: the client sees the reply only once it is acknowledged.
                let _ = producer.send_result(reply);
            }
        })
    };
    let listener_task = {
        let (stop, waiting) = (stop.clone(), waiting.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(reply)) =
                    tokio::time::timeout(Duration::from_millis(100), listener.recv()).await
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
        })
    };

    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (producer, waiting, answered) = (producer.clone(), waiting.clone(), answered.clone());
        let (requests, payload, headers) = (requests.clone(), payload.clone(), headers.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < duration {
                let key = uuid::Uuid::new_v4().to_string();
                let (tx, rx) = oneshot::channel();
                waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone(), tx);
                let request = FutureRecord::to(&requests)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers.clone());
                if producer.send_result(request).is_err() {
                    continue;
                }
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), rx).await {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let per_s = answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    echo_task.await?;
    listener_task.await?;
    Ok(per_s)
}
