//! GET /v1/inventory/{sku}: any authenticated caller (customers see availability too), so
//! authentication (the `Caller` extractor) is all the authorization before a consistency wait.

use axum::extract::{Path, State};
use axum::Json;
use sqlx::Row;

use crate::consistency::ReadAfter;
use crate::problem::ApiError;
use crate::startup::AppState;
use crate::views::InventoryView;
use platform::auth::Caller;

#[utoipa::path(get, path = "/v1/inventory/{sku}", params(platform::path_params::SkuPath, super::params::ConsistencyHeaders),
    responses((status = 200, body = InventoryView), (status = 400), (status = 401), (status = 404), (status = 504)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    _caller: Caller,
    read_after: ReadAfter,
    Path(sku): Path<String>,
) -> Result<Json<InventoryView>, ApiError> {
    read_after.wait(&app).await?;
    let row = sqlx::query("SELECT sku, on_hand, reserved, version FROM inventory WHERE sku = $1")
        .bind(&sku)
        .fetch_optional(app.pool())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("inventory item {sku} does not exist")))?;
    let (on_hand, reserved): (i64, i64) = (row.try_get("on_hand")?, row.try_get("reserved")?);
    Ok(Json(InventoryView {
        sku: row.try_get("sku")?,
        on_hand,
        reserved,
        available: (on_hand - reserved).max(0),
        version: row.try_get("version")?,
    }))
}
