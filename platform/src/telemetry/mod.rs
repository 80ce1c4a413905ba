//! Telemetry every service installs the same way.
//!
//! - Logs: JSON lines by default (what log pipelines want), `LOG_FORMAT=pretty` for a human at a
//!   terminal; the filter comes from `RUST_LOG` (default `info`). Lines written inside a record's
//!   span carry its correlation id, causation id, aggregate id and trace id.
//! - Traces: OpenTelemetry spans exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set; the W3C trace context travels in Kafka headers ([`propagation`]), so one trace covers
//!   HTTP request -> command -> events -> saga -> projections.
//! - Metrics: one process-wide Prometheus recorder ([`metrics_handle`]).

pub mod propagation;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// The variable that switches OTLP export on (the collector's base URL, e.g.
/// `http://otel-collector:4318`; `/v1/traces` is appended).
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Whether spans go anywhere. Hot paths (a projector applies tens of thousands of events a
/// second) only open a span per record when they do.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether an OpenTelemetry tracer is installed in this process.
pub fn exporting_traces() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Keeps the tracer provider so buffered spans can be flushed before the process exits.
#[derive(Debug, Default)]
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops span export. Blocking (the OTLP exporter uses a blocking HTTP client),
    /// so it runs off the async runtime's worker threads.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Runs a service's whole life (`run`: settings, start, serve, stop) with telemetry installed
/// first, and flushes buffered spans after it ends, however it ends. Every binary's
/// `run_from_env` goes through here.
pub async fn run_traced<T>(service: &'static str, run: impl std::future::Future<Output = T>) -> T {
    let telemetry = init(service);
    let ran = run.await;
    telemetry.shutdown().await;
    ran
}

/// Installs logs and, when [`OTLP_ENDPOINT`] is set, OTLP trace export. Later calls in the same
/// process are no-ops (tests start several services in one process).
pub fn init(service: &'static str) -> Telemetry {
    let provider = match std::env::var(OTLP_ENDPOINT) {
        Ok(endpoint) if !endpoint.trim().is_empty() => match otlp_provider(service) {
            Ok(provider) => Some(provider),
            Err(error) => {
                // Logging is not installed yet; stderr is where a start-up problem belongs.
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{OTLP_ENDPOINT}={endpoint} but the OTLP exporter failed: {error}");
                }
                None
            }
        },
        _ => None,
    };
    install(service, provider)
}

/// Installs logs and the given tracer provider (tests pass one with an in-memory exporter).
pub fn install(service: &'static str, provider: Option<SdkTracerProvider>) -> Telemetry {
    // The recorder first: metrics recorded before it exists would go nowhere.
    let _ = metrics_handle();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let logs = if pretty {
        fmt::layer().with_target(false).with_filter(filter).boxed()
    } else {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .with_filter(filter)
            .boxed()
    };
    // `RUST_LOG` quiets logs, not traces: a deployment logging warnings only still exports the
    // spans (all at info) that make up its traces.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_default(Level::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry::default();
    }
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    tracing::info!(
        service,
        traces = provider.is_some(),
        "telemetry initialised"
    );
    Telemetry { provider }
}

/// A tracer provider exporting over OTLP/HTTP (protobuf) in batches. The endpoint, headers and
/// timeout come from the standard `OTEL_EXPORTER_OTLP_*` variables.
fn otlp_provider(
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // The blocking HTTP client must not be created on an async runtime's thread.
    let exporter = std::thread::spawn(|| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
    })
    .join()
    .map_err(|_| {
        opentelemetry_otlp::ExporterBuildError::InternalFailure("exporter set-up panicked".into())
    })??;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// The process-wide Prometheus recorder. The `metrics` macros write to one global recorder, so
/// every service (and every app a test spawns in one process) shares this handle.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use std::sync::OnceLock;
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
