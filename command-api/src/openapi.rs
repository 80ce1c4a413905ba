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
        dto::CancelOrderBody, dto::CustomerAccepted, dto::StockAccepted, dto::OrderAccepted, dto::OrderAnswer, dto::CommandPending
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use domain::values::{CancellationReason, CustomerName, Quantity};
    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
    }

    fn property(document: &Value, schema: &str, name: &str) -> Value {
        document["components"]["schemas"][schema]["properties"][name].clone()
    }

    /// The document states the bounds the domain enforces, so the two cannot drift apart.
    #[test]
    fn the_document_states_the_domains_bounds() {
        let document = document();
        let quantity = property(&document, "AddStockBody", "quantity");
        assert_eq!(quantity["minimum"], 1);
        assert_eq!(quantity["maximum"], Quantity::MAX);
        assert_eq!(
            property(&document, "OrderLineBody", "quantity")["maximum"],
            Quantity::MAX
        );
        assert_eq!(
            property(&document, "RegisterCustomerBody", "name")["maxLength"],
            CustomerName::MAX_CHARS
        );
        assert_eq!(
            property(&document, "CancelOrderBody", "reason")["maxLength"],
            CancellationReason::MAX_CHARS
        );
        assert_eq!(
            property(&document, "MoneyBody", "amount_minor")["maximum"],
            crate::dto::MAX_AMOUNT_MINOR
        );
        assert_eq!(
            property(&document, "PlaceOrderBody", "lines")["maxItems"],
            crate::dto::MAX_LINES
        );
    }

    /// Identifiers in bodies follow the domain's identifier rule, written once as a pattern.
    #[test]
    fn identifier_patterns_accept_exactly_what_the_domain_accepts() {
        let document = document();
        let pattern = property(&document, "OrderLineBody", "sku")["pattern"].clone();
        assert_eq!(pattern, "^[A-Za-z0-9_-]{1,64}$");
        assert_eq!(
            property(&document, "RegisterCustomerBody", "customer_id")["pattern"],
            pattern
        );
        assert_eq!(
            property(&document, "PlaceOrderBody", "customer_id")["pattern"],
            pattern
        );
        for (raw, valid) in [("a-Z_9", true), ("", false), ("a b", false), ("é", false)] {
            assert_eq!(domain::values::Sku::try_from(raw).is_ok(), valid, "{raw}");
        }
        assert!(domain::values::Sku::try_from("a".repeat(64).as_str()).is_ok());
        assert!(domain::values::Sku::try_from("a".repeat(65).as_str()).is_err());
    }
}
