//! Broker fidelity: every Kafka feature the system relies on, proved against the running Apache
//! Kafka broker, one test per feature. When the broker is upgraded, these say what still holds.
//! What each test proves is recorded in `docs/decisions/0001-apache-kafka.md`.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures::StreamExt;
use platform::kafka::{ensure_topics, producer_config, KafkaSetupError};
use platform::partitioner::partition_for;
use platform::topics::{Retention, Topics};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use test_harness::broker::free_port;
use test_harness::{BrokerProcess, FaultProxy, TestKafka};

const WAIT: Duration = Duration::from_secs(30);

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &str) -> (i32, i64) {
    let record = FutureRecord::to(topic).key(key).payload(value);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|delivery| (delivery.partition, delivery.offset))
        .unwrap_or_else(|(e, _)| panic!("produce {key}: {e}"))
}

/// Receives `n` messages (or fails after [`WAIT`]).
async fn receive(consumer: &StreamConsumer, n: usize) -> Vec<OwnedMessage> {
    let mut out = Vec::with_capacity(n);
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("received {} of {n} messages before the deadline", out.len())
            });
        let message: BorrowedMessage<'_> = next.expect("stream ended").expect("consume");
        out.push(message.detach());
    }
    out
}

fn text(message: &OwnedMessage) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

fn assign_from_beginning(consumer: &StreamConsumer, topic: &str, partitions: i32) {
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_keep_keys_values_and_headers() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("headers", 1).await;
    let producer = kafka.producer();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event-type",
            value: Some("OrderPlaced"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        })
        .insert(Header::<&[u8]> {
            key: "empty",
            value: None,
        });
    let record = FutureRecord::to(&topic)
        .key("order-1")
        .payload(&[0xC3u8, 0x01, 0xFF][..])
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");

    let consumer = kafka.consumer(&kafka.group("headers"), &[]);
    assign_from_beginning(&consumer, &topic, 1);
    let message = receive(&consumer, 1).await.remove(0);
    assert_eq!(message.key(), Some(&b"order-1"[..]));
    assert_eq!(message.payload(), Some(&[0xC3u8, 0x01, 0xFF][..]));
    let headers = message.headers().expect("headers survive");
    let pairs: Vec<(String, Option<Vec<u8>>)> = headers
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("event-type".into(), Some(b"OrderPlaced".to_vec())),
            (
                "traceparent".into(),
                Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec())
            ),
            ("empty".into(), None),
        ]
    );
}

