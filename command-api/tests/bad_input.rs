//! Guarantee 10: bad input gets a clear problem+json error with the right status and changes
//! nothing. One test per case; each asserts the response and that no event was appended (and,
//! for requests refused at the HTTP edge, that no command even reached Kafka).

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

/// Asserts a problem+json response with `status`, and returns its body.
fn problem(reply: &Reply, status: StatusCode) -> &Value {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert_eq!(reply.body["status"], status.as_u16());
    assert!(
        reply.body["title"].is_string()
            && reply.body["detail"].is_string()
            && reply.body["type"].is_string()
    );
    &reply.body
}

/// The app, a baseline of what Kafka holds, and a check that nothing was added since.
struct Case {
    app: TestApp,
    events: i64,
    commands: i64,
}

impl Case {
    async fn new() -> Self {
        let app = TestApp::spawn().await;
        seed(&app, "c-1", "apple", 5).await;
        let (events, commands) = (all_events(&app.kafka), all_commands(&app.kafka));
        Self {
            app,
            events,
            commands,
        }
    }

    fn nothing_appended(&self) {
        assert_eq!(
            all_events(&self.app.kafka),
            self.events,
            "no event appended"
        );
    }

    /// Refused at the edge: not even a command was sent.
    fn nothing_sent(&self) {
        self.nothing_appended();
        assert_eq!(
            all_commands(&self.app.kafka),
            self.commands,
            "no command sent"
        );
    }

    async fn order(&self, token: &str, body: Value) -> Reply {
        self.app.post("/v1/orders", Some(token), &body, &[]).await
    }
}

fn line(sku: &str, quantity: i64, amount: i64, currency: &str) -> Value {
    json!({"sku": sku, "quantity": quantity, "unit_price": {"amount_minor": amount, "currency": currency}})
}

