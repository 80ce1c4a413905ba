//! `customers`: credit limit, credit reserved and (derived) available per customer.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::customer::CustomerEvent;
use domain::AggregateKind;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::projection::{FoldError, Projection, RowHead, Stamp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRow {
    pub customer_id: String,
    pub name: String,
    pub currency: String,
    pub credit_limit_minor: i64,
    pub credit_reserved_minor: i64,
    pub version: i64,
    pub last_event_id: Uuid,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Customers;

impl Customers {
    pub const NAME_STR: &'static str = "customers";
}

#[async_trait]
impl Projection for Customers {
    const NAME: &'static str = Self::NAME_STR;
    const KIND: AggregateKind = AggregateKind::Customer;
    type Event = CustomerEvent;
    type Row = CustomerRow;

    fn head(row: &CustomerRow) -> RowHead {
        RowHead {
            version: row.version,
            last_event_id: row.last_event_id,
        }
    }

    async fn load(
        connection: &mut PgConnection,
        table: &str,
        ids: &[String],
    ) -> Result<HashMap<String, CustomerRow>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT customer_id, name, currency, credit_limit_minor, credit_reserved_minor, version, last_event_id, updated_at \
             FROM {table} WHERE customer_id = ANY($1)"))
        .bind(ids)
        .fetch_all(connection)
        .await?;
        rows.into_iter()
            .map(|r| {
                let row = CustomerRow {
                    customer_id: r.try_get("customer_id")?,
                    name: r.try_get("name")?,
                    currency: r.try_get("currency")?,
                    credit_limit_minor: r.try_get("credit_limit_minor")?,
                    credit_reserved_minor: r.try_get("credit_reserved_minor")?,
                    version: r.try_get("version")?,
                    last_event_id: r.try_get("last_event_id")?,
                    updated_at: r.try_get("updated_at")?,
                };
                Ok((row.customer_id.clone(), row))
            })
            .collect()
    }

    fn fold(
        row: Option<CustomerRow>,
        aggregate_id: &str,
        event: CustomerEvent,
        stamp: Stamp,
    ) -> Result<CustomerRow, FoldError> {
        let mut row = match (row, &event) {
            (
                None,
                CustomerEvent::CustomerRegistered {
                    name, credit_limit, ..
                },
            ) => CustomerRow {
                customer_id: aggregate_id.to_owned(),
                name: name.to_string(),
                currency: credit_limit.currency().to_string(),
                credit_limit_minor: credit_limit.amount_minor(),
                credit_reserved_minor: 0,
                version: 0,
                last_event_id: stamp.event_id,
                updated_at: stamp.at,
            },
            (Some(_), CustomerEvent::CustomerRegistered { .. }) => {
                return Err(FoldError("customer registered twice".into()))
            }
            (None, _) => {
                return Err(FoldError(
                    "credit event for an unregistered customer".into(),
                ))
            }
            (Some(mut row), CustomerEvent::CreditReserved { amount, .. }) => {
                row.credit_reserved_minor = row
                    .credit_reserved_minor
                    .checked_add(amount.amount_minor())
                    .ok_or_else(|| FoldError("credit reserved out of range".into()))?;
                row
            }
            (Some(mut row), CustomerEvent::CreditReleased { amount, .. }) => {
                row.credit_reserved_minor -= amount.amount_minor();
                if row.credit_reserved_minor < 0 {
                    return Err(FoldError("released more credit than was reserved".into()));
                }
                row
            }
            (Some(row), CustomerEvent::CreditLimitExceeded { .. }) => row,
        };
        row.version = stamp.version;
        row.last_event_id = stamp.event_id;
        row.updated_at = stamp.at;
        Ok(row)
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[CustomerRow],
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&CustomerRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&format!(
            "INSERT INTO {table} (customer_id, name, currency, credit_limit_minor, credit_reserved_minor, version, last_event_id, updated_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::uuid[], $8::timestamptz[]) \
             ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name, currency = EXCLUDED.currency, \
               credit_limit_minor = EXCLUDED.credit_limit_minor, credit_reserved_minor = EXCLUDED.credit_reserved_minor, \
               version = EXCLUDED.version, last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at"))
        .bind(column(|r| r.customer_id.clone()))
        .bind(column(|r| r.name.clone()))
        .bind(column(|r| r.currency.clone()))
        .bind(rows.iter().map(|r| r.credit_limit_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.credit_reserved_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(connection)
        .await?;
        Ok(())
    }
}
