//! The OpenAPI document, generated from the handlers and bodies themselves.

use platform::http::BearerAuth;
use utoipa::OpenApi;

use crate::dto;
use crate::routes;

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "orderstream command API", description = "Commands become events on Kafka. Errors are application/problem+json (RFC 9457)."),
    paths(routes::customers::register, routes::inventory::add_stock, routes::orders::place, routes::orders::cancel),
    components(schemas(
        dto::MoneyBody, dto::RegisterCustomerBody, dto::AddStockBody, dto::OrderLineBody, dto::PlaceOrderBody,
        dto::CancelOrderBody, dto::CustomerAccepted, dto::StockAccepted, dto::OrderAccepted, dto::CommandPending
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