fn c1() -> String {
    token("c-1", "customer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_json_is_400() {
    let case = Case::new().await;
    let response = case
        .app
        .client
        .post(case.app.url("/v1/orders"))
        .bearer_auth(c1())
        .header("content-type", "application/json")
        .body("{\"customer_id\": ")
        .send()
        .await
        .unwrap();
    problem(&reply(response).await, StatusCode::BAD_REQUEST);
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_is_not_json_is_415() {
    let case = Case::new().await;
    let response = case
        .app
        .client
        .post(case.app.url("/v1/customers"))
        .bearer_auth(admin())
        .header("content-type", "text/plain")
        .body("customer_id=c-2")
        .send()
        .await
        .unwrap();
    problem(&reply(response).await, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_field_is_422_naming_it() {
    let case = Case::new().await;
    let body = json!({"customer_id": "c-2", "name": "Bo", "credit_limit": money(1), "vip": true});
    let reply = case
        .app
        .post("/v1/customers", Some(&admin()), &body, &[])
        .await;
    let body = problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["errors"]["vip"][0]
            .as_str()
            .unwrap()
            .contains("unknown field `vip`"),
        "{body}"
    );
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_type_is_422_naming_the_field() {
    let case = Case::new().await;
    let reply = case
        .order(&c1(), json!({"customer_id": "c-1", "lines": [{"sku": "apple", "quantity": 1.5, "unit_price": money(1)}]}))
        .await;
    let body = problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["lines[0].quantity"].is_array(), "{body}");
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_customer_id_is_422() {
    let case = Case::new().await;
    let body = json!({"customer_id": "has spaces", "name": "Bo", "credit_limit": money(1)});
    let reply = case
        .app
        .post("/v1/customers", Some(&admin()), &body, &[])
        .await;
    assert!(problem(&reply, StatusCode::UNPROCESSABLE_ENTITY)["errors"]["customer_id"].is_array());
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_sku_is_422() {
    let case = Case::new().await;
    let reply = case
        .app
        .post(
            "/v1/inventory/not%20valid/stock",
            Some(&admin()),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    assert!(problem(&reply, StatusCode::UNPROCESSABLE_ENTITY)["errors"]["sku"].is_array());
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quantity_below_one_is_422() {
    let case = Case::new().await;
    let stock = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            Some(&admin()),
            &json!({"quantity": 0}),
            &[],
        )
        .await;
    assert!(problem(&stock, StatusCode::UNPROCESSABLE_ENTITY)["errors"]["quantity"].is_array());
    let order = case
        .order(
            &c1(),
            json!({"customer_id": "c-1", "lines": [line("apple", -2, 100, "USD")]}),
        )
        .await;
    assert!(
        problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]["lines[0].quantity"].is_array()
    );
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn negative_money_is_422() {
    let case = Case::new().await;
    let customer = json!({"customer_id": "c-2", "name": "Bo", "credit_limit": money(-1)});
    let reply = case
        .app
        .post("/v1/customers", Some(&admin()), &customer, &[])
        .await;
    assert!(problem(&reply, StatusCode::UNPROCESSABLE_ENTITY)["errors"]
        ["credit_limit.amount_minor"]
        .is_array());
    let order = case
        .order(
            &c1(),
            json!({"customer_id": "c-1", "lines": [line("apple", 1, -100, "USD")]}),
        )
        .await;
    assert!(problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]
        ["lines[0].unit_price.amount_minor"]
        .is_array());
    case.nothing_sent();
}

/// Above the documented maximum a price could make an order's total overflow; it is refused
/// where it is sent, before any command exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn money_above_the_documented_maximum_is_422() {
    let case = Case::new().await;
    let too_much = command_api::dto::MAX_AMOUNT_MINOR + 1;
    let customer = json!({"customer_id": "c-2", "name": "Bo", "credit_limit": money(too_much)});
    let reply = case
        .app
        .post("/v1/customers", Some(&admin()), &customer, &[])
        .await;
    assert!(problem(&reply, StatusCode::UNPROCESSABLE_ENTITY)["errors"]
        ["credit_limit.amount_minor"]
        .is_array());
    let order = case
        .order(
            &c1(),
            json!({"customer_id": "c-1", "lines": [line("apple", 1, too_much, "USD")]}),
        )
        .await;
    assert!(problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]
        ["lines[0].unit_price.amount_minor"]
        .is_array());
    case.nothing_sent();
}

/// JSON Schema's integers include `5.0`; a fraction is a type error naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fractional_quantity_is_422_naming_the_field() {
    let case = Case::new().await;
    let order = case
        .order(
            &c1(),
            json!({"customer_id": "c-1", "lines": [{"sku": "apple", "quantity": 1.5, "unit_price": {"amount_minor": 100, "currency": "USD"}}]}),
        )
        .await;
    assert!(
        problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]["lines[0].quantity"].is_array()
    );
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_currency_code_is_422() {
    let case = Case::new().await;
    let order = case
        .order(
            &c1(),
            json!({"customer_id": "c-1", "lines": [line("apple", 1, 100, "dollars")]}),
        )
        .await;
    assert!(problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]
        ["lines[0].unit_price.currency"]
        .is_array());
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_currencies_in_one_order_are_422() {
    let case = Case::new().await;
    let order = case
        .order(&c1(), json!({"customer_id": "c-1", "lines": [line("apple", 1, 100, "USD"), line("pear", 1, 100, "EUR")]}))
        .await;
    assert!(problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]
        ["lines[1].unit_price.currency"]
        .is_array());
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_without_lines_is_422() {
    let case = Case::new().await;
    let order = case
        .order(&c1(), json!({"customer_id": "c-1", "lines": []}))
        .await;
    assert!(problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]["lines"].is_array());
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sku_repeated_across_lines_is_422_from_the_domain_and_appends_nothing() {
    let case = Case::new().await;
    let order = case
        .order(&c1(), json!({"customer_id": "c-1", "lines": [line("apple", 1, 100, "USD"), line("apple", 2, 100, "USD")]}))
        .await;
    assert!(problem(&order, StatusCode::UNPROCESSABLE_ENTITY)["errors"]["lines[1].sku"].is_array());
    case.nothing_appended();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_an_unknown_order_is_404() {
    let case = Case::new().await;
    let unknown = uuid::Uuid::now_v7();
    let reply = case
        .app
        .post(
            &format!("/v1/orders/{unknown}/cancel"),
            Some(&admin()),
            &json!({}),
            &[],
        )
        .await;
    problem(&reply, StatusCode::NOT_FOUND);
    let not_a_uuid = case
        .app
        .post("/v1/orders/nope/cancel", Some(&admin()), &json!({}), &[])
        .await;
    problem(&not_a_uuid, StatusCode::NOT_FOUND);
    case.nothing_appended();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_token_is_401() {
    let case = Case::new().await;
    let reply = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            None,
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    problem(&reply, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_401() {
    let case = Case::new().await;
    let expired = command_api::auth::Auth::new(SECRET, 1)
        .sign("admin", &["admin"], -3600)
        .unwrap();
    let reply = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            Some(&expired),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    assert!(problem(&reply, StatusCode::UNAUTHORIZED)["detail"]
        .as_str()
        .unwrap()
        .contains("expired"));
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_token_is_401() {
    let case = Case::new().await;
    let forged = command_api::auth::Auth::new("someone-elses-secret", 1)
        .sign("admin", &["admin"], 3600)
        .unwrap();
    let reply = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            Some(&forged),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    problem(&reply, StatusCode::UNAUTHORIZED);
    let garbage = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            Some("not.a.jwt"),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    problem(&garbage, StatusCode::UNAUTHORIZED);
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_customers_token_is_403() {
    let case = Case::new().await;
    let placed = case
        .order(
            &c1(),
            json!({"customer_id": "c-1", "lines": [line("apple", 1, 100, "USD")]}),
        )
        .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED);
    let (events, commands) = (all_events(&case.app.kafka), all_commands(&case.app.kafka));
    let intruder = token("c-2", "customer");
    let place_for_other = case
        .order(
            &intruder,
            json!({"customer_id": "c-1", "lines": [line("apple", 1, 100, "USD")]}),
        )
        .await;
    problem(&place_for_other, StatusCode::FORBIDDEN);
    assert_eq!(
        all_commands(&case.app.kafka),
        commands,
        "refused at the edge"
    );
    let order_id = placed.body["order_id"].as_str().unwrap();
    let cancel_other = case
        .app
        .post(
            &format!("/v1/orders/{order_id}/cancel"),
            Some(&intruder),
            &json!({}),
            &[],
        )
        .await;
    problem(&cancel_other, StatusCode::FORBIDDEN);
    assert_eq!(all_events(&case.app.kafka), events, "no event appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_may_not_use_admin_endpoints() {
    let case = Case::new().await;
    let stock = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            Some(&c1()),
            &json!({"quantity": 1}),
            &[],
        )
        .await;
    problem(&stock, StatusCode::FORBIDDEN);
    let register = case
        .app
        .post(
            "/v1/customers",
            Some(&c1()),
            &json!({"customer_id": "c-9", "name": "X", "credit_limit": money(1)}),
            &[],
        )
        .await;
    problem(&register, StatusCode::FORBIDDEN);
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_over_64_kib_is_413() {
    let case = Case::new().await;
    let huge =
        json!({"customer_id": "c-2", "name": "x".repeat(70 * 1024), "credit_limit": money(1)});
    let reply = case
        .app
        .post("/v1/customers", Some(&admin()), &huge, &[])
        .await;
    problem(&reply, StatusCode::PAYLOAD_TOO_LARGE);
    case.nothing_sent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_requests_from_one_subject_are_429_with_retry_after() {
    let kafka = kafka();
    let app = TestApp::spawn_on(&kafka, |s| s.rate_limit_per_second = 1).await;
    let body = json!({"quantity": 1});
    let mut statuses = vec![];
    let mut limited = None;
    for _ in 0..5 {
        let reply = app
            .post("/v1/inventory/apple/stock", Some(&admin()), &body, &[])
            .await;
        statuses.push(reply.status);
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    problem(&limited, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let accepted = statuses.iter().filter(|s| **s == StatusCode::OK).count() as i64;
    assert_eq!(
        all_events(&kafka),
        accepted,
        "only the admitted requests appended"
    );
    // Another subject has its own budget.
    let other = app
        .post(
            "/v1/inventory/apple/stock",
            Some(&token("ops", "admin")),
            &body,
            &[],
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_if_match_and_idempotency_key_headers_are_400() {
    let case = Case::new().await;
    let body = json!({"quantity": 1});
    let bad_if_match = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            Some(&admin()),
            &body,
            &[("if-match", "\"three\"")],
        )
        .await;
    problem(&bad_if_match, StatusCode::BAD_REQUEST);
    let long_key = "k".repeat(300);
    let bad_key = case
        .app
        .post(
            "/v1/inventory/apple/stock",
            Some(&admin()),
            &body,
            &[("idempotency-key", long_key.as_str())],
        )
        .await;
    problem(&bad_key, StatusCode::BAD_REQUEST);
    case.nothing_sent();
}
