//! Resilience on query-api's one dependency: while PostgreSQL is unreachable the read views
//! answer 503 problem+json, the circuit breaker opens after a few failures and stops sending
//! requests to the database at all, and once it is back a trial request closes the breaker.
//!
//! The database is real; the outage is a TCP proxy in front of it that the test cuts and
//! restores (it drops every open connection and refuses new ones while cut).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use test_harness::TestDatabase;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SECRET: &str = "query-api-resilience-secret";

/// A TCP proxy to Postgres that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: open connections end when it changes.
    cuts: watch::Sender<u64>,
    /// Connections that reached the database through the proxy.
    forwarded: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (up_flag, cut_signal, count) = (up.clone(), cuts.clone(), forwarded.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up_flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let mut cut = cut_signal.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cuts,
            forwarded,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"));
    format!("{scheme}://{}{addr}/{path}", user.unwrap_or_default())
}

fn upstream_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_the_breaker_opens_fails_fast_without_calling_it_and_closes_after_recovery(
) {
    let db = TestDatabase::create(Some(&projectors::app::MIGRATOR)).await;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    let app = query_api::startup::Application::build(query_api::startup::Settings {
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
    let attempts_before = proxy.forwarded.load(Ordering::SeqCst);
    proxy.restore();
    for _ in 0..5 {
        assert_eq!(read().await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        proxy.forwarded.load(Ordering::SeqCst),
        attempts_before,
        "an open breaker does not call the database"
    );
    assert!(metric(&metrics().await, REJECTED) >= 5.0);

    // Recovered: after its pause the breaker lets a trial through, which closes it.
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = read().await.0;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::NOT_FOUND, "reads work again");
    assert_eq!(metric(&metrics().await, OPEN), 0.0, "closed again");
}
