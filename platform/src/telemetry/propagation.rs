//! Spans around the records a service handles, continuing the trace each record carries in its
//! W3C `traceparent` header, and the context to put on whatever a span sends.
//!
//! Every producer calls [`outgoing`] for the header it writes and every consumer opens its
//! handling span with [`record_span`], so a trace follows a placed order through the command
//! topic, the writer, the events, the saga and the projections. Without an exporter installed
//! the spans still give log lines their ids, and an inherited `traceparent` is passed on as is.

use std::collections::HashMap;

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::exporting_traces;
use crate::envelope::{names, Trace};

/// What a span does, in OpenTelemetry's span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanRole {
    /// Handles an HTTP request.
    Server,
    /// Sends a record to Kafka.
    Producer,
    /// Handles a record read from Kafka.
    Consumer,
}

impl SpanRole {
    fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }
}

/// A span about one record (a command or an event): named `name`, carrying the record's ids for
/// log lines, and a child of the span its `traceparent` names.
pub fn record_span(name: &str, role: SpanRole, aggregate_id: &str, trace: &Trace) -> Span {
    let span = tracing::info_span!(
        "record",
        otel.name = %name,
        otel.kind = role.as_str(),
        correlation_id = %trace.correlation_id,
        causation_id = %trace.causation_id,
        aggregate_id = %aggregate_id,
        trace_id = tracing::field::Empty,
    );
    continue_trace(&span, trace.traceparent.as_deref());
    span
}

/// A span about sending a record from inside the current span (its child).
pub fn send_span(name: &str, aggregate_id: &str) -> Span {
    tracing::info_span!(
        "send",
        otel.name = %name,
        otel.kind = SpanRole::Producer.as_str(),
        aggregate_id = %aggregate_id,
    )
}

/// The span of one HTTP request, continuing the caller's trace when it sent a `traceparent`.
pub fn http_span(method: &str, route: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{method} {route}"),
        otel.kind = SpanRole::Server.as_str(),
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let traceparent = headers
        .get(names::TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    continue_trace(&span, traceparent);
    span
}

/// Makes `span` a child of the remote span `traceparent` names (when spans are exported) and
/// records the trace id for log lines.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let (Some(traceparent), true) = (traceparent, exporting_traces()) {
        let carrier = HashMap::from([(names::TRACEPARENT.to_owned(), traceparent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    let trace_id = exported_trace_id(span).or_else(|| traceparent.and_then(trace_id_in));
    if let Some(trace_id) = trace_id {
        span.record("trace_id", trace_id.as_str());
    }
}

/// The `traceparent` for a record sent inside `span`: the span's own context when spans are
/// exported, otherwise the inherited one, so a caller's context still flows through a
/// deployment that exports nothing.
pub fn outgoing(span: &Span, inherited: Option<&str>) -> Option<String> {
    own_traceparent(span).or_else(|| inherited.map(str::to_owned))
}

fn own_traceparent(span: &Span) -> Option<String> {
    if !exporting_traces() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(names::TRACEPARENT)
}

fn exported_trace_id(span: &Span) -> Option<String> {
    if !exporting_traces() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The trace id inside a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id_in(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| trace_id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_read_from_a_well_formed_traceparent_only() {
        assert_eq!(
            trace_id_in("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id_in("00-xyz-b7ad6b7169203331-01"), None);
        assert_eq!(trace_id_in("garbage"), None);
    }

    #[test]
    fn without_an_exporter_an_inherited_traceparent_is_passed_on_unchanged() {
        let inherited = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let span = send_span("send Something", "a-1");
        assert_eq!(outgoing(&span, Some(inherited)).as_deref(), Some(inherited));
        assert_eq!(outgoing(&span, None), None);
    }
}
