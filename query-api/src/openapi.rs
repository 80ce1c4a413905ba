//! The OpenAPI document, generated from the handlers and views.

use platform::http::BearerAuth;
use utoipa::OpenApi;

use crate::{routes, views};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "orderstream query API", description = "Read views. Send X-Consistency-Token (from a command response) to read your own writes; X-Consistency-Wait-Ms bounds the wait (default 5000, max 30000), after which the answer is 504. The token is opaque and signed by the command API; a token that is altered, malformed, longer than 4096 characters or naming more than 64 positions is refused with 400, never waited on. A caller who may not read the resource gets 403 before any wait. Errors are application/problem+json (RFC 9457)."),
    paths(routes::orders::get, routes::orders::list, routes::sagas::get, routes::customers::get, routes::inventory::get),
    components(schemas(views::MoneyView, views::LineView, views::OrderView, views::OrderPage, views::CustomerView, views::InventoryView, views::SagaView, views::SagaStepView)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
