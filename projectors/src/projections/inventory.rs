//! `inventory`: stock on hand, reserved and (derived) available per SKU.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::inventory::InventoryEvent;
use domain::AggregateKind;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::projection::{FoldError, Projection, RowHead, Stamp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryRow {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub version: i64,
    pub last_event_id: Uuid,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Inventory;

impl Inventory {
    pub const NAME_STR: &'static str = "inventory";
}

#[async_trait]
impl Projection for Inventory {
    const NAME: &'static str = Self::NAME_STR;
    const KIND: AggregateKind = AggregateKind::InventoryItem;
    type Event = InventoryEvent;
    type Row = InventoryRow;

    fn head(row: &InventoryRow) -> RowHead {
        RowHead {
            version: row.version,
            last_event_id: row.last_event_id,
        }
    }

    async fn load(
        connection: &mut PgConnection,
        table: &str,
        ids: &[String],
    ) -> Result<HashMap<String, InventoryRow>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT sku, on_hand, reserved, version, last_event_id, updated_at FROM {table} WHERE sku = ANY($1)"))
            .bind(ids)
            .fetch_all(connection)
            .await?;
        rows.into_iter()
            .map(|r| {
                let row = InventoryRow {
                    sku: r.try_get("sku")?,
                    on_hand: r.try_get("on_hand")?,
                    reserved: r.try_get("reserved")?,
                    version: r.try_get("version")?,
                    last_event_id: r.try_get("last_event_id")?,
                    updated_at: r.try_get("updated_at")?,
                };
                Ok((row.sku.clone(), row))
            })
            .collect()
    }

    fn fold(
        row: Option<InventoryRow>,
        aggregate_id: &str,
        event: InventoryEvent,
        stamp: Stamp,
    ) -> Result<InventoryRow, FoldError> {
        let mut row = match (row, &event) {
            (None, InventoryEvent::StockAdded { .. }) => InventoryRow {
                sku: aggregate_id.to_owned(),
                on_hand: 0,
                reserved: 0,
                version: 0,
                last_event_id: stamp.event_id,
                updated_at: stamp.at,
            },
            (None, _) => return Err(FoldError("stock event for an unknown item".into())),
            (Some(row), _) => row,
        };
        match event {
            InventoryEvent::StockAdded { quantity, .. } => row.on_hand += i64::from(quantity.get()),
            InventoryEvent::StockReserved { quantity, .. } => {
                row.reserved += i64::from(quantity.get())
            }
            InventoryEvent::StockReleased { quantity, .. } => {
                row.reserved -= i64::from(quantity.get());
                if row.reserved < 0 {
                    return Err(FoldError("released more stock than was reserved".into()));
                }
            }
            InventoryEvent::StockReservationRejected { .. } => {}
        }
        row.version = stamp.version;
        row.last_event_id = stamp.event_id;
        row.updated_at = stamp.at;
        Ok(row)
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[InventoryRow],
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "INSERT INTO {table} (sku, on_hand, reserved, version, last_event_id, updated_at) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::uuid[], $6::timestamptz[]) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved, \
               version = EXCLUDED.version, last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at"))
        .bind(rows.iter().map(|r| r.sku.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.on_hand).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.reserved).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(connection)
        .await?;
        Ok(())
    }
}
