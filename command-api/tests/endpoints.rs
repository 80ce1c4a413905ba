//! Guarantee 1 (Kafka is the source of truth) through the HTTP API: each endpoint appends its
//! domain event to the aggregate's topic, keyed by aggregate id, and answers with the new
//! version and a consistency token that points at the event.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use domain::AggregateKind;
use platform::consistency::{ConsistencyToken, TokenKey};
use platform::partitioner::partition_for;
use reqwest::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_appends_its_event_keyed_by_aggregate_id_and_returns_version_and_token() {
    let app = TestApp::spawn().await;
    let customer = app
        .post(
            "/v1/customers",
            Some(&admin()),
            &json!({"customer_id": "c-1", "name": "Ada", "credit_limit": money(5000)}),
            &[],
        )
        .await;
    assert_eq!(customer.status, StatusCode::CREATED, "{:?}", customer.body);
    assert_eq!(customer.body["customer_id"], "c-1");
    assert_eq!(customer.body["version"], 1);
    assert_eq!(customer.headers["location"], "/v1/customers/c-1");
    let token = customer.body["consistency_token"].as_str().unwrap();
    assert_eq!(customer.headers["x-consistency-token"], token);

    let stock = app
        .post(
            "/v1/inventory/apple/stock",
            Some(&admin()),
            &json!({"quantity": 5}),
            &[],
        )
        .await;
    assert_eq!(stock.status, StatusCode::OK, "{:?}", stock.body);
    assert_eq!(
        (stock.body["sku"].as_str(), stock.body["version"].as_i64()),
        (Some("apple"), Some(1))
    );
    let again = app
        .post(
            "/v1/inventory/apple/stock",
            Some(&admin()),
            &json!({"quantity": 5}),
            &[],
        )
        .await;
    assert_eq!(again.body["version"], 2, "versions count up per aggregate");

    let order = app
        .post(
            "/v1/orders",
            Some(&token_for("c-1")),
            &json!({"customer_id": "c-1", "lines": [{"sku": "apple", "quantity": 2, "unit_price": money(150)}]}),
            &[],
        )
        .await;
    assert_eq!(order.status, StatusCode::ACCEPTED, "{:?}", order.body);
    assert_eq!(order.body["status"], "PENDING");
    assert_eq!(order.body["version"], 1);
    let order_id = order.body["order_id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&order_id).unwrap();
    assert_eq!(uuid.get_version_num(), 7, "order ids are UUID v7");
    assert_eq!(
        order.headers["location"],
        format!("/v1/orders/{order_id}").as_str()
    );

    let cancel = app
        .post(
            &format!("/v1/orders/{order_id}/cancel"),
            Some(&token_for("c-1")),
            &json!({"reason": "changed my mind"}),
            &[],
        )
        .await;
    assert_eq!(cancel.status, StatusCode::ACCEPTED, "{:?}", cancel.body);
    assert_eq!(cancel.body["version"], 2);

    // What Kafka holds is what the API said.
    let customers = events(&app.kafka, AggregateKind::Customer).await;
    assert_eq!(customers.len(), 1);
    let envelope = customers[0].envelope.clone().unwrap();
    assert_eq!(
        (
            envelope.event_type.as_str(),
            envelope.aggregate_id.as_str(),
            envelope.version.get()
        ),
        ("CustomerRegistered", "c-1", 1)
    );
    assert_eq!(
        customers[0].partition,
        partition_for(b"c-1", PARTITIONS),
        "keyed by aggregate id"
    );
    let decoded: domain::customer::CustomerEvent = schemas::decode(&customers[0].payload).unwrap();
    assert!(matches!(
        decoded,
        domain::customer::CustomerEvent::CustomerRegistered { .. }
    ));
    let positions: Vec<_> = ConsistencyToken::decode(token, &TokenKey::from_secret(SECRET))
        .unwrap()
        .positions()
        .collect();
    assert_eq!(
        positions,
        vec![(
            AggregateKind::Customer,
            customers[0].partition,
            customers[0].offset
        )]
    );

    let orders = events(&app.kafka, AggregateKind::Order).await;
    let types: Vec<_> = orders
        .iter()
        .map(|s| s.envelope.clone().unwrap().event_type)
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderCancellationRequested"]);
    assert!(orders
        .iter()
        .all(|s| s.partition == partition_for(order_id.as_bytes(), PARTITIONS)));
    let second = orders[1].envelope.clone().unwrap();
    assert_eq!(
        second.predecessor,
        Some(orders[0].envelope.clone().unwrap().event_id),
        "each event names the one it follows"
    );
    assert_eq!(
        events(&app.kafka, AggregateKind::InventoryItem).await.len(),
        2
    );
    app.stop().await;
}

fn token_for(customer: &str) -> String {
    token(customer, "customer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_metrics_and_openapi_are_served() {
    let app = TestApp::spawn().await;
    let health = app.get("/healthz").await;
    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["checks"]["broker"], true);
    assert_eq!(ready.body["checks"]["partitions_assigned"], true);

    seed(&app, "c-1", "apple", 1).await;
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("http_request_duration_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"commands_total{aggregate="customers",command="RegisterCustomer",outcome="accepted"}"#
        ),
        "{metrics}"
    );

    let openapi = app.get("/openapi.json").await;
    assert_eq!(openapi.status, StatusCode::OK);
    let paths = openapi.body["paths"].as_object().unwrap();
    for path in [
        "/v1/customers",
        "/v1/inventory/{sku}/stock",
        "/v1/orders",
        "/v1/orders/{order_id}/cancel",
    ] {
        assert!(paths.contains_key(path), "{path} documented");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_command_prints_a_token_the_api_accepts() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_command-api"))
        .args(["token", "--sub", "admin", "--role", "admin"])
        .env("AUTH_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let app = TestApp::spawn().await;
    let stock = app
        .post(
            "/v1/inventory/pear/stock",
            Some(&printed),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    assert_eq!(stock.status, StatusCode::OK, "{:?}", stock.body);
    app.stop().await;
}
