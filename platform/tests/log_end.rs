//! `platform::log_end` against the running broker: partitions that end with transaction
//! markers and aborted records are read to their end by position, and a checkpoint below such
//! an end is recognised as at the end. What every "caught up" and "read everything" decision of
//! the readers of transactional event topics rests on.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use platform::kafka::producer_config;
use platform::log_end::{Extent, Gap, LogEnds};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use test_harness::TestKafka;

fn transactional_producer(kafka: &TestKafka) -> FutureProducer {
    let producer: FutureProducer = producer_config(&kafka.settings)
        .set("transactional.id", kafka.group("log-end-writer"))
        .create()
        .expect("create transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    producer
}

async fn send(producer: &FutureProducer, topic: &str, partition: i32, value: &str) -> i64 {
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key("k")
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .map(|delivery| delivery.offset)
        .unwrap_or_else(|(e, _)| panic!("produce {value}: {e}"))
}

/// Sends `values` to `partition` in one transaction, committed or aborted; their offsets.
async fn transaction(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    values: &[&str],
    commit: bool,
) -> Vec<i64> {
    producer.begin_transaction().expect("begin");
    let mut offsets = vec![];
    for value in values {
        offsets.push(send(producer, topic, partition, value).await);
    }
    if commit {
        producer
            .commit_transaction(Duration::from_secs(30))
            .expect("commit");
    } else {
        producer
            .abort_transaction(Duration::from_secs(30))
            .expect("abort");
    }
    offsets
}

fn values(records: &[OwnedMessage], partition: i32) -> Vec<String> {
    records
        .iter()
        .filter(|m| m.partition() == partition)
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_ending_with_markers_and_aborted_records_are_read_to_their_end() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("ends", 3).await;
    let producer = transactional_producer(&kafka);
    // Partition 0: a committed transaction, then an aborted one last.
    let committed = transaction(&producer, &topic, 0, &["a", "b"], true).await;
    transaction(&producer, &topic, 0, &["c"], false).await;
    // Partition 1: a committed transaction last (its commit marker ends the partition).
    let last = transaction(&producer, &topic, 1, &["d"], true).await;
    // Partition 2: only an aborted transaction.
    transaction(&producer, &topic, 2, &["e"], false).await;

    let ends = LogEnds::new(&kafka.settings).unwrap();
    let (extents, records, gaps) = tokio::task::spawn_blocking(move || {
        let extents = ends.settled(&topic, Duration::from_secs(15)).unwrap();
        let records = ends
            .read_to_end(&topic, &extents, Duration::from_secs(20))
            .unwrap();
        let gap = |partition, from, until| {
            ends.gap(&topic, partition, from, until, Duration::from_secs(10))
                .unwrap()
        };
        let end = |p: usize| extents[p].end;
        let gaps = [
            gap(0, committed[1] + 1, end(0)),
            gap(0, 0, end(0)),
            gap(1, last[0] + 1, end(1)),
            gap(2, 0, end(2)),
        ];
        (extents, records, gaps)
    })
    .await
    .unwrap();

    // Markers and aborted records take offsets: each end is past the last record + 1.
    assert_eq!(
        extents,
        [
            Extent {
                partition: 0,
                start: 0,
                end: 5
            },
            Extent {
                partition: 1,
                start: 0,
                end: 2
            },
            Extent {
                partition: 2,
                start: 0,
                end: 2
            },
        ],
        "a b marker c abort-marker | d marker | e abort-marker"
    );
    assert_eq!(values(&records, 0), ["a", "b"]);
    assert_eq!(values(&records, 1), ["d"]);
    assert!(values(&records, 2).is_empty());
    assert_eq!(
        gaps,
        [Gap::Empty, Gap::Record(0), Gap::Empty, Gap::Empty],
        "a checkpoint after the last committed record is at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_stops_at_an_open_transaction() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("open", 1).await;
    send(&kafka.producer(), &topic, 0, "before").await;
    let producer = transactional_producer(&kafka);
    producer.begin_transaction().expect("begin");
    send(&producer, &topic, 0, "open").await;

    let ends = LogEnds::new(&kafka.settings).unwrap();
    let reading = topic.clone();
    let (extents, records, ends) = tokio::task::spawn_blocking(move || {
        // Settling gives up after a second: the transaction stays open.
        let extents = ends.settled(&reading, Duration::from_secs(1)).unwrap();
        let records = ends
            .read_to_end(&reading, &extents, Duration::from_secs(10))
            .unwrap();
        (extents, records, ends)
    })
    .await
    .unwrap();
    assert_eq!(
        extents[0].end, 1,
        "the last stable offset: before the open transaction"
    );
    assert_eq!(values(&records, 0), ["before"]);

    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    let records = tokio::task::spawn_blocking(move || {
        let extents = ends.settled(&topic, Duration::from_secs(15)).unwrap();
        assert_eq!(extents[0].end, 3, "before, open, commit marker");
        ends.read_to_end(&topic, &extents, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(values(&records, 0), ["before", "open"]);
}
