//! Request and response bodies, and the validation that turns a request into a domain command.
//! Every field error is collected, so a 422 names all of them at once.

use std::collections::BTreeMap;

use domain::order::OrderLine;
use domain::values::{
    CancellationReason, Currency, CustomerId, CustomerName, InvalidValue, Money, Quantity, Sku,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::ApiError;

/// Collects field errors while validating a body.
#[derive(Debug, Default)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    fn check<T>(&mut self, field: impl Into<String>, result: Result<T, InvalidValue>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(message.into());
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(ApiError::Invalid {
                detail: "the request has invalid values".into(),
                errors: self.0,
            }),
        }
    }
}

/// `{"amount_minor": 12345, "currency": "USD"}`: integer minor units, never a float.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    #[schema(minimum = 0, maximum = 10_000_000_000_i64)]
    #[serde(deserialize_with = "crate::json::integer")]
    pub amount_minor: i64,
    /// An ISO 4217 code: three upper-case letters.
    #[schema(pattern = "^[A-Z]{3}$", min_length = 3, max_length = 3)]
    pub currency: String,
}

/// The largest amount one price or credit limit may have, in minor units (100 million in a
/// two-decimal currency): with at most [`MAX_LINES`] lines of at most `Quantity::MAX` units, an
/// order's total can never overflow, so a well-formed order is never refused for its total.
pub const MAX_AMOUNT_MINOR: i64 = 10_000_000_000;

impl MoneyBody {
    fn validate(&self, field: &str, errors: &mut FieldErrors) -> Option<Money> {
        let currency = errors.check(
            format!("{field}.currency"),
            Currency::try_from(self.currency.as_str()),
        );
        let amount = if self.amount_minor < 0 {
            errors.add(
                format!("{field}.amount_minor"),
                InvalidValue::NegativeAmount.to_string(),
            );
            None
        } else if self.amount_minor > MAX_AMOUNT_MINOR {
            errors.add(
                format!("{field}.amount_minor"),
                format!("must be at most {MAX_AMOUNT_MINOR}"),
            );
            None
        } else {
            Some(self.amount_minor)
        };
        Money::new(amount?, currency?).ok()
    }
}

impl From<Money> for MoneyBody {
    fn from(money: Money) -> Self {
        Self {
            amount_minor: money.amount_minor(),
            currency: money.currency().to_string(),
        }
    }
}

/// POST /v1/customers
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomerBody {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub customer_id: String,
    /// Trimmed; at least one character that is not white space.
    #[schema(pattern = "[^\\s\\u0085]", min_length = 1, max_length = 200)]
    pub name: String,
    pub credit_limit: MoneyBody,
}

impl RegisterCustomerBody {
    pub fn validate(&self) -> Result<(CustomerId, CustomerName, Money), ApiError> {
        let mut errors = FieldErrors::default();
        let id = errors.check(
            "customer_id",
            CustomerId::try_from(self.customer_id.as_str()),
        );
        let name = errors.check("name", CustomerName::try_from(self.name.as_str()));
        let limit = self.credit_limit.validate("credit_limit", &mut errors);
        let all = (|| Some((id?, name?, limit?)))();
        errors.finish(all)
    }
}

/// POST /v1/inventory/{sku}/stock
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStockBody {
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "crate::json::integer")]
    pub quantity: i64,
}

pub fn validate_stock(sku: &str, body: &AddStockBody) -> Result<(Sku, Quantity), ApiError> {
    let mut errors = FieldErrors::default();
    let sku = errors.check("sku", Sku::try_from(sku));
    let quantity = errors.check("quantity", Quantity::try_from(body.quantity));
    let all = (|| Some((sku?, quantity?)))();
    errors.finish(all)
}

/// One line of POST /v1/orders.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineBody {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "crate::json::integer")]
    pub quantity: i64,
    pub unit_price: MoneyBody,
}

/// POST /v1/orders. Two rules relate several lines, so no schema can state them: every line
/// is priced in the first line's currency (else 422 at `lines[i].unit_price.currency`), and no
/// sku appears on two lines (else 422 at `lines[i].sku`; put the whole quantity on one line).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub customer_id: String,
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<OrderLineBody>,
}

/// The most lines one order may have (keeps a command far below the body limit).
pub const MAX_LINES: usize = 100;

impl PlaceOrderBody {
    /// Field-level checks. One currency and distinct skus are domain rules, checked by `decide`.
    pub fn validate(&self) -> Result<(CustomerId, Vec<OrderLine>), ApiError> {
        let mut errors = FieldErrors::default();
        let customer = errors.check(
            "customer_id",
            CustomerId::try_from(self.customer_id.as_str()),
        );
        if self.lines.is_empty() {
            errors.add("lines", "an order needs at least one line");
        }
        if self.lines.len() > MAX_LINES {
            errors.add("lines", format!("at most {MAX_LINES} lines"));
        }
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, line) in self.lines.iter().enumerate() {
            let sku = errors.check(format!("lines[{i}].sku"), Sku::try_from(line.sku.as_str()));
            let quantity = errors.check(
                format!("lines[{i}].quantity"),
                Quantity::try_from(line.quantity),
            );
            let price = line
                .unit_price
                .validate(&format!("lines[{i}].unit_price"), &mut errors);
            if let (Some(sku), Some(quantity), Some(unit_price)) = (sku, quantity, price) {
                lines.push(OrderLine {
                    sku,
                    quantity,
                    unit_price,
                });
            }
        }
        // One currency per order: judged on the raw codes, so it is reported even when
        // another field of a line is invalid too.
        if let Some(first) = self.lines.first().map(|l| l.unit_price.currency.as_str()) {
            for (i, line) in self.lines.iter().enumerate().skip(1) {
                if line.unit_price.currency != first {
                    errors.add(
                        format!("lines[{i}].unit_price.currency"),
                        format!("all lines must be in {first}, the order's currency"),
                    );
                }
            }
        }
        let all = customer.map(|c| (c, lines));
        errors.finish(all)
    }
}

/// POST /v1/orders/{order_id}/cancel
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderBody {
    /// Trimmed; at least one character that is not white space.
    #[schema(pattern = "[^\\s\\u0085]", min_length = 1, max_length = 500)]
    pub reason: Option<String>,
}

impl CancelOrderBody {
    pub fn validate(&self) -> Result<Option<CancellationReason>, ApiError> {
        let mut errors = FieldErrors::default();
        let reason = match &self.reason {
            None => Some(None),
            Some(raw) => errors
                .check("reason", CancellationReason::try_from(raw.as_str()))
                .map(Some),
        };
        errors.finish(reason)
    }
}

/// 201 from POST /v1/customers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerAccepted {
    pub customer_id: String,
    pub version: i64,
    pub consistency_token: String,
}

/// 200 from POST /v1/inventory/{sku}/stock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StockAccepted {
    pub sku: String,
    pub version: i64,
    pub consistency_token: String,
}

/// 202 from POST /v1/orders and POST /v1/orders/{id}/cancel.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderAccepted {
    pub order_id: String,
    pub status: String,
    pub version: i64,
    pub consistency_token: String,
}

/// 202 from the order routes: the command was applied (`OrderAccepted`, the saga runs on) or its
/// outcome did not arrive within the wait (`CommandPending`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderAnswer {
    Accepted(OrderAccepted),
    Pending(CommandPending),
}

/// 202 when the outcome did not arrive within the wait: the command is queued and will be
/// handled; retry with the same Idempotency-Key to learn its outcome.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommandPending {
    pub command_id: String,
    pub status: String,
    pub detail: String,
}
