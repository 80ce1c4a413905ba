//! What both HTTP APIs share beyond auth: request metrics, the OpenAPI bearer scheme, and the
//! rendering of problem+json responses.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Routes probed by machines every few seconds: measured, but not traced.
const UNTRACED_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Middleware: request count and latency by method, route template and status, and the
/// request's span (continuing the caller's `traceparent`), which everything the handler sends
/// to Kafka descends from.
pub async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = if UNTRACED_ROUTES.contains(&route.as_str()) {
        next.run(request).await
    } else {
        let span = crate::telemetry::propagation::http_span(&method, &route, request.headers());
        let response = next.run(request).instrument(span.clone()).await;
        span.record("http.response.status_code", response.status().as_u16());
        response
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Adds the `bearer` (JWT) security scheme the handlers' `security(("bearer" = []))` refer to.
#[derive(Debug)]
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// An RFC 9457 problem+json response. Each API decides status, slug and title for its own
/// errors (its one mapping); this only renders them the same way everywhere.
#[derive(Debug, serde::Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<BTreeMap<String, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<i64>,
    #[serde(skip)]
    http_status: StatusCode,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
    #[serde(skip)]
    bearer_challenge: bool,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &'static str, detail: String) -> Self {
        Self {
            kind: format!("https://orderstream.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail,
            errors: None,
            current_version: None,
            http_status: status,
            retry_after_secs: None,
            bearer_challenge: status == StatusCode::UNAUTHORIZED,
        }
    }

    /// Per-field messages (422).
    pub fn errors(mut self, errors: BTreeMap<String, Vec<String>>) -> Self {
        self.errors = Some(errors);
        self
    }

    /// The aggregate's current version (409).
    pub fn current_version(mut self, version: Option<i64>) -> Self {
        self.current_version = version;
        self
    }

    /// `Retry-After` (429).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.http_status, axum::Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        if self.bearer_challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
