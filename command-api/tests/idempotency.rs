//! Guarantee 1, idempotency keys are global: a key names one request of its caller, whatever
//! aggregate, partition or path that request has. The same request again gets the first answer
//! and appends nothing; the same key with another request is 422 and appends nothing, even when
//! the other request's aggregate lives on another partition (its writer has never seen the key).

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use domain::AggregateKind;
use platform::partitioner::partition_for;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

/// Two ids from `candidates` whose aggregates live on different partitions.
fn on_two_partitions(candidates: &[&'static str]) -> (&'static str, &'static str) {
    let first = candidates[0];
    let home = partition_for(first.as_bytes(), PARTITIONS);
    let other = candidates[1..]
        .iter()
        .find(|id| partition_for(id.as_bytes(), PARTITIONS) != home)
        .expect("an id on another partition");
    (first, other)
}

fn customer(id: &str) -> Value {
    json!({"customer_id": id, "name": "Ada", "credit_limit": money(10_000)})
}

/// Asserts a 422 that names the Idempotency-Key header.
fn key_reused(reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert!(
        reply.body["errors"].get("Idempotency-Key").is_some(),
        "the problem names the header: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_key_reused_for_a_customer_on_another_partition_is_422_and_registers_nobody() {
    let app = TestApp::spawn().await;
    let (first, second) = on_two_partitions(&["c-1", "c-2", "c-3", "c-4", "c-5", "c-6"]);
    let headers = [("idempotency-key", "register-1")];
    let created = app
        .post("/v1/customers", Some(&admin()), &customer(first), &headers)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let retried = app
        .post("/v1/customers", Some(&admin()), &customer(first), &headers)
        .await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert_eq!(
        retried.body, created.body,
        "the retry gets the first answer"
    );

    let reused = app
        .post("/v1/customers", Some(&admin()), &customer(second), &headers)
        .await;
    key_reused(&reused);
    assert_eq!(
        count(
            &app.kafka,
            &app.kafka.topics().events(AggregateKind::Customer)
        ),
        1,
        "only the first customer is registered"
    );
    let unknown = app
        .post(
            "/v1/customers",
            Some(&admin()),
            &customer(second),
            &[("idempotency-key", "register-2")],
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::CREATED,
        "{second} was never registered: a fresh key registers it"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stock_key_reused_for_another_sku_is_422_and_adds_no_stock() {
    let app = TestApp::spawn().await;
    let (first, second) = on_two_partitions(&["apple", "pear", "plum", "fig", "kiwi", "lime"]);
    let headers = [("idempotency-key", "restock-1")];
    let stocked = app
        .post(
            &format!("/v1/inventory/{first}/stock"),
            Some(&admin()),
            &json!({"quantity": 5}),
            &headers,
        )
        .await;
    assert_eq!(stocked.status, StatusCode::OK, "{:?}", stocked.body);
    // Same body, another path: another request.
    let reused = app
        .post(
            &format!("/v1/inventory/{second}/stock"),
            Some(&admin()),
            &json!({"quantity": 5}),
            &headers,
        )
        .await;
    key_reused(&reused);
    let events = events(&app.kafka, AggregateKind::InventoryItem).await;
    assert_eq!(events.len(), 1, "only the first SKU was stocked");
    assert_eq!(
        events[0].envelope.as_ref().unwrap().aggregate_id,
        first,
        "{events:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_key_reused_with_other_lines_or_on_another_route_is_422_and_places_nothing() {
    let app = TestApp::spawn().await;
    seed(&app, "c-1", "apple", 50).await;
    let c1 = token("c-1", "customer");
    let headers = [("idempotency-key", "order-1")];
    let body = json!({"customer_id": "c-1", "lines": [{"sku": "apple", "quantity": 2, "unit_price": money(150)}]});
    let placed = app.post("/v1/orders", Some(&c1), &body, &headers).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{:?}", placed.body);
    let retried = app.post("/v1/orders", Some(&c1), &body, &headers).await;
    assert_eq!(retried.body, placed.body, "the retry gets the first answer");

    let mut other = body.clone();
    other["lines"][0]["quantity"] = json!(3);
    key_reused(&app.post("/v1/orders", Some(&c1), &other, &headers).await);
    // The same key on another route (cancelling the order it placed) is another request too.
    let order_id = placed.body["order_id"].as_str().unwrap();
    key_reused(
        &app.post(
            &format!("/v1/orders/{order_id}/cancel"),
            Some(&c1),
            &json!({}),
            &headers,
        )
        .await,
    );
    assert_eq!(
        count(&app.kafka, &app.kafka.topics().events(AggregateKind::Order)),
        1,
        "one order placed, nothing cancelled"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_belongs_to_its_caller() {
    let app = TestApp::spawn().await;
    seed(&app, "c-1", "apple", 50).await;
    let admin_two = token("admin-2", "admin");
    let headers = [("idempotency-key", "shared")];
    let first = app
        .post("/v1/customers", Some(&admin()), &customer("c-7"), &headers)
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let second = app
        .post(
            "/v1/customers",
            Some(&admin_two),
            &customer("c-8"),
            &headers,
        )
        .await;
    assert_eq!(
        second.status,
        StatusCode::CREATED,
        "another caller's key of the same name is another key: {:?}",
        second.body
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_requests_with_one_key_and_different_bodies_exactly_one_counts() {
    let app = TestApp::spawn().await;
    let (token, bodies): (String, Vec<Value>) = (
        admin(),
        (0..12).map(|i| customer(&format!("racer-{i}"))).collect(),
    );
    let replies = futures::future::join_all(bodies.iter().map(|body| {
        app.post(
            "/v1/customers",
            Some(&token),
            body,
            &[("idempotency-key", "one-key")],
        )
    }))
    .await;
    let created: Vec<&str> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .map(|r| r.body["customer_id"].as_str().unwrap())
        .collect();
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        key_reused(reply);
    }
    assert_eq!(created.len(), 1, "one request wins the key: {replies:?}");
    let registered = events(&app.kafka, AggregateKind::Customer).await;
    assert_eq!(registered.len(), 1, "one customer registered");
    assert_eq!(
        registered[0].envelope.as_ref().unwrap().aggregate_id,
        created[0],
        "and it is the one whose request was answered 201"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_on_a_keyed_request_is_checked_against_its_aggregate_not_its_key() {
    let app = TestApp::spawn().await;
    seed(&app, "c-1", "apple", 5).await;
    let stock = |if_match: &'static str| {
        let app = &app;
        async move {
            app.post(
                "/v1/inventory/apple/stock",
                Some(&admin()),
                &json!({"quantity": 1}),
                &[("idempotency-key", if_match), ("if-match", if_match)],
            )
            .await
        }
    };
    let fresh = stock("\"1\"").await;
    assert_eq!(fresh.status, StatusCode::OK, "{:?}", fresh.body);
    assert_eq!(fresh.body["version"], 2);
    let stale = stock("\"5\"").await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{:?}", stale.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_request_sent_several_times_at_once_is_answered_alike_every_time_and_counts_once()
{
    // A client that retries while its first attempt is still waiting (its own timeout was
    // shorter than ours) has two identical requests in flight on one instance: both wait for
    // the same claim and the same command, and each must get the one answer, not "unknown".
    let app = TestApp::spawn().await;
    let token = admin();
    let body = json!({"quantity": 3});
    let headers = [("idempotency-key", "stock-once")];
    let replies = futures::future::join_all(
        (0..6).map(|_| app.post("/v1/inventory/pear/stock", Some(&token), &body, &headers)),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["version"], 1, "{:?}", reply.body);
        assert_eq!(
            reply.body["consistency_token"], replies[0].body["consistency_token"],
            "every answer names the one event"
        );
    }
    // Every copy is decided before a later command of the same item (one writer, in offset
    // order), so once this one is answered a copy that wrongly appended would be in the log.
    let later = app
        .post("/v1/inventory/pear/stock", Some(&token), &body, &[])
        .await;
    assert_eq!(later.status, StatusCode::OK, "{:?}", later.body);
    assert_eq!(
        later.body["version"], 2,
        "the six counted once: {:?}",
        later.body
    );
    let added = events(&app.kafka, AggregateKind::InventoryItem).await;
    assert_eq!(
        added.len(),
        2,
        "one StockAdded for six identical requests, one for the later"
    );
    app.stop().await;
}