fn assigned(consumer: &StreamConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|list| list.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls both consumers (a group member only rebalances while it polls) until `done` holds.
async fn poll_until(members: &[&StreamConsumer], done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "group did not settle in time"
        );
        for member in members {
            let _ = tokio::time::timeout(Duration::from_millis(50), member.recv()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_with_two_members_rebalances_partitions() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("group", 4).await;
    let group = kafka.group("members");
    let all: BTreeSet<i32> = (0..4).collect();

    let first = kafka.consumer(&group, &[]);
    first.subscribe(&[&topic]).expect("subscribe");
    poll_until(&[&first], || assigned(&first) == all).await;

    let second = kafka.consumer(&group, &[]);
    second.subscribe(&[&topic]).expect("subscribe");
    poll_until(&[&first, &second], || {
        let (a, b) = (assigned(&first), assigned(&second));
        !a.is_empty()
            && !b.is_empty()
            && a.is_disjoint(&b)
            && a.union(&b).copied().collect::<BTreeSet<_>>() == all
    })
    .await;

    // The second member leaves: the first takes every partition back.
    second.unsubscribe();
    drop(second);
    poll_until(&[&first], || assigned(&first) == all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_offset_store_and_commit_resume_where_the_group_left_off() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("resume", 1).await;
    let producer = kafka.producer();
    for i in 0..10 {
        send(&producer, &topic, "k", &format!("m{i}")).await;
    }
    let group = kafka.group("resume");
    {
        let consumer = kafka.consumer(&group, &[]);
        consumer.subscribe(&[&topic]).expect("subscribe");
        let messages = receive(&consumer, 6).await;
        // Only the first five are "done": store the *next* offset to read (5), not the sixth
        // message we also received. (rdkafka's `store_offset(topic, p, o)` maps to librdkafka's
        // legacy call, which takes the last processed offset and commits o + 1; the list form
        // used here and in production takes the next offset, like Kafka itself.)
        let mut done = TopicPartitionList::new();
        done.add_partition_offset(&topic, 0, Offset::Offset(messages[4].offset() + 1))
            .expect("partition");
        consumer.store_offsets(&done).expect("store offsets");
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .expect("commit");
        let committed = consumer
            .committed(Duration::from_secs(10))
            .expect("committed offsets");
        assert_eq!(
            committed.find_partition(&topic, 0).map(|e| e.offset()),
            Some(Offset::Offset(5))
        );
    }
    let consumer = kafka.consumer(&group, &[]);
    consumer.subscribe(&[&topic]).expect("subscribe");
    let resumed = receive(&consumer, 5).await;
    let values: Vec<String> = resumed.iter().map(text).collect();
    assert_eq!(values, ["m5", "m6", "m7", "m8", "m9"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_does_not_duplicate_a_retried_batch() {
    // The client talks to the broker through a proxy that swallows one Produce response and cuts
    // the connection: the batch *was* written, the client cannot know, and retries it.
    let (broker_port, proxy_port) = (free_port(), free_port());
    let broker = BrokerProcess::start_advertising(broker_port, proxy_port).await;
    let proxy = FaultProxy::start(proxy_port, broker.brokers()).await;
    let kafka = TestKafka::at(&format!("127.0.0.1:{proxy_port}"));
    let topic = kafka.create_topic("idempotent", 1).await;
    let producer = kafka.producer();

    send(&producer, &topic, "k", "before").await;
    proxy.swallow_next_produce_response();
    let (_, retried_offset) = send(&producer, &topic, "k", "retried").await;
    send(&producer, &topic, "k", "after").await;
    assert_eq!(proxy.swallowed(), 1, "the fault was injected");

    let consumer = kafka.consumer(&kafka.group("idempotent"), &[]);
    assign_from_beginning(&consumer, &topic, 1);
    let messages = receive(&consumer, 3).await;
    let values: Vec<String> = messages.iter().map(text).collect();
    assert_eq!(values, ["before", "retried", "after"]);
    assert_eq!(
        messages[1].offset(),
        retried_offset,
        "the retry was answered with the original offset"
    );
    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(
        high - low,
        3,
        "exactly three records in the partition, no duplicate"
    );
}

fn transactional_producer(kafka: &TestKafka, id: &str) -> FutureProducer {
    let producer: FutureProducer = producer_config(&kafka.settings)
        .set("transactional.id", id)
        .create()
        .expect("create transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    producer
}

/// What a consumer with `isolation` reads from the beginning of `topic`: it waits up to 20 s
/// for `expected` records, then reads on from the same consumer for `absence`, since a record
/// that must not be there would show up in that fetch or the next. A slow machine only makes
/// the first wait longer, never cuts what was read short.
async fn read_within(
    kafka: &TestKafka,
    topic: &str,
    isolation: &str,
    expected: usize,
    absence: Duration,
) -> Vec<String> {
    let consumer = kafka.consumer(
        &kafka.group(&format!("read-{isolation}")),
        &[("isolation.level", isolation)],
    );
    assign_from_beginning(&consumer, topic, 1);
    let mut values = vec![];
    let mut stream = consumer.stream();
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut expected_read = false;
    loop {
        if !expected_read && values.len() >= expected {
            expected_read = true;
            deadline = tokio::time::Instant::now() + absence;
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(message))) => values.push(text(&message.detach())),
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    values
}

/// What a consumer with `isolation` reads, expecting `expected`, and nothing more for 2 s.
async fn read_all(
    kafka: &TestKafka,
    topic: &str,
    isolation: &str,
    expected: &[&str],
) -> Vec<String> {
    read_within(
        kafka,
        topic,
        isolation,
        expected.len(),
        Duration::from_secs(2),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_abort_and_read_committed_never_sees_aborted_records() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("tx", 1).await;
    let producer = transactional_producer(&kafka, &kafka.group("tx"));
    for (values, commit) in [(["a", "b"], true), (["c", "c2"], false), (["d", "e"], true)] {
        producer.begin_transaction().expect("begin");
        for value in values {
            send(&producer, &topic, "k", value).await;
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
    }
    assert_eq!(
        read_all(&kafka, &topic, "read_committed", &["a", "b", "d", "e"]).await,
        ["a", "b", "d", "e"],
        "a read_committed consumer sees committed records only"
    );
    assert_eq!(
        read_all(
            &kafka,
            &topic,
            "read_uncommitted",
            &["a", "b", "c", "c2", "d", "e"]
        )
        .await,
        ["a", "b", "c", "c2", "d", "e"],
        "the aborted records were written (and are hidden only by isolation)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_committed_consumer_stops_at_an_open_transaction() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("lso", 1).await;
    let plain = kafka.producer();
    send(&plain, &topic, "k", "before").await;
    let producer = transactional_producer(&kafka, &kafka.group("lso"));
    producer.begin_transaction().expect("begin");
    send(&producer, &topic, "k", "open").await;
    send(&plain, &topic, "k", "after-open").await;
    assert_eq!(
        read_within(&kafka, &topic, "read_committed", 1, Duration::from_secs(3)).await,
        ["before"],
        "nothing past the last stable offset while the transaction is open"
    );
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    assert_eq!(
        read_all(
            &kafka,
            &topic,
            "read_committed",
            &["before", "open", "after-open"]
        )
        .await,
        ["before", "open", "after-open"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("fence", 1).await;
    let id = kafka.group("writer-p0");
    let zombie = transactional_producer(&kafka, &id);
    zombie.begin_transaction().expect("begin");
    send(&zombie, &topic, "k", "zombie").await;

    // The new instance takes over the id: the broker aborts the zombie's open transaction and
    // bumps the epoch, so nothing the zombie does afterwards can commit.
    let successor = transactional_producer(&kafka, &id);
    successor.begin_transaction().expect("begin");
    send(&successor, &topic, "k", "successor").await;
    successor
        .commit_transaction(Duration::from_secs(30))
        .expect("the successor commits");

    // Whether the zombie's late send is refused at once or only fails its commit depends on
    // when the client learns of the fence; either way nothing of it may commit.
    let _late = zombie
        .send(
            FutureRecord::to(&topic).key("k").payload("zombie-late"),
            Duration::from_secs(10),
        )
        .await;
    let committed = zombie.commit_transaction(Duration::from_secs(10));
    assert!(committed.is_err(), "the zombie's commit is refused");
    assert_eq!(
        read_all(&kafka, &topic, "read_committed", &["successor"]).await,
        ["successor"],
        "none of the zombie's records is ever visible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_offsets_commit_with_the_transaction_and_not_without_it() {
    // KIP-447: a writer sends its consumer's offsets into its transaction, so "commands handled"
    // and "events appended" commit together, fenced by the group generation.
    let kafka = TestKafka::new();
    let input = kafka.create_topic("tx-in", 1).await;
    let output = kafka.create_topic("tx-out", 1).await;
    let plain = kafka.producer();
    for i in 0..4 {
        send(&plain, &input, "k", &format!("cmd{i}")).await;
    }
    let group = kafka.group("tx-writers");
    let consumer = kafka.consumer(&group, &[]);
    consumer.subscribe(&[&input]).expect("subscribe");
    let commands = receive(&consumer, 4).await;
    let producer = transactional_producer(&kafka, &kafka.group("tx-writer"));
    let offsets_after = |n: usize| {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&input, 0, Offset::Offset(commands[n - 1].offset() + 1))
            .expect("partition");
        list
    };
    let metadata = consumer.group_metadata().expect("group metadata");

    producer.begin_transaction().expect("begin");
    send(&producer, &output, "k", "event-for-cmd0-cmd1").await;
    producer
        .send_offsets_to_transaction(&offsets_after(2), &metadata, Duration::from_secs(30))
        .expect("send offsets");
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");

    producer.begin_transaction().expect("begin");
    send(&producer, &output, "k", "event-for-cmd2-cmd3").await;
    producer
        .send_offsets_to_transaction(&offsets_after(4), &metadata, Duration::from_secs(30))
        .expect("send offsets");
    producer
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");

    let committed = consumer
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(
        committed.find_partition(&input, 0).map(|e| e.offset()),
        Some(Offset::Offset(commands[1].offset() + 1)),
        "the committed transaction's offsets hold, the aborted one's do not"
    );
    assert_eq!(
        read_all(&kafka, &output, "read_committed", &["event-for-cmd0-cmd1"]).await,
        ["event-for-cmd0-cmd1"]
    );
}

fn admin(kafka: &TestKafka) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &kafka.settings.brokers)
        .create()
        .expect("admin client")
}

/// Creates a topic as an operator would, with the configs it is given and nothing of ours.
async fn create_by_hand(kafka: &TestKafka, topic: NewTopic<'_>) {
    admin(kafka)
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create");
}

async fn topic_configs(kafka: &TestKafka, topic: &str) -> Vec<(String, String)> {
    let admin = admin(kafka);
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("topic configs");
    resource
        .entries
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_we_create_keep_the_source_of_truth_forever_and_in_flight_traffic_for_a_bounded_time(
) {
    let kafka = TestKafka::new();
    let topics = kafka.topics();
    let events = topics.events(domain::AggregateKind::Order);
    let names = [
        events.clone(),
        Topics::dead_letters(&events),
        topics.events(domain::AggregateKind::OrderSaga),
        topics.commands(domain::AggregateKind::Order),
        topics.replies(),
    ];
    ensure_topics(&kafka.settings, &names, 2)
        .await
        .expect("create topics");
    for name in &names {
        let configs = topic_configs(&kafka, name).await;
        let value = |key: &str| {
            configs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name} has no {key}"))
        };
        let retention = Topics::retention(name);
        assert_eq!(value("retention.ms"), retention.retention_ms(), "{name}");
        assert_eq!(value("retention.bytes"), "-1", "{name}");
        assert_eq!(value("cleanup.policy"), "delete", "{name}");
        assert_eq!(value("min.insync.replicas"), "1", "{name}");
        let forever = retention == Retention::Forever;
        let is_source_of_truth = !name.ends_with(".commands") && !name.ends_with("command-replies");
        assert_eq!(forever, is_source_of_truth, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_events_topic_that_would_delete_records_is_refused() {
    let kafka = TestKafka::new();
    let events = kafka.topics().events(domain::AggregateKind::Customer);
    // Created by hand with the broker's default retention: 7 days, then deleted.
    create_by_hand(
        &kafka,
        NewTopic::new(&events, 1, TopicReplication::Fixed(1)).set("retention.ms", "604800000"),
    )
    .await;
    let refused = ensure_topics(&kafka.settings, std::slice::from_ref(&events), 1).await;
    match refused {
        Err(KafkaSetupError::WouldDeleteData(risk)) => {
            assert_eq!(
                (risk.topic.as_str(), risk.key.as_str()),
                (events.as_str(), "retention.ms")
            );
            assert!(risk.to_string().contains("retention.ms=-1"), "{risk}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Untouched: the service never rewrites an operator's topic.
    let configs = topic_configs(&kafka, &events).await;
    assert!(configs.contains(&("retention.ms".to_owned(), "604800000".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_compacted_and_events_keep_the_writers_timestamps() {
    let kafka = TestKafka::new();
    let topics = kafka.topics();
    let events = topics.events(domain::AggregateKind::InventoryItem);
    let snapshots = topics.snapshots(domain::AggregateKind::InventoryItem);
    ensure_topics(&kafka.settings, &[events.clone(), snapshots.clone()], 2)
        .await
        .expect("create topics");
    let value = |configs: &[(String, String)], key: &str| {
        configs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let events_configs = topic_configs(&kafka, &events).await;
    assert_eq!(
        value(&events_configs, "message.timestamp.type"),
        "CreateTime"
    );
    let snapshot_configs = topic_configs(&kafka, &snapshots).await;
    assert_eq!(value(&snapshot_configs, "cleanup.policy"), "compact");
    assert_eq!(value(&snapshot_configs, "segment.ms"), "600000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_snapshots_topic_that_is_not_compacted_is_refused() {
    let kafka = TestKafka::new();
    let snapshots = kafka.topics().snapshots(domain::AggregateKind::Order);
    // Pre-created with the broker's defaults: deleted after 7 days, so an aggregate unchanged
    // for a week would vanish from the snapshot.
    create_by_hand(
        &kafka,
        NewTopic::new(&snapshots, 1, TopicReplication::Fixed(1)),
    )
    .await;
    match ensure_topics(&kafka.settings, std::slice::from_ref(&snapshots), 1).await {
        Err(refusal @ KafkaSetupError::NotCompacted(_)) => {
            assert!(refusal.to_string().contains("cleanup.policy=compact"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_events_topic_stamped_by_the_broker_is_refused() {
    let kafka = TestKafka::new();
    let events = kafka.topics().events(domain::AggregateKind::Order);
    create_by_hand(
        &kafka,
        NewTopic::new(&events, 1, TopicReplication::Fixed(1))
            .set("retention.ms", "-1")
            .set("message.timestamp.type", "LogAppendTime"),
    )
    .await;
    match ensure_topics(&kafka.settings, std::slice::from_ref(&events), 1).await {
        Err(refusal @ KafkaSetupError::BrokerTimestamps(_)) => {
            assert!(refusal
                .to_string()
                .contains("message.timestamp.type=CreateTime"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_to_beginning_list_offsets_and_watermarks() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("offsets", 1).await;
    let producer = kafka.producer();
    let mut offsets = vec![];
    for i in 0..5 {
        offsets.push(send(&producer, &topic, "k", &format!("m{i}")).await.1);
    }
    assert_eq!(offsets, [0, 1, 2, 3, 4], "offsets are dense from zero");

    let consumer = kafka.consumer(&kafka.group("offsets"), &[]);
    assert_eq!(
        consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .expect("watermarks"),
        (0, 5)
    );
    let mut by_time = TopicPartitionList::new();
    by_time
        .add_partition_offset(&topic, 0, Offset::Offset(0))
        .expect("partition");
    let found = consumer
        .offsets_for_times(by_time, Duration::from_secs(10))
        .expect("ListOffsets");
    assert_eq!(
        found.find_partition(&topic, 0).map(|e| e.offset()),
        Some(Offset::Offset(0))
    );

    assign_from_beginning(&consumer, &topic, 1);
    let first = receive(&consumer, 5).await;
    assert_eq!(text(&first[0]), "m0");
    consumer
        .seek(&topic, 0, Offset::Beginning, Duration::from_secs(10))
        .expect("seek to beginning");
    let again = receive(&consumer, 1).await;
    assert_eq!((again[0].offset(), text(&again[0])), (0, "m0".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_keeps_every_acknowledged_record() {
    let mut broker = BrokerProcess::start().await;
    let kafka = TestKafka::at(&broker.brokers());
    let topic = kafka.create_topic("durable", 3).await;
    let expected: HashSet<String> = {
        let producer = kafka.producer();
        let mut acked = HashSet::new();
        for i in 0..200 {
            send(
                &producer,
                &topic,
                &format!("key-{}", i % 17),
                &format!("v{i}"),
            )
            .await;
            acked.insert(format!("v{i}"));
        }
        acked
    };

    broker.restart().await; // SIGKILL, then start again on the same log directory.

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", kafka.group("after-restart"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    assign_from_beginning(&consumer, &topic, 3);
    let messages = receive(&consumer, expected.len()).await;
    let seen: Vec<String> = messages.iter().map(text).collect();
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, expected, "every acknowledged record survived");
    assert_eq!(seen.len(), unique.len(), "nothing duplicated");
    let mut total = 0;
    for p in 0..3 {
        let (low, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .expect("watermarks");
        total += high - low;
    }
    assert_eq!(total, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_land_on_the_java_clients_murmur2_partition() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("partitioning", 6).await;
    let producer = kafka.producer();
    for i in 0..60 {
        let key = format!("order-{i}");
        let (partition, _) = send(&producer, &topic, &key, "x").await;
        assert_eq!(partition, partition_for(key.as_bytes(), 6), "{key}");
    }
    producer.flush(Duration::from_secs(5)).expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_from_a_member_left_behind_by_a_rebalance_is_refused() {
    // Command writers rely on this to fence a former partition owner: it commits before it
    // answers, and a refused commit makes it withhold its answers (docs/decisions/0002).
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("fencing", 2).await;
    let group = kafka.group("fencing");
    let stalled = kafka.consumer(
        &group,
        &[
            ("session.timeout.ms", "6000"),
            ("max.poll.interval.ms", "6000"),
        ],
    );
    stalled.subscribe(&[&topic]).expect("subscribe");
    poll_until(&[&stalled], || assigned(&stalled).len() == 2).await;

    // A new member joins; the stalled one stops polling, so the group moves on without it.
    let newcomer = kafka.consumer(&group, &[]);
    newcomer.subscribe(&[&topic]).expect("subscribe");
    poll_until(&[&newcomer], || assigned(&newcomer).len() == 2).await;

    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(1))
        .expect("partition");
    let result = stalled.commit(&offsets, CommitMode::Sync);
    assert!(
        result.is_err(),
        "a member the group left behind could still commit: fencing by commit does not hold"
    );
    // The new owner's commit goes through.
    newcomer
        .commit(&offsets, CommitMode::Sync)
        .expect("the owner commits");
}
