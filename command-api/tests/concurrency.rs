//! Guarantee 2 (per-aggregate optimistic concurrency on Kafka) and 3 (ordering), against the real
//! broker with several command-api processes: versions are gap-free, one `If-Match` wins, and a
//! writer that appends from stale state (a zombie, or a second writer on the same partition)
//! produces only inert events and never acknowledges a command whose events lost.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use command_api::auth::Caller;
use command_api::processor::COMMAND_KINDS;
use domain::{AggregateKind, Version};
use futures::future::join_all;
use platform::envelope::{EventEnvelope, Trace};
use platform::log_order::{LogOrder, Verdict};
use platform::partitioner::partition_for;
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;
use serde_json::json;
use support::*;

const SKU: &str = "apple";

/// Waits until every writer of `apps` has rebuilt its partition (the group has settled).
async fn settled(apps: &[&TestApp]) {
    for _ in 0..300 {
        let mut serving = 0;
        let mut all_have_some = true;
        for app in apps {
            let ready = app.get("/readyz").await;
            let n = ready.body["checks"]["writers_serving"]
                .as_u64()
                .unwrap_or(0);
            all_have_some &= n > 0;
            serving += n;
        }
        if serving == COMMAND_KINDS.len() as u64 * PARTITIONS as u64 && all_have_some {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("writers did not settle");
}

async fn create_item(app: &TestApp) {
    let created = app
        .post(
            &format!("/v1/inventory/{SKU}/stock"),
            Some(&admin()),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
}

/// `n` concurrent "add one unit" requests spread over `apps`, each with its own idempotency key.
async fn add_stock_concurrently(
    apps: &[&TestApp],
    n: usize,
    if_match: Option<&str>,
) -> Vec<(String, Reply)> {
    let requests = (0..n).map(|i| {
        let app = apps[i % apps.len()];
        let key = format!("add-{i}");
        async move {
            let mut headers = vec![("idempotency-key", key.as_str())];
            if let Some(version) = if_match {
                headers.push(("if-match", version));
            }
            let reply = app
                .post(
                    &format!("/v1/inventory/{SKU}/stock"),
                    Some(&admin()),
                    &json!({"quantity": 1}),
                    &headers,
                )
                .await;
            (key, reply)
        }
    });
    join_all(requests).await
}

/// The command id the API derives for admin's request with `key`.
fn command_id(key: &str) -> String {
    let caller = Caller {
        subject: "admin".into(),
        roles: vec!["admin".into()],
    };
    command_api::routes::command_id(
        &caller,
        &format!("POST /v1/inventory/{SKU}/stock"),
        Some(key),
    )
}

/// What every reader concludes from the item's partition: the accepted chain (version ->
/// command id) and how many events were losers.
async fn accepted_chain(app: &TestApp) -> (Vec<(Version, String)>, usize) {
    let partition = partition_for(SKU.as_bytes(), PARTITIONS);
    let stored = events(&app.kafka, AggregateKind::InventoryItem).await;
    let mut log = LogOrder::default();
    let mut chain = vec![];
    let mut losers = 0;
    for record in stored.iter().filter(|s| s.partition == partition) {
        let envelope = record.envelope.clone().expect("envelope");
        match log.judge(&envelope, record.offset, record.timestamp) {
            Verdict::Accepted => chain.push((envelope.version, envelope.command_id)),
            Verdict::Loser(_) => losers += 1,
        }
    }
    (chain, losers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_turn_200_concurrent_commands_on_one_aggregate_into_gap_free_versions() {
    let kafka = kafka();
    let a = TestApp::spawn_on(&kafka, |_| {}).await;
    let b = TestApp::spawn_on(&kafka, |_| {}).await;
    settled(&[&a, &b]).await;
    create_item(&a).await;

    let replies = add_stock_concurrently(&[&a, &b], 200, None).await;
    let mut versions = BTreeSet::new();
    for (key, reply) in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{key}: {:?}", reply.body);
        assert!(
            versions.insert(reply.body["version"].as_u64().unwrap()),
            "version reported twice"
        );
    }
    assert_eq!(
        versions,
        (2..=201).collect(),
        "every acknowledged command got its own version"
    );

    let (chain, losers) = accepted_chain(&a).await;
    assert_eq!(
        losers, 0,
        "one writer per partition: nothing to lose against"
    );
    let chain_versions: Vec<u64> = chain.iter().map(|(v, _)| v.get()).collect();
    assert_eq!(
        chain_versions,
        (1..=201).collect::<Vec<_>>(),
        "gap-free, in log order"
    );
    let acknowledged: BTreeSet<String> = replies.iter().map(|(key, _)| command_id(key)).collect();
    let in_log: BTreeSet<String> = chain.iter().skip(1).map(|(_, c)| c.clone()).collect();
    assert_eq!(
        acknowledged, in_log,
        "no acknowledged command lost, none applied twice"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_200_concurrent_commands_with_the_same_if_match_exactly_one_succeeds() {
    let kafka = kafka();
    let a = TestApp::spawn_on(&kafka, |_| {}).await;
    let b = TestApp::spawn_on(&kafka, |_| {}).await;
    settled(&[&a, &b]).await;
    create_item(&a).await;

    let replies = add_stock_concurrently(&[&a, &b], 200, Some("\"1\"")).await;
    let ok = replies
        .iter()
        .filter(|(_, r)| r.status == StatusCode::OK)
        .count();
    let conflicts: Vec<_> = replies
        .iter()
        .filter(|(_, r)| r.status == StatusCode::CONFLICT)
        .collect();
    assert_eq!(
        (ok, conflicts.len()),
        (1, 199),
        "{:?}",
        replies.iter().map(|(_, r)| r.status).collect::<Vec<_>>()
    );
    assert!(conflicts.iter().all(|(_, r)| r.body["current_version"] == 2
        && r.headers["content-type"] == "application/problem+json"));
    assert_eq!(
        count(&kafka, &kafka.topics().events(AggregateKind::InventoryItem)),
        2
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_if_match_appends_nothing() {
    let app = TestApp::spawn().await;
    create_item(&app).await;
    for stale in ["\"0\"", "\"7\"", "W/\"0\""] {
        let reply = app
            .post(
                &format!("/v1/inventory/{SKU}/stock"),
                Some(&admin()),
                &json!({"quantity": 1}),
                &[("if-match", stale)],
            )
            .await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{stale}");
        assert_eq!(reply.body["current_version"], 1);
    }
    let fresh = app
        .post(
            &format!("/v1/inventory/{SKU}/stock"),
            Some(&admin()),
            &json!({"quantity": 1}),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        (fresh.status, fresh.body["version"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    assert_eq!(
        count(
            &app.kafka,
            &app.kafka.topics().events(AggregateKind::InventoryItem)
        ),
        2
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_on_one_partition_never_acknowledge_a_command_whose_events_lost() {
    // Split brain, the worst handover: two processes in different writer groups both own every
    // partition and append concurrently, each deciding on state the other keeps making stale.
    let kafka = kafka();
    let a = TestApp::spawn_on(&kafka, |s| {
        s.writer_group = format!("{}.writers-a", s.kafka.topic_prefix)
    })
    .await;
    let z = TestApp::spawn_on(&kafka, |s| {
        s.writer_group = format!("{}.writers-z", s.kafka.topic_prefix)
    })
    .await;
    create_item(&a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let replies = add_stock_concurrently(&[&a, &z], 200, None).await;
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    let mut refused = vec![];
    let mut unknown = 0;
    for (key, reply) in &replies {
        match reply.status {
            StatusCode::OK => {
                acknowledged.insert(command_id(key), reply.body["version"].as_u64().unwrap());
            }
            StatusCode::CONFLICT => {
                assert_eq!(reply.headers["content-type"], "application/problem+json");
                refused.push(command_id(key));
            }
            // The two groups' writers share each partition's transactional id and keep fencing
            // each other, so an answer (of the key's claim or of the command) may not come in
            // time: an outcome reported as unknown claims nothing.
            StatusCode::ACCEPTED => unknown += 1,
            StatusCode::SERVICE_UNAVAILABLE
                if reply.body["type"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("/outcome-unknown") =>
            {
                unknown += 1;
            }
            other => panic!("{key}: unexpected {other}: {:?}", reply.body),
        }
    }

    let (chain, losers) = accepted_chain(&a).await;
    let chain_versions: Vec<u64> = chain.iter().map(|(v, _)| v.get()).collect();
    assert_eq!(
        chain_versions,
        (1..=chain.len() as u64).collect::<Vec<_>>(),
        "the accepted chain is gap-free"
    );
    let accepted: HashMap<String, u64> = chain
        .iter()
        .skip(1)
        .map(|(v, c)| (c.clone(), v.get()))
        .collect();
    let wrong: Vec<_> = acknowledged
        .iter()
        .filter(|(command, version)| accepted.get(*command) != Some(version))
        .collect();
    assert!(
        wrong.is_empty(),
        "acknowledged only accepted commands, at their versions: {wrong:?}"
    );
    // Two groups cannot fence each other, so here a writer may refuse a command that the other
    // group's copy applies later. Real handovers are fenced by the group generation: see
    // `a_handover_under_load_never_contradicts_an_answer`.
    assert_eq!(acknowledged.len() + refused.len() + unknown, replies.len());
    assert!(!acknowledged.is_empty(), "some commands got through");
    println!(
        "split brain: {} acknowledged, {} refused, {unknown} unknown, {losers} inert losers",
        acknowledged.len(),
        refused.len()
    );
    a.stop().await;
    z.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handover_under_load_never_contradicts_an_answer() {
    // Partitions move between processes while commands are in flight: a writer that lost its
    // partition has its commit refused and withholds its answers; the new owner handles those
    // commands again and answers from the log. Every answer must agree with the log.
    // Only 200 and 409 are definite answers, so the handlers wait as long as the handover can
    // take on a slow, loaded machine (two rebalance rounds, fencing, the new owner's catch-up
    // and the queued commands), not the 10 s default after which they would answer 202.
    let long_wait =
        |s: &mut command_api::config::Settings| s.command_wait = Duration::from_secs(60);
    let kafka = kafka();
    let a = TestApp::spawn_on(&kafka, long_wait).await;
    create_item(&a).await;
    let only_a = [&a];
    let load = add_stock_concurrently(&only_a, 300, None);
    let joiner = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        TestApp::spawn_on(&kafka, long_wait).await
    };
    let (replies, b) = tokio::join!(load, joiner);
    let (chain, _) = accepted_chain(&a).await;
    let accepted: HashMap<String, u64> = chain
        .iter()
        .skip(1)
        .map(|(v, c)| (c.clone(), v.get()))
        .collect();
    for (key, reply) in &replies {
        let id = command_id(key);
        match reply.status {
            StatusCode::OK => assert_eq!(
                accepted.get(&id).copied(),
                reply.body["version"].as_u64(),
                "{key}"
            ),
            StatusCode::CONFLICT => {
                assert!(!accepted.contains_key(&id), "{key} was refused but applied")
            }
            other => panic!("{key}: {other} {:?}", reply.body),
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_former_owner_appending_from_stale_state_is_inert_for_every_reader() {
    let kafka = kafka();
    let app = TestApp::spawn_on(&kafka, |_| {}).await;
    create_item(&app).await;
    for _ in 0..3 {
        let reply = app
            .post(
                &format!("/v1/inventory/{SKU}/stock"),
                Some(&admin()),
                &json!({"quantity": 1}),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // The zombie stalled when the item was at version 1; it wakes up and keeps appending from
    // there, pipelining one event after another (each following its own previous one).
    let stored = events(&kafka, AggregateKind::InventoryItem).await;
    let v1 = stored[0].envelope.clone().unwrap();
    let producer = kafka.producer();
    let topic = kafka.topics().events(AggregateKind::InventoryItem);
    let mut predecessor = v1.event_id;
    for version in 2..=4 {
        let envelope = EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            version: Version::new(version),
            predecessor: Some(predecessor),
            command_id: format!("zombie-{version}"),
            trace: Trace {
                correlation_id: "zombie".into(),
                causation_id: "zombie".into(),
                traceparent: None,
            },
            ..v1.clone()
        };
        predecessor = envelope.event_id;
        let event = domain::inventory::InventoryEvent::StockAdded {
            sku: domain::values::Sku::try_from(SKU).unwrap(),
            quantity: domain::values::Quantity::try_from(1000).unwrap(),
        };
        let payload = schemas::encode(&event).unwrap();
        let record = FutureRecord::to(&topic)
            .partition(partition_for(SKU.as_bytes(), PARTITIONS))
            .key(SKU)
            .payload(&payload)
            .headers(envelope.to_headers());
        producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // The live writer absorbs them as losers and carries on from the real version.
    let after = app
        .post(
            &format!("/v1/inventory/{SKU}/stock"),
            Some(&admin()),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    assert_eq!(
        (after.status, after.body["version"].as_u64()),
        (StatusCode::OK, Some(5))
    );
    // A fresh writer (after a restart) rebuilds the same state from the log.
    app.stop().await;
    let restarted = TestApp::spawn_on(&kafka, |_| {}).await;
    let next = restarted
        .post(
            &format!("/v1/inventory/{SKU}/stock"),
            Some(&admin()),
            &json!({"quantity": 1}),
            &[("if-match", "\"5\"")],
        )
        .await;
    assert_eq!(
        (next.status, next.body["version"].as_u64()),
        (StatusCode::OK, Some(6)),
        "{:?}",
        next.body
    );
    let (chain, losers) = accepted_chain(&restarted).await;
    assert_eq!(losers, 3, "all three zombie events are inert");
    assert!(chain
        .iter()
        .all(|(_, command)| !command.starts_with("zombie")));
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_by_another_writer_the_live_writer_has_not_read_yet_decides_before_its_own() {
    // A writer judges its own appends without reading them back only when they sit right after
    // what it has read. Here another writer (a former owner that still has the current state)
    // appends a valid event just before each command, so the live writer's append lands behind
    // a record it has not read: its answer must still be what the log says.
    let kafka = kafka();
    let app = TestApp::spawn_on(&kafka, |_| {}).await;
    create_item(&app).await;
    let producer = kafka.producer();
    let topic = kafka.topics().events(AggregateKind::InventoryItem);
    let partition = partition_for(SKU.as_bytes(), PARTITIONS);
    for round in 0..5 {
        let stored = events(&kafka, AggregateKind::InventoryItem).await;
        let mut log = LogOrder::default();
        let mut head = None;
        for record in stored.iter().filter(|s| s.partition == partition) {
            let envelope = record.envelope.clone().unwrap();
            if log.judge(&envelope, record.offset, record.timestamp) == Verdict::Accepted {
                head = Some(envelope);
            }
        }
        let head = head.unwrap();
        let foreign = EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            version: head.version.next(),
            predecessor: Some(head.event_id),
            command_id: format!("other-writer-{round}"),
            ..head.clone()
        };
        let event = domain::inventory::InventoryEvent::StockAdded {
            sku: domain::values::Sku::try_from(SKU).unwrap(),
            quantity: domain::values::Quantity::try_from(1).unwrap(),
        };
        let payload = schemas::encode(&event).unwrap();
        let record = FutureRecord::to(&topic)
            .partition(partition)
            .key(SKU)
            .payload(&payload)
            .headers(foreign.to_headers());
        producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .unwrap();

        let key = format!("after-other-{round}");
        let reply = app
            .post(
                &format!("/v1/inventory/{SKU}/stock"),
                Some(&admin()),
                &json!({"quantity": 1}),
                &[("idempotency-key", key.as_str())],
            )
            .await;
        let (chain, _) = accepted_chain(&app).await;
        let ours = chain
            .iter()
            .find(|(_, command)| *command == command_id(&key))
            .map(|(version, _)| version.get());
        match reply.status {
            StatusCode::OK => assert_eq!(
                reply.body["version"].as_u64(),
                ours,
                "round {round}: acknowledged at the version the log gives it"
            ),
            StatusCode::CONFLICT => assert_eq!(ours, None, "round {round}: refused, not applied"),
            other => panic!("round {round}: unexpected {other}: {:?}", reply.body),
        }
        let versions: Vec<u64> = chain.iter().map(|(v, _)| v.get()).collect();
        assert_eq!(versions, (1..=chain.len() as u64).collect::<Vec<_>>());
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_whose_aggregate_id_is_a_snapshot_key_does_not_stop_its_writer() {
    // Only a producer other than the writers appends such an id (the API's are letters, digits,
    // `-` and `_`). The writer's file holds the command uses its snapshot holds under their
    // snapshot keys (`~command/<id>`, decision 0015), beside the aggregates it let go of: such
    // an event must not be taken for an aggregate kept there (it was, and the writer restarted
    // on it for ever).
    let kafka = kafka();
    let app = TestApp::spawn_on(&kafka, |_| {}).await;
    let first = add_stock_with_key(&app, "kept-on-disk").await;
    assert_eq!(first, StatusCode::OK);
    // The next batch carries a snapshot holding the first command's use, which then leaves
    // memory for the writer's file.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(
        add_stock_with_key(&app, "carries-the-snapshot").await,
        StatusCode::OK
    );
    let stored = events(&kafka, AggregateKind::InventoryItem).await;
    let template = stored.last().unwrap().envelope.clone().unwrap();
    let foreign = EventEnvelope {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: format!("~command/{}", command_id("kept-on-disk")),
        version: Version::NONE.next(),
        predecessor: None,
        command_id: "a-foreign-producer".into(),
        ..template
    };
    let payload = schemas::encode(&domain::inventory::InventoryEvent::StockAdded {
        sku: domain::values::Sku::try_from(SKU).unwrap(),
        quantity: domain::values::Quantity::try_from(1).unwrap(),
    })
    .unwrap();
    let topic = kafka.topics().events(AggregateKind::InventoryItem);
    let record = FutureRecord::to(&topic)
        .partition(partition_for(SKU.as_bytes(), PARTITIONS))
        .key(SKU)
        .payload(&payload)
        .headers(foreign.to_headers());
    kafka
        .producer()
        .send(record, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    assert_eq!(
        add_stock_with_key(&app, "after-the-foreign-event").await,
        StatusCode::OK,
        "the partition's writer serves on"
    );
    app.stop().await;
}

/// One unit added to `SKU` by admin with idempotency key `key`: the answer's status.
async fn add_stock_with_key(app: &TestApp, key: &str) -> StatusCode {
    app.post(
        &format!("/v1/inventory/{SKU}/stock"),
        Some(&admin()),
        &json!({"quantity": 1}),
        &[("idempotency-key", key)],
    )
    .await
    .status
}
