//! Operating the services (API.md "Every service"), each running as its own process exactly as
//! its binary runs: every service's `/metrics` carries the figures operators watch and they move
//! with traffic; SIGTERM under load stops each service cleanly (exit 0, bounded time) and, after
//! a restart, no acknowledged command is lost and no event is applied twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::AggregateKind;
use reqwest::StatusCode;
use serde_json::json;
use support::*;

fn processes() -> Options {
    Options {
        all_processes: true,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_serves_prometheus_metrics_that_move_with_traffic() {
    let stack = Stack::start_with(processes()).await;
    let (command_api, query_api, projectors, orchestrator) = (
        stack.command_api.as_ref().unwrap(),
        stack.query_api.as_ref().unwrap(),
        stack.projectors.as_ref().unwrap(),
        stack.orchestrator(),
    );

    // Traffic: a saga to its end, a read that waits for a consistency token, a poison record.
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    let order = stack.place_order("ada", &[line("apple", 2, 150)]).await;
    stack.settled(&order, APPROVED).await;
    let added = stack
        .client()
        .post(stack.command_url("/v1/inventory/apple/stock"))
        .bearer_auth(stack.admin_token())
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    let token = added.headers()["x-consistency-token"].clone();
    let read = stack
        .client()
        .get(stack.query_url("/v1/inventory/apple"))
        .bearer_auth(stack.admin_token())
        .header("x-consistency-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    stack.given_poison_order_event().await;

    // command-api: requests, their latency, command outcomes, the writers' lag.
    let text = command_api
        .metrics_when("writer lag", |m| m.contains("kafka_consumer_lag{"))
        .await;
    assert!(
        metric(
            &text,
            "http_requests_total",
            &[r#"route="/v1/orders""#, r#"status="202""#]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "http_request_duration_seconds_count",
            &[r#"route="/v1/orders""#]
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "commands_total",
            &[r#"command="PlaceOrder""#, r#"outcome="accepted""#]
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "commands_total",
            &[r#"command="ReserveStock""#, r#"outcome="accepted""#]
        ) >= 1.0
    );
    assert!(text.contains("kafka_producer_errors_total"), "{text}");

    // query-api: requests, their latency, consistency waits.
    let text = query_api.metrics().await;
    assert!(
        metric(
            &text,
            "http_requests_total",
            &[r#"route="/v1/orders/{order_id}""#, r#"status="200""#]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "http_request_duration_seconds_count",
            &[r#"route="/v1/inventory/{sku}""#]
        ) >= 1.0
    );
    assert!(
        metric(&text, "consistency_wait_seconds_count", &[]) >= 1.0,
        "{text}"
    );

    // projectors: events applied, checkpoints, lag, dead letters.
    let text = projectors
        .metrics_when("the poison record dead-lettered, and lag", |m| {
            metric(m, "dead_letters_total", &[r#"consumer="orders""#]) >= 1.0
                && m.contains("kafka_consumer_lag{")
        })
        .await;
    assert!(
        metric(
            &text,
            "projector_events_applied_total",
            &[r#"projection="orders""#]
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "projection_checkpoint",
            &[r#"projection="inventory""#]
        ) >= 3.0,
        "{text}"
    );
    assert!(metric(&text, "projector_batch_seconds_count", &[]) >= 1.0);
    assert!(text.contains("kafka_producer_errors_total"), "{text}");

    // saga-orchestrator: sagas by state, step latency, commands by outcome, dead letters, lag.
    let text = orchestrator
        .metrics_when("the saga and the poison record", |m| {
            metric(m, "sagas", &[r#"state="APPROVED""#]) >= 1.0
                && metric(
                    m,
                    "dead_letters_total",
                    &[r#"consumer="saga-orchestrator""#],
                ) >= 1.0
                && m.contains("kafka_consumer_lag{")
        })
        .await;
    assert!(
        metric(
            &text,
            "saga_step_duration_seconds_count",
            &[r#"step="reserve-stock""#]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "saga_commands_total", &[r#"outcome="accepted""#]) >= 3.0,
        "{text}"
    );
    assert!(metric(&text, "sagas_finished_total", &[r#"state="APPROVED""#]) >= 1.0);
    assert!(text.contains("kafka_producer_errors_total"), "{text}");

    // Every service answers its probes.
    for service in [command_api, query_api, projectors, orchestrator] {
        for probe in ["/healthz", "/readyz"] {
            let status = stack
                .client()
                .get(service.url(probe))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::OK, "{}", service.url(probe));
        }
    }
}

/// What one client request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Acknowledged,
    /// Refused, timed out, or the connection went away: the outcome is unknown to the client.
    Unknown,
}

/// One unit of stock, as an admin, with an Idempotency-Key.
async fn add_one(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    sku: &str,
    key: &str,
) -> Answer {
    let response = client
        .post(format!("{base}/v1/inventory/{sku}/stock"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"quantity": 1}))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    match response {
        Ok(response) if response.status() == StatusCode::OK => Answer::Acknowledged,
        _ => Answer::Unknown,
    }
}

const SKUS: [&str; 4] = ["sku-a", "sku-b", "sku-c", "sku-d"];
const CLIENTS: usize = 12;
/// How long a service may take to stop after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);

type Answers = Arc<std::sync::Mutex<BTreeMap<String, (&'static str, Answer)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_cleanly_and_after_restart_no_acknowledged_command_is_lost_or_applied_twice(
) {
    let mut stack = Stack::start_with(processes()).await;

    // Clients add stock one unit at a time, each request with its own Idempotency-Key.
    let running = Arc::new(AtomicBool::new(true));
    let answers: Answers = Arc::default();
    let base = stack.command_url("");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (running, answers, base) = (running.clone(), answers.clone(), base.clone());
            let (http, token) = (stack.client().clone(), stack.admin_token().to_owned());
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::SeqCst) {
                    let (key, sku) = (format!("c{client}-{n}"), SKUS[(client + n) % SKUS.len()]);
                    let answer = add_one(&http, &base, &token, sku, &key).await;
                    answers.lock().unwrap().insert(key, (sku, answer));
                    if answer == Answer::Unknown {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_stop = answers.lock().unwrap().len();

    // SIGTERM to the write side and the read side while commands and events are in flight.
    let command_api = stack.command_api.as_mut().unwrap();
    let projectors = stack.projectors.as_mut().unwrap();
    command_api.terminate();
    projectors.terminate();
    let (command_exit, projector_exit) = tokio::join!(
        command_api.exit_within(STOP_LIMIT),
        projectors.exit_within(STOP_LIMIT)
    );
    let command_exit = command_exit.expect("command-api stopped within the limit");
    let projector_exit = projector_exit.expect("projectors stopped within the limit");
    assert!(
        command_exit.success(),
        "command-api exited with {command_exit}"
    );
    assert!(
        projector_exit.success(),
        "projectors exited with {projector_exit}"
    );

    // Both come back (on the same ports) and the load goes on.
    command_api.restart().await;
    projectors.restart().await;
    assert_eq!(
        stack.command_url(""),
        base,
        "command-api came back on its port"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.store(false, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }

    // A client that got no answer retries with the same key: it is applied once, not twice.
    let answers: Vec<(String, &str, Answer)> = answers
        .lock()
        .unwrap()
        .iter()
        .map(|(key, (sku, answer))| (key.clone(), *sku, *answer))
        .collect();
    let acknowledged_first = answers
        .iter()
        .filter(|a| a.2 == Answer::Acknowledged)
        .count();
    assert!(before_stop > 0 && acknowledged_first > 0, "the load ran");
    for (key, sku, answer) in &answers {
        if *answer == Answer::Unknown {
            let mut retried = Answer::Unknown;
            for _ in 0..20 {
                retried = add_one(stack.client(), &base, stack.admin_token(), sku, key).await;
                if retried == Answer::Acknowledged {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert_eq!(retried, Answer::Acknowledged, "retry of {key}");
        }
    }

    // The log holds every acknowledged command exactly once.
    let admin = command_api::auth::Caller {
        subject: "operator".into(),
        roles: vec!["admin".into()],
    };
    let mut expected: HashMap<&str, usize> = HashMap::new();
    for sku in SKUS {
        let events = stack
            .accepted_events(AggregateKind::InventoryItem, sku)
            .await;
        let mut applied: HashMap<&str, usize> = HashMap::new();
        for event in &events {
            *applied.entry(event.command_id.as_str()).or_default() += 1;
        }
        let keys: Vec<&String> = answers
            .iter()
            .filter(|a| a.1 == sku)
            .map(|a| &a.0)
            .collect();
        let route = format!("POST /v1/inventory/{sku}/stock");
        for key in &keys {
            let id = command_api::routes::command_id(&admin, &route, Some(key));
            assert_eq!(applied.get(id.as_str()), Some(&1), "{key} on {sku}");
        }
        assert_eq!(
            events.len(),
            keys.len(),
            "{sku}: no event without a command"
        );
        expected.insert(sku, keys.len());
    }

    // The restarted projectors resumed from their checkpoint: each event counted once.
    for (sku, count) in expected {
        let mut seen = serde_json::Value::Null;
        for _ in 0..300 {
            let (status, item) = stack.get(&format!("/v1/inventory/{sku}")).await;
            if status == StatusCode::OK && item["version"] == count {
                seen = item;
                break;
            }
            seen = item;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen["on_hand"], count, "{sku}: {seen}");
        assert_eq!(seen["version"], count, "{sku}: {seen}");
    }
    println!(
        "{} requests, {acknowledged_first} acknowledged at first, {before_stop} before SIGTERM",
        answers.len()
    );
}
