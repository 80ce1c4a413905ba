//! Distributed tracing (API.md "Every service"): one placed order yields one trace, carried
//! through Kafka headers, that contains the HTTP request, the command, its events, every saga
//! step and compensation, the participants' commands and the projection updates; and a service
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` set exports its spans over OTLP/HTTP.
//!
//! All four services run in this process with an in-memory span exporter; the test sends its
//! own `traceparent`, so the trace it looks for is the one it started.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::*;

/// The process-wide exporter: the subscriber can be installed once per process.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        // Kept for the life of the process: spans are exported as they end.
        std::mem::forget(platform::telemetry::install("scenario", Some(provider)));
        exporter
    })
}

/// A fresh trace id and the `traceparent` of a (remote) root span in it.
fn new_trace() -> (TraceId, SpanId, String) {
    let trace = uuid::Uuid::now_v7().simple().to_string();
    let span = format!("{:016x}", rand_u64());
    let traceparent = format!("00-{trace}-{span}-01");
    (
        TraceId::from_hex(&trace).unwrap(),
        SpanId::from_hex(&span).unwrap(),
        traceparent,
    )
}

fn rand_u64() -> u64 {
    let id = uuid::Uuid::new_v4();
    u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap()) | 1
}

/// The spans of one trace, once every expected name has shown up (projections end their spans
/// when their transaction commits, a moment after the view changes).
async fn trace_with(trace_id: TraceId, expected: &[&str]) -> Vec<SpanData> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans: Vec<SpanData> = exporter()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .collect();
        let names: HashSet<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        let missing: Vec<&&str> = expected.iter().filter(|n| !names.contains(**n)).collect();
        if missing.is_empty() {
            return spans;
        }
        if Instant::now() > deadline {
            let mut names: Vec<&str> = names.into_iter().collect();
            names.sort_unstable();
            panic!("trace lacks {missing:?}; it has {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every span's parent is in the trace (one tree), rooted at the caller's span.
fn assert_one_tree(spans: &[SpanData], root_parent: SpanId) {
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    let orphans: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id != root_parent && !ids.contains(&s.parent_span_id))
        .map(|s| s.name.as_ref())
        .collect();
    assert!(orphans.is_empty(), "spans outside the tree: {orphans:?}");
    let roots: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == root_parent)
        .map(|s| s.name.as_ref())
        .collect();
    assert_eq!(
        roots,
        ["POST /v1/orders"],
        "the HTTP request is the only root"
    );
}

fn stack_options() -> Options {
    Options {
        orchestrator_in_process: true,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_placed_order_yields_one_trace_from_http_through_saga_to_projections() {
    exporter();
    let stack = Stack::start_with(stack_options()).await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    stack.given_stock("pear", 5).await;

    let (trace_id, caller_span, traceparent) = new_trace();
    let order = stack
        .place_order_with(
            "ada",
            &[line("apple", 2, 150), line("pear", 1, 400)],
            &[("traceparent", &traceparent)],
        )
        .await;
    stack.settled(&order, APPROVED).await;

    let spans = trace_with(
        trace_id,
        &[
            // The HTTP request and the command it sends.
            "POST /v1/orders",
            "send PlaceOrder",
            "handle PlaceOrder",
            "append OrderPlaced",
            // The saga: started by the order's event, then every step.
            "saga on OrderPlaced",
            "saga step reserve-stock/0",
            "saga step reserve-stock/1",
            "saga step reserve-credit",
            "saga step approve",
            // The participants' commands and events.
            "handle ReserveStock",
            "append StockReserved",
            "handle ReserveCredit",
            "append CreditReserved",
            "handle ApproveOrder",
            "append OrderApproved",
            // The projections.
            "project orders OrderPlaced",
            "project orders OrderApproved",
            "project inventory StockReserved",
            "project customers CreditReserved",
            "project order_sagas SagaStarted",
        ],
    )
    .await;
    assert_one_tree(&spans, caller_span);
    let kinds: HashMap<&str, String> = spans
        .iter()
        .map(|s| (s.name.as_ref(), format!("{:?}", s.span_kind)))
        .collect();
    assert_eq!(kinds["POST /v1/orders"], "Server");
    assert_eq!(kinds["send PlaceOrder"], "Producer");
    assert_eq!(kinds["handle PlaceOrder"], "Consumer");
    assert_eq!(kinds["project orders OrderPlaced"], "Consumer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compensated_order_has_its_compensations_in_the_same_trace() {
    exporter();
    let stack = Stack::start_with(stack_options()).await;
    stack.given_customer("bob", 100).await;
    stack.given_stock("plum", 5).await;

    let (trace_id, caller_span, traceparent) = new_trace();
    let order = stack
        .place_order_with(
            "bob",
            &[line("plum", 2, 500)],
            &[("traceparent", &traceparent)],
        )
        .await;
    stack.settled(&order, REJECTED).await;

    let spans = trace_with(
        trace_id,
        &[
            "POST /v1/orders",
            "saga step reserve-stock/0",
            "saga step reserve-credit",
            // Credit refused: the stock is released and the order rejected.
            "saga step release-stock/0",
            "handle ReleaseStock",
            "append StockReleased",
            "saga step reject",
            "append OrderRejected",
            "project orders OrderRejected",
            "project inventory StockReleased",
        ],
    )
    .await;
    assert_one_tree(&spans, caller_span);
}

/// What an OTLP/HTTP collector received: (path, content type, body) per request.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn fake_collector() -> (std::net::SocketAddr, Received) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Uri};
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let sink = sink.clone();
        async move {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            sink.lock()
                .unwrap()
                .push((uri.path().to_owned(), content_type, body.to_vec()));
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_with_an_otlp_endpoint_exports_its_spans_of_the_callers_trace() {
    let (collector, received) = fake_collector().await;
    let stack = Stack::start_with(Options {
        orchestrator_env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{collector}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..Options::default()
    })
    .await;
    stack.given_customer("cy", 10_000).await;
    stack.given_stock("fig", 5).await;
    let (trace_id, _, traceparent) = new_trace();
    let order = stack
        .place_order_with(
            "cy",
            &[line("fig", 1, 100)],
            &[("traceparent", &traceparent)],
        )
        .await;
    stack.settled(&order, APPROVED).await;

    // The orchestrator (a separate process) sends protobuf batches to /v1/traces; ours carry
    // the caller's trace id as raw bytes.
    let wanted = trace_id.to_bytes();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = received.lock().unwrap().iter().any(|(path, kind, body)| {
            path == "/v1/traces"
                && kind == "application/x-protobuf"
                && body.windows(wanted.len()).any(|w| w == wanted)
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no OTLP export with the trace arrived; got {} requests",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbage_traceparent_is_ignored_and_the_request_starts_its_own_trace() {
    exporter();
    let stack = Stack::start_with(stack_options()).await;
    stack.given_customer("dee", 10_000).await;
    stack.given_stock("kiwi", 5).await;

    let order = stack
        .place_order_with(
            "dee",
            &[line("kiwi", 1, 100)],
            &[("traceparent", "00-not-a-trace-context-01")],
        )
        .await;
    stack.settled(&order, APPROVED).await;

    // Find the order's trace through its projection span (tagged with the order id).
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace_id = loop {
        let found = exporter()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|s| {
                s.name == "project orders OrderPlaced"
                    && s.attributes
                        .iter()
                        .any(|kv| kv.key.as_str() == "aggregate_id" && kv.value.as_str() == order)
            });
        if let Some(span) = found {
            break span.span_context.trace_id();
        }
        assert!(Instant::now() < deadline, "no projection span for {order}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spans = trace_with(
        trace_id,
        &[
            "POST /v1/orders",
            "saga step approve",
            "project orders OrderApproved",
        ],
    )
    .await;
    // A fresh root: the malformed header was not taken as a parent.
    assert_one_tree(&spans, SpanId::INVALID);
}
