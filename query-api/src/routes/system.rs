//! /healthz, /readyz (database reachable, migrations applied), /metrics, /openapi.json.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa::OpenApi;

use crate::startup::AppState;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(app): State<AppState>) -> Response {
    let applied: Result<Vec<i64>, _> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(app.pool())
            .await;
    let (database, migrations) = match applied {
        Ok(versions) => (
            true,
            read_models::MIGRATOR
                .iter()
                .all(|m| versions.contains(&m.version)),
        ),
        Err(_) => (false, false),
    };
    let ready = database && migrations;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"status": if ready { "ready" } else { "not ready" }, "checks": {"database": database, "migrations": migrations}}))).into_response()
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics().render(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    Json(crate::openapi::ApiDoc::openapi()).into_response()
}
