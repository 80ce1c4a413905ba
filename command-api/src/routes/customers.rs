//! POST /v1/customers: register a customer (admin only).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::customer::CustomerCommand;
use domain::AggregateKind;

use super::{accepted_headers, command_id, submit, CommandHeaders, Submission, Submitted};
use crate::auth::Caller;
use crate::dto::{CommandPending, CustomerAccepted, RegisterCustomerBody};
use crate::json::JsonBody;
use crate::problem::ApiError;
use crate::startup::AppState;

#[utoipa::path(post, path = "/v1/customers", request_body = RegisterCustomerBody,
    params(super::params::CommandHeaderParams),
    responses((status = 201, body = CustomerAccepted), (status = 202, body = CommandPending),
              (status = 400), (status = 401), (status = 403), (status = 409), (status = 413),
              (status = 415), (status = 422), (status = 429), (status = 503)),
    security(("bearer" = [])))]
pub async fn register(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<RegisterCustomerBody>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let headers = CommandHeaders::parse(&headers)?;
    let (customer_id, name, credit_limit) = body.value.validate()?;
    let route = "POST /v1/customers".to_owned();
    let id = command_id(&caller, &route, headers.idempotency_key.as_deref());
    let submission = Submission {
        kind: AggregateKind::Customer,
        aggregate_id: customer_id.to_string(),
        command: CustomerCommand::Register {
            customer_id: customer_id.clone(),
            name,
            credit_limit,
        },
        caller: &caller,
        headers: &headers,
        route,
        body: &body.raw,
    };
    let location = format!("/v1/customers/{customer_id}");
    Ok(match submit(&app, submission, id).await? {
        Submitted::Done { reply, token } => (
            StatusCode::CREATED,
            accepted_headers(&token, &headers.correlation_id, Some(location)),
            Json(CustomerAccepted {
                customer_id: reply.aggregate_id,
                version: reply.version,
                consistency_token: token,
            }),
        )
            .into_response(),
        Submitted::Pending { command_id } => pending(command_id, &headers, location),
    })
}

/// 202 with where to look, when the outcome did not arrive within the wait.
pub(crate) fn pending(command_id: String, headers: &CommandHeaders, location: String) -> Response {
    (
        StatusCode::ACCEPTED,
        accepted_headers("", &headers.correlation_id, Some(location)),
        Json(CommandPending {
            command_id,
            status: "PROCESSING".into(),
            detail:
                "the command is queued; retry with the same Idempotency-Key to learn its outcome"
                    .into(),
        }),
    )
        .into_response()
}
