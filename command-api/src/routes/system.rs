//! /healthz, /readyz, /metrics and /openapi.json.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa::OpenApi;

use crate::startup::AppState;

/// The process is alive.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: the broker answers, this process joined the writers' group, and the reply
/// listener is running.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let broker = app.broker_reachable().await;
    let assigned = app.processor_ready();
    let body = json!({
        "status": if broker && assigned { "ready" } else { "not ready" },
        "checks": {"broker": broker, "partitions_assigned": assigned, "writers_serving": app.writers_serving()},
    });
    let status = if broker && assigned {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics().render(),
    )
        .into_response()
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Response {
    Json(crate::openapi::ApiDoc::openapi()).into_response()
}
