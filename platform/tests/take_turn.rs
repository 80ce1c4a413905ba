//! `platform::runtime::take_turn` against the running broker: a task that reads a backlog of
//! records librdkafka has already fetched (a takeover's replay) still lets the other tasks of
//! its thread run. Without it, `recv` is ready at once for every queued record, the reader
//! never returns to the scheduler, and the thread's HTTP requests, other partitions' workers
//! and timers wait until the backlog runs dry (an orchestrator's 200 ms tick ran every 1-2 s
//! while it replayed, and its `/metrics` did not answer).

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use platform::kafka::consumer_config;
use platform::runtime::take_turn;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use test_harness::TestKafka;

/// Records in the backlog; the reader reads all but a few of them.
const BACKLOG: i64 = 3_000;

#[tokio::test(flavor = "current_thread")]
async fn a_task_reading_a_backlog_lets_the_other_tasks_of_its_thread_run() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("backlog", 1).await;
    let producer = kafka.producer();
    for n in 0..BACKLOG {
        let value = n.to_string();
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {n}: {e}"));
    }

    let consumer: StreamConsumer = consumer_config(&kafka.settings, &kafka.group("reader"))
        .set("queued.min.messages", (2 * BACKLOG).to_string())
        .create()
        .expect("create consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    // The first record starts the fetching; a moment later the rest is fetched (a few hundred
    // KiB, one or two fetches), so that every `recv` of the loop below is ready at once. (Were
    // it not, the reader would wait for records and let the bystander run: the test could then
    // pass without `take_turn`, never fail with it.)
    consumer.recv().await.expect("first record");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let bystander_ran = Arc::new(AtomicBool::new(false));
    let bystander = {
        let ran = bystander_ran.clone();
        tokio::spawn(async move { ran.store(true, Ordering::SeqCst) })
    };
    let mut read_before_the_bystander_ran = None;
    for read in 1..BACKLOG - 100 {
        consumer.recv().await.expect("record");
        take_turn().await;
        if read_before_the_bystander_ran.is_none() && bystander_ran.load(Ordering::SeqCst) {
            read_before_the_bystander_ran = Some(read);
        }
    }
    assert!(
        read_before_the_bystander_ran.is_some(),
        "the reader read {} queued records without letting another task of its thread run",
        BACKLOG - 101
    );
    bystander.await.expect("bystander");
}
