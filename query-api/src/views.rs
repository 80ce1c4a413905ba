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

/// The order saga behind an order: where it is, and every step it took.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaView {
    /// The saga's id: the order id.
    pub saga_id: String,
    pub order_id: String,
    /// RESERVING_STOCK, RESERVING_CREDIT, APPROVING, APPROVED, COMPENSATING, FINISHING,
    /// REJECTED or CANCELLED.
    pub state: String,
    pub rejection_reason: Option<String>,
    /// Running, and no participant has answered for longer than the stuck threshold
    /// (`SAGA_STUCK_AFTER_MS`, default 60 s): someone should look.
    pub stuck: bool,
    /// Actions and compensations, in the order they were first requested.
    pub steps: Vec<SagaStepView>,
    pub started_at: DateTime<Utc>,
    /// When it reached APPROVED, REJECTED or CANCELLED (null while running).
    pub finished_at: Option<DateTime<Utc>>,
    pub last_progress_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaStepView {
    /// reserve-stock/<line>, reserve-credit, approve, release-stock/<line>, release-credit,
    /// reject or confirm-cancellation.
    pub name: String,
    /// action or compensation.
    pub kind: String,
    pub attempt: u32,
    /// REQUESTED, SUCCEEDED, FAILED, TIMED_OUT or LATE (succeeded after its timeout; released).
    pub status: String,
    pub detail: Option<String>,
    /// How often it was asked again after a timeout.
    pub retries: u32,
    pub requested_at: DateTime<Utc>,
    /// When its status last changed.
    pub at: DateTime<Utc>,
}
