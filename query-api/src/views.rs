//! Response bodies (the read views of API.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct MoneyView {
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LineView {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: MoneyView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    /// PENDING, APPROVED, REJECTED or CANCELLED.
    pub status: String,
    pub lines: Vec<LineView>,
    pub total: MoneyView,
    /// OUT_OF_STOCK, CREDIT_LIMIT_EXCEEDED, UNKNOWN_SKU, UNKNOWN_CUSTOMER or TIMEOUT.
    pub rejection_reason: Option<String>,
    pub rejection_detail: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CustomerView {
    pub customer_id: String,
    pub name: String,
    pub credit_limit: MoneyView,
    pub credit_reserved: MoneyView,
    pub credit_available: MoneyView,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InventoryView {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
}
