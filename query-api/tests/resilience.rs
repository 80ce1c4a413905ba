//! Resilience on query-api's one dependency: while PostgreSQL is unreachable the read views
//! answer 503 problem+json, the circuit breaker opens after a few failures and stops sending
//! requests to the database at all, and once it is back a trial request closes the breaker.
//!
//! The database is real; the outage is a TCP proxy in front of it that the test cuts and
//! restores (it drops every open connection and refuses new ones while cut).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use test_harness::cut::via;
use test_harness::{CuttableProxy, TestDatabase};

const SECRET: &str = "query-api-resilience-secret";
/// The breaker's first open period here: 5-10 s (jittered), so the reads that prove it open
/// never run into its trial on a slow machine (the default's 1-2 s would allow that after a
/// stall of about a second).
const BREAKER_OPEN: Duration = Duration::from_secs(10);

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_the_breaker_opens_fails_fast_without_calling_it_and_closes_after_recovery(
) {
    let db = TestDatabase::create(Some(&projectors::startup::MIGRATOR)).await;
    let proxy = CuttableProxy::start(test_harness::cut::upstream_of(&db.url)).await;
    let app = query_api::startup::Application::build(query_api::startup::Settings {
        circuit_breaker: platform::resilience::BreakerPolicy::default()
            .first_open_for(BREAKER_OPEN),
        addr: "127.0.0.1:0".parse().unwrap(),
        database_url: via(&db.url, proxy.addr),
        jwt_secret: SECRET.into(),
        topic_prefix: "resilience".into(),
        rate_limit_per_second: 10_000,
        saga_stuck_after: Duration::from_secs(60),
    })
    .await
    .unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    tokio::spawn(async move { app.run_until(std::future::pending()).await });
    let token = platform::auth::Auth::new(SECRET, 1)
        .sign("operator", &["admin"], 3600)
        .unwrap();
    let client = reqwest::Client::new();
    let read = || async {
        let response = client
            .get(format!("{base}/v1/inventory/nothing-here"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers()["content-type"].clone();
        (status, content_type)
    };
    let metrics = || async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    const OPEN: &str = r#"circuit_breaker_open{dependency="postgres"}"#;
    const REJECTED: &str = r#"circuit_breaker_rejections_total{dependency="postgres"}"#;

    // Healthy: the database answers (an unknown item is a 404).
    assert_eq!(read().await.0, StatusCode::NOT_FOUND);
    assert_eq!(metric(&metrics().await, OPEN), 0.0);

    // Down: every read is a 503 problem+json; after three the breaker is open.
    proxy.cut();
    for _ in 0..3 {
        let (status, content_type) = read().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, "application/problem+json");
    }
    assert_eq!(
        metric(&metrics().await, OPEN),
        1.0,
        "open after three failures"
    );

    // Open: reads are refused without a single connection attempt reaching the proxy.
    let attempts_before = proxy.forwarded();
    proxy.restore();
    for _ in 0..5 {
        assert_eq!(read().await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        proxy.forwarded(),
        attempts_before,
        "an open breaker does not call the database"
    );
    assert!(metric(&metrics().await, REJECTED) >= 5.0);

    // Recovered: after its pause the breaker lets a trial through, which closes it.
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..200 {
        status = read().await.0;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::NOT_FOUND, "reads work again");
    assert_eq!(metric(&metrics().await, OPEN), 0.0, "closed again");
}
