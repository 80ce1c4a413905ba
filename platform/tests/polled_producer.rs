//! `platform::polled_producer` against the running broker: in a transaction, each record's
//! future resolves to where the broker put it, and the thread serving the delivery reports
//! ends once the last handle is dropped (a writer that stops leaves no thread behind; command-api
//! starts one per partition and aggregate kind on every takeover).

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use platform::kafka::transactional_producer_config;
use platform::polled_producer::PolledProducer;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use test_harness::TestKafka;

/// The thread name as Linux keeps it (15 bytes of "delivery reports").
const THREAD: &str = "delivery report";

/// Tests that count threads must not overlap with one that starts a producer.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn delivery_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("this process's threads")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == THREAD)
        })
        .count()
}

fn producer(kafka: &TestKafka, id: &str) -> PolledProducer {
    let producer = PolledProducer::create(&transactional_producer_config(
        &kafka.settings,
        &kafka.group(id),
    ))
    .expect("create the producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    producer
}

#[tokio::test]
async fn each_record_of_a_transaction_resolves_to_where_the_broker_put_it() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("polled", 1).await;
    let producer = producer(&kafka, "polled-writer");

    producer.begin_transaction().expect("begin");
    let deliveries: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|value| {
            producer
                .send_result(
                    FutureRecord::to(&topic)
                        .partition(0)
                        .key("k")
                        .payload(*value),
                )
                .expect("queued")
        })
        .collect();
    let mut offsets = Vec::new();
    for delivery in deliveries {
        let delivered = delivery
            .await
            .expect("the producer is alive")
            .expect("delivered");
        offsets.push(delivered.offset);
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    assert_eq!(offsets, vec![0, 1, 2], "in order, from the start");

    let reader = kafka.consumer(&kafka.group("polled-reader"), &[]);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&assignment).unwrap();
    let mut read = Vec::new();
    while read.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("the committed records arrive")
            .expect("a record");
        read.push((message.offset(), message.payload().map(<[u8]>::to_vec)));
    }
    assert_eq!(
        read,
        vec![
            (0, Some(b"a".to_vec())),
            (1, Some(b"b".to_vec())),
            (2, Some(b"c".to_vec()))
        ],
        "a reader finds exactly what the futures reported, where they reported it"
    );
}

#[tokio::test]
async fn the_delivery_thread_ends_once_every_handle_is_dropped() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let kafka = TestKafka::new();
    // Only this binary's tests start these threads, one test at a time: once those of an
    // earlier test have ended (a poll window and a flush after its producer went), none is left.
    threads_become(0, "an earlier test's delivery thread outlived its producer").await;
    let producer = producer(&kafka, "polled-threads");
    let clone = producer.clone();
    threads_become(1, "one thread per producer").await;
    drop(producer);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        delivery_threads(),
        1,
        "a clone still holds the producer: its thread goes on"
    );
    drop(clone);
    threads_become(0, "the delivery thread outlived every handle").await;
}

/// Waits (up to 10 s) until `count` delivery threads run; fails with `otherwise` if they never do.
async fn threads_become(count: usize, otherwise: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivery_threads() != count {
        assert!(Instant::now() < deadline, "{otherwise}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
