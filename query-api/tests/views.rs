//! Guarantee 9 (read-your-writes on request) and the read views, end to end: commands through
//! the real command-api, events through the real broker, read models built by the real
//! projectors, views served by query-api.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::AggregateKind;
use platform::consistency::{ConsistencyToken, TokenKey, MAX_POSITIONS, MAX_TOKEN_LEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use test_harness::{TestDatabase, TestKafka};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "query-api-test-secret";

struct Stack {
    kafka: TestKafka,
    db: TestDatabase,
    commands: SocketAddr,
    queries: SocketAddr,
    client: reqwest::Client,
    stop: CancellationToken,
    projectors: Option<CancellationToken>,
}

impl Stack {
    async fn start(with_projectors: bool) -> Self {
        let mut kafka = TestKafka::new();
        kafka.settings.partitions = 3;
        let db = TestDatabase::create(Some(&projectors::startup::MIGRATOR)).await;
        let stop = CancellationToken::new();
        let command_settings = command_api::config::Settings {
            circuit_breaker: platform::resilience::BreakerPolicy::default(),
            addr: "127.0.0.1:0".parse().unwrap(),
            kafka: kafka.settings.clone(),
            jwt_secret: SECRET.into(),
            command_wait: Duration::from_secs(10),
            rate_limit_per_second: 10_000,
            writer_group: format!("{}.command-writers", kafka.settings.topic_prefix),
            writer_kinds: command_api::processor::COMMAND_KINDS.to_vec(),
            // Every aggregate a snapshot holds leaves memory: the tests run the writers' disk path
            // (decision 0012) on every aggregate, not only past a production-sized threshold.
            writer_memory: command_api::processor::WriterMemory {
                state_dir: std::env::temp_dir().join("orderstream-writer-state"),
                resident_aggregates: 0,
            },
        };
        let command_app = command_api::startup::Application::build(command_settings)
            .await
            .unwrap();
        let commands = command_app.local_addr().unwrap();
        let signal = stop.clone();
        tokio::spawn(async move {
            command_app
                .run_until(async move { signal.cancelled().await })
                .await
                .unwrap()
        });
        let query_app = query_api::startup::Application::build(query_api::startup::Settings {
            circuit_breaker: platform::resilience::BreakerPolicy::default(),
            addr: "127.0.0.1:0".parse().unwrap(),
            database_url: db.url.clone(),
            jwt_secret: SECRET.into(),
            topic_prefix: kafka.settings.topic_prefix.clone(),
            rate_limit_per_second: 10_000,
            saga_stuck_after: Duration::from_secs(60),
        })
        .await
        .unwrap();
        let queries = query_app.local_addr().unwrap();
        let signal = stop.clone();
        tokio::spawn(async move {
            query_app
                .run_until(async move { signal.cancelled().await })
                .await
                .unwrap()
        });
        let mut stack = Self {
            kafka,
            db,
            commands,
            queries,
            client: reqwest::Client::new(),
            stop,
            projectors: None,
        };
        stack.wait_ready().await;
        if with_projectors {
            stack.start_projectors();
        }
        stack
    }

    fn start_projectors(&mut self) {
        let token = CancellationToken::new();
        let settings = projectors::startup::Settings {
            database_url: self.db.url.clone(),
            kafka: self.kafka.settings.clone(),
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: projectors::runner::BatchLimits::default(),
        };
        let signal = token.clone();
        tokio::spawn(async move {
            projectors::startup::Application::build(settings)
                .await
                .unwrap()
                .run_until(async move { signal.cancelled().await })
                .await
                .unwrap()
        });
        self.projectors = Some(token);
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            let command = self
                .client
                .get(format!("http://{}/readyz", self.commands))
                .send()
                .await;
            let query = self
                .client
                .get(format!("http://{}/readyz", self.queries))
                .send()
                .await;
            if command.is_ok_and(|r| r.status() == StatusCode::OK)
                && query.is_ok_and(|r| r.status() == StatusCode::OK)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("stack not ready");
    }

    async fn command(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("http://{}{path}", self.commands))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn query(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, String) {
        let mut request = self.client.get(format!("http://{}{path}", self.queries));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            content_type,
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(token) = &self.projectors {
            token.cancel();
        }
    }
}

fn token(subject: &str, role: &str) -> String {
    platform::auth::Auth::new(SECRET, 1)
        .sign(subject, &[role], 3600)
        .unwrap()
}

fn admin() -> String {
    token("admin", "admin")
}

/// How long a read with a token waits for the read models to reach its write in these tests:
/// the projectors of a stack just started may take longer than the 5 s default on a loaded
/// machine, and how long they take is not what these tests measure.
const SETUP_WAIT: (&str, &str) = ("x-consistency-wait-ms", "30000");

/// A consistency token naming `positions`, signed as command-api signs with `secret`.
fn consistency_token(secret: &str, positions: &[(AggregateKind, i32, i64)]) -> String {
    let mut token = ConsistencyToken::default();
    for (kind, partition, offset) in positions {
        token.include(*kind, *partition, *offset);
    }
    token.encode(&TokenKey::from_secret(secret))
}

/// A token no projection will reach: any read that honours it waits out its whole deadline.
fn unreachable_token() -> String {
    consistency_token(
        SECRET,
        &[
            (AggregateKind::Customer, 0, 1_000_000_000),
            (AggregateKind::Order, 0, 1_000_000_000),
        ],
    )
}

/// Asserts a 400 problem+json about the consistency token.
fn assert_token_refused(status: StatusCode, body: &Value, content_type: &str, what: &str) {
    assert_eq!(
        (status, content_type),
        (StatusCode::BAD_REQUEST, "application/problem+json"),
        "{what}: {body}"
    );
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/bad-consistency-token")),
        "{what}: {body}"
    );
}

