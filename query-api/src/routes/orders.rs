//! GET /v1/orders/{order_id} and GET /v1/orders (newest first, keyset cursor pagination: no
//! duplicates or gaps across pages, whatever is inserted meanwhile).
//!
//! Both authorize before any consistency wait: the listing from its filter, the single order
//! from its owner as the read model already knows it.

use axum::extract::{Path, Query, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::consistency::ReadAfter;
use crate::problem::ApiError;
use crate::startup::AppState;
use crate::views::{LineView, MoneyView, OrderPage, OrderView};
use platform::auth::Caller;

const COLUMNS: &str = "order_id, customer_id, status, lines, total_minor, currency, rejection_reason, rejection_detail, version, created_at, updated_at";
const STATUSES: [&str; 4] = ["PENDING", "APPROVED", "REJECTED", "CANCELLED"];
pub const MAX_LIMIT: i64 = 100;

fn view(row: &PgRow) -> Result<OrderView, ApiError> {
    let lines: serde_json::Value = row.try_get("lines")?;
    let lines: Vec<LineView> = serde_json::from_value(lines).map_err(|error| {
        tracing::error!(%error, "order lines in the read model do not parse");
        ApiError::Unavailable
    })?;
    let order_id: Uuid = row.try_get("order_id")?;
    Ok(OrderView {
        order_id: order_id.to_string(),
        customer_id: row.try_get("customer_id")?,
        status: row.try_get("status")?,
        lines,
        total: MoneyView {
            amount_minor: row.try_get("total_minor")?,
            currency: row.try_get("currency")?,
        },
        rejection_reason: row.try_get("rejection_reason")?,
        rejection_detail: row.try_get("rejection_detail")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[utoipa::path(get, path = "/v1/orders/{order_id}", params(platform::path_params::OrderIdPath, super::params::ConsistencyHeaders),
    responses((status = 200, body = OrderView), (status = 400), (status = 401), (status = 403), (status = 404), (status = 504)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    read_after: ReadAfter,
    Path(order_id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("order {order_id} does not exist"));
    let id = Uuid::parse_str(&order_id).map_err(|_| not_found())?;
    // A caller who may not read an order the read model already holds is refused before the
    // wait. An order not projected yet has no known owner: it is authorized after the wait,
    // when it is read (a wait then reveals nothing a 404 would not).
    if read_after.waits() && !caller.is_admin() {
        if let Some(owner) = owner_of(&app, id).await? {
            caller.require_self_or_admin(&owner)?;
        }
    }
    read_after.wait(&app).await?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"))
        .bind(id)
        .fetch_optional(app.pool())
        .await?
        .ok_or_else(not_found)?;
    let order = view(&row)?;
    caller.require_self_or_admin(&order.customer_id)?;
    Ok(Json(order))
}

/// The customer an order belongs to, if the read model has it.
async fn owner_of(app: &AppState, id: Uuid) -> Result<Option<String>, ApiError> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT customer_id FROM orders WHERE order_id = $1")
            .bind(id)
            .fetch_optional(app.pool())
            .await?;
    Ok(owner)
}

/// Query string of the listing. A customer lists its own orders (the filter defaults to
/// itself); an admin lists anyone's.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(
        nullable = false,
        pattern = "^[A-Za-z0-9_-]{1,64}$",
        min_length = 1,
        max_length = 64
    )]
    pub customer_id: Option<String>,
    #[param(nullable = false, pattern = "^(PENDING|APPROVED|REJECTED|CANCELLED)$")]
    pub status: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(nullable = false, value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page (opaque; any other value is 422).
    #[param(nullable = false)]
    pub cursor: Option<String>,
}

/// Where the previous page ended: (created_at, order_id) of its last item.
fn encode_cursor(order: &OrderView) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        order
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        order.order_id
    ))
}

fn decode_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        Uuid::parse_str(id).ok()?,
    ))
}

#[utoipa::path(get, path = "/v1/orders", params(ListQuery, super::params::ConsistencyHeaders),
    responses((status = 200, body = OrderPage), (status = 400), (status = 401), (status = 403), (status = 422), (status = 504)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    read_after: ReadAfter,
    Query(query): Query<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    // A customer lists its own orders (the filter defaults to itself); admin lists anyone's.
    let customer_id = match (&query.customer_id, caller.is_admin()) {
        (Some(id), _) => {
            caller.require_self_or_admin(id)?;
            Some(id.clone())
        }
        (None, true) => None,
        (None, false) => Some(caller.subject.clone()),
    };
    if let Some(status) = &query.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::invalid(
                "status",
                format!("must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let limit = match &query.limit {
        None => 20,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("limit", format!("must be a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    let after = match &query.cursor {
        None => None,
        Some(raw) => Some(
            decode_cursor(raw)
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor this API returned"))?,
        ),
    };
    read_after.wait(&app).await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM orders \
         WHERE ($1::text IS NULL OR customer_id = $1) AND ($2::text IS NULL OR status = $2) \
           AND ($3::timestamptz IS NULL OR (created_at, order_id) < ($3, $4)) \
         ORDER BY created_at DESC, order_id DESC LIMIT $5"
    ))
    .bind(customer_id)
    .bind(&query.status)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit + 1)
    .fetch_all(app.pool())
    .await?;
    let mut items = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(OrderPage { items, next_cursor }))
}
