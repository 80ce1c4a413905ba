//! A producer whose delivery reports complete futures, like rdkafka's `FutureProducer`, but
//! without its idle cost.
//!
//! `FutureProducer` serves its delivery reports from a thread that calls `poll(100 ms)` in a
//! loop, and rdkafka 0.39's poll runs until its deadline, handing librdkafka the time left in
//! whole milliseconds: once less than a millisecond is left it asks for 0 ms, again and again,
//! until the deadline passes. So the last millisecond of every 100 ms window is a busy loop,
//! about half a percent of a core per producer, idle or not. Command-api holds one
//! transactional producer per partition and aggregate kind (30 with the defaults): an idle
//! command-api burned a quarter of a core in those loops, and under load the spinning threads
//! took CPU from the write path on a two-core machine.
//!
//! [`PolledProducer`] polls in one-second windows instead (the same loop, a thousandth of the
//! time), and its thread ends within a window once the last handle is dropped. Delivery reports
//! wake the poll as they arrive, so the window length costs no latency.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

/// How long one poll of the delivery reports lasts before the thread looks whether it should
/// stop: also how long a dropped producer lives on.
const POLL_WINDOW: Duration = Duration::from_secs(1);

/// Completes each record's future with its delivery report.
#[derive(Debug)]
pub struct DeliveryReports;

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // The caller may have stopped waiting: nothing to tell then.
        let _ = reply.send(owned);
    }
}

/// Resolves to the record's delivery report (`Err(Canceled)` if the producer went away first),
/// as rdkafka's `DeliveryFuture` does.
pub type DeliveryFuture = oneshot::Receiver<OwnedDeliveryResult>;

/// A producer whose records' delivery reports complete futures, served by one thread that polls
/// in [`POLL_WINDOW`]s. Cheap to clone; the thread stops once every clone is dropped.
/// Dereferences to the [`BaseProducer`], so the transactional calls of
/// [`rdkafka::producer::Producer`] are made on it directly.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // librdkafka's handle has nothing to show
pub struct PolledProducer {
    handle: Arc<Handle>,
}

/// The producer and the flag its thread stops on, raised when the last clone goes.
struct Handle {
    producer: Arc<BaseProducer<DeliveryReports>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl PolledProducer {
    /// Creates the producer and starts the thread serving its delivery reports.
    pub fn create(config: &ClientConfig) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(
            config,
            DeliveryReports,
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopping) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("delivery reports".to_owned())
            .spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    polled.poll(POLL_WINDOW);
                }
            })
            .map_err(|_| KafkaError::Canceled)?;
        Ok(Self {
            handle: Arc::new(Handle { producer, stop }),
        })
    }

    /// Queues `record`; the future resolves once the broker acknowledged it (or it failed).
    /// Fails at once when librdkafka refuses to queue it (queue full, unknown partition, a
    /// fatal producer error).
    pub fn send_result<K, P>(&self, record: FutureRecord<'_, K, P>) -> KafkaResult<DeliveryFuture>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (reply, delivered) = oneshot::channel();
        let mut base = BaseRecord::with_opaque_to(record.topic, Box::new(reply));
        base.partition = record.partition;
        base.payload = record.payload;
        base.key = record.key;
        base.timestamp = record.timestamp;
        base.headers = record.headers;
        self.handle
            .producer
            .send(base)
            .map(|()| delivered)
            .map_err(|(error, _)| error)
    }
}

impl Deref for PolledProducer {
    type Target = BaseProducer<DeliveryReports>;

    fn deref(&self) -> &Self::Target {
        &self.handle.producer
    }
}