fn usd(amount: i64) -> Value {
    json!({"amount_minor": amount, "currency": "USD"})
}

async fn register(stack: &Stack, id: &str) -> String {
    let (status, body) = stack
        .command(
            "/v1/customers",
            &admin(),
            json!({"customer_id": id, "name": "Ada", "credit_limit": usd(10_000)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["consistency_token"].as_str().unwrap().to_owned()
}

async fn place(stack: &Stack, customer: &str) -> (String, String) {
    let (status, body) = stack
        .command("/v1/orders", &token(customer, "customer"), json!({"customer_id": customer, "lines": [{"sku": "apple", "quantity": 2, "unit_price": usd(150)}]}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (
        body["order_id"].as_str().unwrap().to_owned(),
        body["consistency_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consistency_token_makes_the_read_wait_for_the_write() {
    let mut stack = Stack::start(false).await;
    let written = register(&stack, "c-1").await;
    // The projectors start only later: the read must wait for them, not answer 404.
    let reader = {
        let (client, url, t) = (
            stack.client.clone(),
            format!("http://{}/v1/customers/c-1", stack.queries),
            written.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .get(url)
                .bearer_auth(admin())
                .header("x-consistency-token", t)
                .header(SETUP_WAIT.0, SETUP_WAIT.1)
                .send()
                .await
                .unwrap();
            (
                response.status(),
                response.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_projectors();
    let (status, body, waited) = reader.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["credit_available"], usd(10_000));
    assert!(
        waited >= Duration::from_millis(400),
        "it waited for the projection ({waited:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_the_read_models_do_not_reach_in_time_is_504() {
    let stack = Stack::start(false).await;
    let written = register(&stack, "c-1").await;
    let started = Instant::now();
    let (status, body, content_type) = stack
        .query(
            "/v1/customers/c-1",
            Some(&admin()),
            &[
                ("x-consistency-token", &written),
                ("x-consistency-wait-ms", "300"),
            ],
        )
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "application/problem+json"),
        "{body}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (status, _, _) = stack.query("/v1/customers/c-1", Some(&admin()), &[]).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "without a token the read answers at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_command_api_did_not_sign_is_400_at_once_never_a_wait() {
    // No projectors: a token that were honoured would hold the read for its whole 30 s.
    let stack = Stack::start(false).await;
    let written = register(&stack, "c-1").await;
    let issued = ConsistencyToken::decode(&written, &TokenKey::from_secret(SECRET)).unwrap();
    let positions: Vec<_> = issued.positions().collect();
    let forged = consistency_token("not-the-secret", &positions);
    let unsigned = URL_SAFE_NO_PAD.encode("v1;customers:0:0");
    let mut altered = URL_SAFE_NO_PAD.decode(&written).unwrap();
    altered[0] ^= 1;
    let altered = URL_SAFE_NO_PAD.encode(altered);
    for (what, raw) in [
        ("signed with another key", forged.as_str()),
        ("the old unsigned format", unsigned.as_str()),
        ("one byte changed", altered.as_str()),
    ] {
        let started = Instant::now();
        let (status, body, content_type) = stack
            .query(
                "/v1/customers/c-1",
                Some(&admin()),
                &[
                    ("x-consistency-token", raw),
                    ("x-consistency-wait-ms", "30000"),
                ],
            )
            .await;
        assert_token_refused(status, &body, &content_type, what);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: refused without waiting ({:?})",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_over_the_position_or_length_bound_is_400() {
    let stack = Stack::start(false).await;
    let too_many: Vec<_> = (0..=MAX_POSITIONS as i32)
        .map(|partition| (AggregateKind::Order, partition, 0))
        .collect();
    let too_many = consistency_token(SECRET, &too_many);
    let too_long = "A".repeat(MAX_TOKEN_LEN + 1);
    for (what, raw) in [
        ("65 signed positions", too_many.as_str()),
        ("over 4 KiB", too_long.as_str()),
    ] {
        let (status, body, content_type) = stack
            .query(
                "/v1/inventory/apple",
                Some(&admin()),
                &[
                    ("x-consistency-token", raw),
                    ("x-consistency-wait-ms", "30000"),
                ],
            )
            .await;
        assert_token_refused(status, &body, &content_type, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_who_may_not_read_the_resource_is_403_before_any_wait() {
    let stack = Stack::start(true).await;
    register(&stack, "c-1").await;
    let (order_id, t) = place(&stack, "c-1").await;
    let (status, body, _) = stack
        .query(
            &format!("/v1/orders/{order_id}"),
            Some(&admin()),
            &[("x-consistency-token", &t), SETUP_WAIT],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the order is in the read model: {body}"
    );
    let never = unreachable_token();
    let intruder = token("c-2", "customer");
    // The token really makes a read the intruder may do wait (to its deadline, then 504).
    let (status, body, _) = stack
        .query(
            "/v1/customers/c-2",
            Some(&intruder),
            &[
                ("x-consistency-token", &never),
                ("x-consistency-wait-ms", "300"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    for path in [
        format!("/v1/orders/{order_id}"),
        "/v1/customers/c-1".into(),
        "/v1/orders?customer_id=c-1".into(),
    ] {
        let started = Instant::now();
        let (status, body, content_type) = stack
            .query(
                &path,
                Some(&intruder),
                &[
                    ("x-consistency-token", &never),
                    ("x-consistency-wait-ms", "30000"),
                ],
            )
            .await;
        assert_eq!(
            (status, content_type.as_str()),
            (StatusCode::FORBIDDEN, "application/problem+json"),
            "{path}: {body}"
        );
        // Not a performance bound: a wait would have lasted 30 s.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path}: refused before waiting ({:?})",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_show_customers_inventory_and_orders() {
    let stack = Stack::start(true).await;
    register(&stack, "c-1").await;
    let (status, stock) = stack
        .command(
            "/v1/inventory/apple/stock",
            &admin(),
            json!({"quantity": 9}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (order_id, written) = place(&stack, "c-1").await;
    let t = stock["consistency_token"].as_str().unwrap().to_owned();
    let (status, item, _) = stack
        .query(
            "/v1/inventory/apple",
            Some(&token("c-1", "customer")),
            &[("x-consistency-token", &t), SETUP_WAIT],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            item["on_hand"].as_i64(),
            item["reserved"].as_i64(),
            item["available"].as_i64()
        ),
        (Some(9), Some(0), Some(9))
    );
    let (status, order, _) = stack
        .query(
            &format!("/v1/orders/{order_id}"),
            Some(&token("c-1", "customer")),
            &[("x-consistency-token", &written), SETUP_WAIT],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["customer_id"], "c-1");
    assert_eq!(order["total"], usd(300));
    assert_eq!(order["lines"][0]["sku"], "apple");
    assert_eq!(order["version"], 1);
    assert!(order["created_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_are_newest_first_with_no_duplicates_or_gaps_while_orders_keep_arriving() {
    let stack = Stack::start(true).await;
    let mut before = HashSet::new();
    let mut last = String::new();
    for _ in 0..25 {
        let (id, t) = place(&stack, "c-1").await;
        before.insert(id);
        last = t;
    }
    let (status, _, _) = stack
        .query(
            "/v1/orders?limit=1",
            Some(&admin()),
            &[("x-consistency-token", &last), SETUP_WAIT],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the read models reached the last order"
    );
    let customer = token("c-1", "customer");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/orders?limit=10&cursor={c}"),
            None => "/v1/orders?limit=10".to_owned(),
        };
        let (status, page, _) = stack.query(&path, Some(&customer), &[]).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        let times: Vec<&str> = items
            .iter()
            .map(|i| i["created_at"].as_str().unwrap())
            .collect();
        let mut sorted = times.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(times, sorted, "newest first");
        seen.extend(
            items
                .iter()
                .map(|i| i["order_id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        // New orders arrive between pages.
        place(&stack, "c-1").await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no order on two pages");
    assert!(
        before.iter().all(|id| unique.contains(id)),
        "every order that existed when paging began was seen"
    );
    assert!(pages >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customers_read_only_their_own_orders_and_view() {
    let stack = Stack::start(true).await;
    register(&stack, "c-1").await;
    let written = register(&stack, "c-2").await;
    let (order_id, t) = place(&stack, "c-1").await;
    for (path, t) in [
        (format!("/v1/orders/{order_id}"), &t),
        ("/v1/customers/c-2".into(), &written),
    ] {
        let (status, _, _) = stack
            .query(
                &path,
                Some(&admin()),
                &[("x-consistency-token", t), SETUP_WAIT],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "the read models reached {path}");
    }
    let intruder = token("c-2", "customer");
    for path in [
        format!("/v1/orders/{order_id}"),
        "/v1/customers/c-1".into(),
        "/v1/orders?customer_id=c-1".into(),
    ] {
        let (status, body, content_type) = stack.query(&path, Some(&intruder), &[]).await;
        assert_eq!(
            (status, content_type.as_str()),
            (StatusCode::FORBIDDEN, "application/problem+json"),
            "{path}: {body}"
        );
    }
    let (status, page, _) = stack.query("/v1/orders", Some(&intruder), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        0,
        "c-2's own (empty) listing"
    );
    let (status, _, _) = stack.query("/v1/customers/c-2", Some(&intruder), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = stack.query("/v1/customers/c-2", None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_ids_are_404_and_bad_parameters_are_clear_errors() {
    let stack = Stack::start(true).await;
    let valid = consistency_token(SECRET, &[(AggregateKind::InventoryItem, 0, 0)]);
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, StatusCode);
    let cases: Vec<Case<'_>> = vec![
        (
            format!("/v1/orders/{}", uuid::Uuid::now_v7()),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/orders/not-a-uuid".into(),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        ("/v1/customers/nobody".into(), vec![], StatusCode::NOT_FOUND),
        (
            "/v1/inventory/nothing".into(),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/orders?limit=0".into(),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/orders?limit=101".into(),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/orders?limit=ten".into(),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/orders?status=SHIPPED".into(),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/orders?cursor=garbage".into(),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/inventory/apple".into(),
            vec![("x-consistency-token", "not-a-token")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/inventory/apple".into(),
            vec![
                ("x-consistency-token", valid.as_str()),
                ("x-consistency-wait-ms", "30001"),
            ],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, headers, expected) in cases {
        let (status, body, content_type) = stack.query(&path, Some(&admin()), &headers).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert_eq!(body["status"], expected.as_u16());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_metrics_and_openapi_are_served() {
    let stack = Stack::start(false).await;
    let (status, ready, _) = stack.query("/readyz", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["checks"]["migrations"], true);
    stack.query("/v1/inventory/x", Some(&admin()), &[]).await;
    let metrics = stack
        .client
        .get(format!("http://{}/metrics", stack.queries))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    let (status, doc, _) = stack.query("/openapi.json", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/orders",
        "/v1/orders/{order_id}",
        "/v1/customers/{customer_id}",
        "/v1/inventory/{sku}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    let _ = &stack.kafka;
}
