//! GET /v1/customers/{customer_id}: a customer reads only its own view; admin reads all.
//! The path names the owner, so the caller is authorized before any consistency wait.

use axum::extract::{Path, State};
use axum::Json;
use sqlx::Row;

use crate::consistency::ReadAfter;
use crate::problem::ApiError;
use crate::startup::AppState;
use crate::views::{CustomerView, MoneyView};
use platform::auth::Caller;

#[utoipa::path(get, path = "/v1/customers/{customer_id}", params(platform::path_params::CustomerIdPath, super::params::ConsistencyHeaders),
    responses((status = 200, body = CustomerView), (status = 400), (status = 401), (status = 403), (status = 404), (status = 504)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    read_after: ReadAfter,
    Path(customer_id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    caller.require_self_or_admin(&customer_id)?;
    read_after.wait(&app).await?;
    let row = sqlx::query("SELECT customer_id, name, currency, credit_limit_minor, credit_reserved_minor, version FROM customers WHERE customer_id = $1")
        .bind(&customer_id)
        .fetch_optional(app.pool())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("customer {customer_id} does not exist")))?;
    let currency: String = row.try_get("currency")?;
    let money = |amount_minor: i64| MoneyView {
        amount_minor,
        currency: currency.clone(),
    };
    let (limit, reserved): (i64, i64) = (
        row.try_get("credit_limit_minor")?,
        row.try_get("credit_reserved_minor")?,
    );
    Ok(Json(CustomerView {
        customer_id: row.try_get("customer_id")?,
        name: row.try_get("name")?,
        credit_limit: money(limit),
        credit_reserved: money(reserved),
        credit_available: money((limit - reserved).max(0)),
        version: row.try_get("version")?,
    }))
}
