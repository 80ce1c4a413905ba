//! POST /v1/inventory/{sku}/stock: add stock, creating the item if new (admin only).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::inventory::InventoryCommand;
use domain::AggregateKind;

use super::customers::pending;
use super::{accepted_headers, command_id, submit, CommandHeaders, Submission, Submitted};
use crate::auth::Caller;
use crate::dto::{validate_stock, AddStockBody, CommandPending, StockAccepted};
use crate::json::JsonBody;
use crate::problem::ApiError;
use crate::startup::AppState;

#[utoipa::path(post, path = "/v1/inventory/{sku}/stock", request_body = AddStockBody,
    params(platform::path_params::SkuPath, super::params::CommandHeaderParams),
    responses((status = 200, body = StockAccepted), (status = 202, body = CommandPending),
              (status = 400), (status = 401), (status = 403), (status = 409), (status = 413),
              (status = 415), (status = 422), (status = 429), (status = 503)),
    security(("bearer" = [])))]
pub async fn add_stock(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<AddStockBody>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let headers = CommandHeaders::parse(&headers)?;
    let (sku, quantity) = validate_stock(&sku, &body.value)?;
    let route = format!("POST /v1/inventory/{sku}/stock");
    let id = command_id(&caller, &route, headers.idempotency_key.as_deref());
    let location = format!("/v1/inventory/{sku}");
    let submission = Submission {
        kind: AggregateKind::InventoryItem,
        aggregate_id: sku.to_string(),
        command: InventoryCommand::AddStock { sku, quantity },
        caller: &caller,
        headers: &headers,
        route,
        body: &body.raw,
    };
    Ok(match submit(&app, submission, id).await? {
        Submitted::Done { reply, token } => (
            StatusCode::OK,
            accepted_headers(&token, &headers.correlation_id, Some(location)),
            Json(StockAccepted {
                sku: reply.aggregate_id,
                version: reply.version,
                consistency_token: token,
            }),
        )
            .into_response(),
        Submitted::Pending { command_id } => pending(command_id, &headers, location),
    })
}
