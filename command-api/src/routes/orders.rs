//! POST /v1/orders (place; the saga runs on) and POST /v1/orders/{order_id}/cancel.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::order::OrderCommand;
use domain::values::OrderId;
use domain::AggregateKind;
use platform::partitioner::partition_for;
use uuid::Uuid;

use super::customers::pending;
use super::{accepted_headers, command_id, submit, CommandHeaders, Submission, Submitted};
use crate::auth::Caller;
use crate::dto::{CancelOrderBody, OrderAccepted, OrderAnswer, PlaceOrderBody};
use crate::json::JsonBody;
use crate::problem::ApiError;
use crate::startup::AppState;

/// A new UUID v7 order id. With an Idempotency-Key, the id is drawn until it falls on the
/// partition the key hashes to: every retry then reaches the same writer, which knows the key
/// (its command id) from its log and answers with the order first created.
fn new_order_id(command_id: &str, keyed: bool, partitions: i32) -> OrderId {
    let target = partition_for(command_id.as_bytes(), partitions);
    loop {
        let id = Uuid::now_v7();
        if !keyed || partition_for(id.to_string().as_bytes(), partitions) == target {
            return OrderId::from_uuid(id);
        }
    }
}

#[utoipa::path(post, path = "/v1/orders", request_body = PlaceOrderBody,
    params(super::params::CommandHeaderParams),
    responses((status = 202, body = OrderAnswer, description = "PENDING, the saga runs on (or the outcome is still pending: CommandPending)"),
              (status = 400), (status = 401), (status = 403),
              (status = 409, description = "If-Match named a version the order is not at"),
              (status = 413), (status = 415), (status = 422), (status = 429), (status = 503)),
    security(("bearer" = [])))]
pub async fn place(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<PlaceOrderBody>,
) -> Result<Response, ApiError> {
    let headers = CommandHeaders::parse(&headers)?;
    let (customer_id, lines) = body.value.validate()?;
    caller.require_self_or_admin(customer_id.as_str())?;
    let route = "POST /v1/orders".to_owned();
    let id = command_id(&caller, &route, headers.idempotency_key.as_deref());
    let order_id = new_order_id(
        &id,
        headers.idempotency_key.is_some(),
        app.bus().partitions(),
    );
    let submission = Submission {
        kind: AggregateKind::Order,
        aggregate_id: order_id.to_string(),
        command: OrderCommand::Place {
            order_id,
            customer_id,
            lines,
        },
        caller: &caller,
        headers: &headers,
        route,
        body: &body.raw,
    };
    Ok(match submit(&app, submission, id).await? {
        Submitted::Done { reply, token } => {
            let location = format!("/v1/orders/{}", reply.aggregate_id);
            (
                StatusCode::ACCEPTED,
                accepted_headers(&token, &headers.correlation_id, Some(location)),
                Json(OrderAccepted {
                    order_id: reply.aggregate_id,
                    status: "PENDING".into(),
                    version: reply.version,
                    consistency_token: token,
                }),
            )
                .into_response()
        }
        Submitted::Pending { command_id } => {
            pending(command_id, &headers, format!("/v1/orders/{order_id}"))
        }
    })
}

#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", request_body = CancelOrderBody,
    params(platform::path_params::OrderIdPath, super::params::CommandHeaderParams),
    responses((status = 202, body = OrderAnswer, description = "cancellation requested, the saga releases holds (or the outcome is still pending: CommandPending)"),
              (status = 400), (status = 401), (status = 403), (status = 404), (status = 409),
              (status = 413), (status = 415), (status = 422), (status = 429), (status = 503)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(app): State<AppState>,
    Path(order_id): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<CancelOrderBody>,
) -> Result<Response, ApiError> {
    let headers = CommandHeaders::parse(&headers)?;
    let order_id = OrderId::try_from(order_id.as_str())
        .map_err(|_| ApiError::NotFound(format!("order {order_id} does not exist")))?;
    let reason = body.value.validate()?;
    let route = format!("POST /v1/orders/{order_id}/cancel");
    let id = command_id(&caller, &route, headers.idempotency_key.as_deref());
    let location = format!("/v1/orders/{order_id}");
    let submission = Submission {
        kind: AggregateKind::Order,
        aggregate_id: order_id.to_string(),
        command: OrderCommand::RequestCancellation { order_id, reason },
        caller: &caller,
        headers: &headers,
        route,
        body: &body.raw,
    };
    Ok(match submit(&app, submission, id).await? {
        Submitted::Done { reply, token } => (
            StatusCode::ACCEPTED,
            accepted_headers(&token, &headers.correlation_id, Some(location)),
            Json(OrderAccepted {
                order_id: reply.aggregate_id,
                status: "CANCELLATION_REQUESTED".into(),
                version: reply.version,
                consistency_token: token,
            }),
        )
            .into_response(),
        Submitted::Pending { command_id } => pending(command_id, &headers, location),
    })
}
