//! GET /v1/orders/{order_id}/saga: the order saga's state and steps, for the order's customer
//! and admins. Authorized before any consistency wait when the saga's owner is already known.

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use platform::auth::Caller;
use sqlx::Row;
use uuid::Uuid;

use crate::consistency::ReadAfter;
use crate::problem::ApiError;
use crate::startup::AppState;
use crate::views::{SagaStepView, SagaView};

#[utoipa::path(get, path = "/v1/orders/{order_id}/saga", params(platform::path_params::OrderIdPath, super::params::ConsistencyHeaders),
    responses((status = 200, body = SagaView), (status = 400), (status = 401), (status = 403), (status = 404), (status = 504)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    read_after: ReadAfter,
    Path(order_id): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("order {order_id} has no saga"));
    let id = Uuid::parse_str(&order_id).map_err(|_| not_found())?;
    // As for the order view: refused before the wait when the owner is known, else after it.
    if read_after.waits() && !caller.is_admin() {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT customer_id FROM order_sagas WHERE saga_id = $1")
                .bind(id.to_string())
                .fetch_optional(app.pool())
                .await?;
        if let Some(owner) = owner {
            caller.require_self_or_admin(&owner)?;
        }
    }
    read_after.wait(&app).await?;
    let row = sqlx::query(
        "SELECT saga_id, order_id, customer_id, state, rejection_reason, steps, started_at, \
         finished_at, last_progress_at, version FROM order_sagas WHERE saga_id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(app.pool())
    .await?
    .ok_or_else(not_found)?;
    let customer_id: String = row.try_get("customer_id")?;
    caller.require_self_or_admin(&customer_id)?;
    let steps: serde_json::Value = row.try_get("steps")?;
    let steps: Vec<SagaStepView> = serde_json::from_value(steps).map_err(|error| {
        tracing::error!(%error, "saga steps in the read model do not parse");
        ApiError::Unavailable
    })?;
    let state: String = row.try_get("state")?;
    let last_progress_at = row.try_get("last_progress_at")?;
    let running = !domain::saga::SagaPhase::TERMINAL_NAMES.contains(&state.as_str());
    let stuck = running
        && chrono::Duration::from_std(app.saga_stuck_after())
            .is_ok_and(|limit| Utc::now() - last_progress_at > limit);
    Ok(Json(SagaView {
        saga_id: row.try_get("saga_id")?,
        order_id: row.try_get("order_id")?,
        state,
        rejection_reason: row.try_get("rejection_reason")?,
        stuck,
        steps,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        last_progress_at,
        version: row.try_get("version")?,
    }))
}
