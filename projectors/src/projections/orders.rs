//! `orders`: one row per order (status, lines, total, rejection), indexed for listing by
//! customer and status.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::order::OrderEvent;
use domain::AggregateKind;
use serde_json::{json, Value};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::projection::{FoldError, Projection, RowHead, Stamp};

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub lines: Value,
    pub total_minor: i64,
    pub currency: String,
    pub rejection_reason: Option<String>,
    pub rejection_detail: Option<String>,
    pub version: i64,
    pub last_event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Orders;

impl Orders {
    pub const NAME_STR: &'static str = "orders";
}

#[async_trait]
impl Projection for Orders {
    const NAME: &'static str = Self::NAME_STR;
    const KIND: AggregateKind = AggregateKind::Order;
    type Event = OrderEvent;
    type Row = OrderRow;

    fn head(row: &OrderRow) -> RowHead {
        RowHead {
            version: row.version,
            last_event_id: row.last_event_id,
        }
    }

    async fn load(
        connection: &mut PgConnection,
        table: &str,
        ids: &[String],
    ) -> Result<HashMap<String, OrderRow>, sqlx::Error> {
        let uuids: Vec<Uuid> = ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT order_id, customer_id, status, lines, total_minor, currency, rejection_reason, rejection_detail, \
                    version, last_event_id, created_at, updated_at FROM {table} WHERE order_id = ANY($1)"))
        .bind(uuids)
        .fetch_all(connection)
        .await?;
        rows.into_iter()
            .map(|r| {
                let row = OrderRow {
                    order_id: r.try_get("order_id")?,
                    customer_id: r.try_get("customer_id")?,
                    status: r.try_get("status")?,
                    lines: r.try_get("lines")?,
                    total_minor: r.try_get("total_minor")?,
                    currency: r.try_get("currency")?,
                    rejection_reason: r.try_get("rejection_reason")?,
                    rejection_detail: r.try_get("rejection_detail")?,
                    version: r.try_get("version")?,
                    last_event_id: r.try_get("last_event_id")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                };
                Ok((row.order_id.to_string(), row))
            })
            .collect()
    }

    fn fold(
        row: Option<OrderRow>,
        _: &str,
        event: OrderEvent,
        stamp: Stamp,
    ) -> Result<OrderRow, FoldError> {
        let mut row = match (row, event) {
            (
                None,
                OrderEvent::OrderPlaced {
                    order_id,
                    customer_id,
                    lines,
                    total,
                },
            ) => OrderRow {
                order_id: order_id.as_uuid(),
                customer_id: customer_id.to_string(),
                status: "PENDING".into(),
                lines: Value::Array(
                    lines
                        .iter()
                        .map(|l| {
                            json!({"sku": l.sku.as_str(), "quantity": l.quantity.get(),
                                   "unit_price": {"amount_minor": l.unit_price.amount_minor(), "currency": l.unit_price.currency().as_str()}})
                        })
                        .collect(),
                ),
                total_minor: total.amount_minor(),
                currency: total.currency().to_string(),
                rejection_reason: None,
                rejection_detail: None,
                version: 0,
                last_event_id: stamp.event_id,
                created_at: stamp.at,
                updated_at: stamp.at,
            },
            (Some(_), OrderEvent::OrderPlaced { .. }) => return Err(FoldError("order placed twice".into())),
            (None, _) => return Err(FoldError("event for an order that was never placed".into())),
            (Some(mut row), OrderEvent::OrderApproved { .. }) => {
                row.status = "APPROVED".into();
                row
            }
            (Some(mut row), OrderEvent::OrderRejected { reason, detail, .. }) => {
                row.status = "REJECTED".into();
                row.rejection_reason = Some(reason.code().to_owned());
                row.rejection_detail = Some(detail).filter(|d| !d.is_empty());
                row
            }
            (Some(row), OrderEvent::OrderCancellationRequested { .. }) => row,
            (Some(mut row), OrderEvent::OrderCancelled { .. }) => {
                row.status = "CANCELLED".into();
                row
            }
        };
        row.version = stamp.version;
        row.last_event_id = stamp.event_id;
        row.updated_at = stamp.at;
        Ok(row)
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[OrderRow],
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "INSERT INTO {table} (order_id, customer_id, status, lines, total_minor, currency, rejection_reason, rejection_detail, \
                                 version, last_event_id, created_at, updated_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int8[], $6::text[], $7::text[], $8::text[], \
                                  $9::int8[], $10::uuid[], $11::timestamptz[], $12::timestamptz[]) \
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, rejection_reason = EXCLUDED.rejection_reason, \
               rejection_detail = EXCLUDED.rejection_detail, version = EXCLUDED.version, \
               last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at"))
        .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.customer_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.lines.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.total_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.rejection_reason.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.rejection_detail.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(connection)
        .await?;
        Ok(())
    }
}
