//! `order_sagas`: each saga's state and its steps (actions and compensations) with status and
//! time, behind `GET /v1/orders/{order_id}/saga`.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::saga::{SagaEvent, SagaStep};
use domain::AggregateKind;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::projection::{FoldError, Projection, RowHead, Stamp};

/// One step as the view shows it. A release asked again after a late reservation is a new
/// attempt (a new entry); a step asked again after a timeout is the same entry, `retries` + 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRow {
    pub name: String,
    /// `action` or `compensation`.
    pub kind: String,
    pub attempt: u32,
    /// REQUESTED, SUCCEEDED, FAILED, TIMED_OUT, or LATE (succeeded after its timeout, and
    /// released by the compensation).
    pub status: String,
    /// Why it failed (a rejection reason code).
    pub detail: Option<String>,
    pub retries: u32,
    pub requested_at: DateTime<Utc>,
    /// When the status last changed.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub saga_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub state: String,
    pub rejection_reason: Option<String>,
    pub steps: Vec<StepRow>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The last answer or move (not a timeout, not a re-request after one): tells stuck sagas.
    pub last_progress_at: DateTime<Utc>,
    pub version: i64,
    pub last_event_id: Uuid,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct OrderSagas;

impl OrderSagas {
    pub const NAME_STR: &'static str = "order_sagas";
}

const STATUS_REQUESTED: &str = "REQUESTED";

impl SagaRow {
    fn request(&mut self, step: SagaStep, attempt: u32, at: DateTime<Utc>) {
        let name = step.name();
        if let Some(existing) = self
            .steps
            .iter_mut()
            .rev()
            .find(|s| s.name == name && s.attempt == attempt)
        {
            existing.retries += 1;
            existing.status = STATUS_REQUESTED.into();
            existing.at = at;
            return;
        }
        self.steps.push(StepRow {
            name,
            kind: if step.is_compensation() {
                "compensation".into()
            } else {
                "action".into()
            },
            attempt,
            status: STATUS_REQUESTED.into(),
            detail: None,
            retries: 0,
            requested_at: at,
            at,
        });
    }

    /// Sets the status of the step's latest attempt.
    fn settle(&mut self, step: SagaStep, status: &str, detail: Option<String>, at: DateTime<Utc>) {
        let name = step.name();
        if let Some(existing) = self.steps.iter_mut().rev().find(|s| s.name == name) {
            existing.status = if status == "SUCCEEDED" && existing.status == "TIMED_OUT" {
                "LATE".into()
            } else {
                status.into()
            };
            existing.detail = detail;
            existing.at = at;
        }
    }
}

#[async_trait]
impl Projection for OrderSagas {
    const NAME: &'static str = Self::NAME_STR;
    const KIND: AggregateKind = AggregateKind::OrderSaga;
    type Event = SagaEvent;
    type Row = SagaRow;

    fn head(row: &SagaRow) -> RowHead {
        RowHead {
            version: row.version,
            last_event_id: row.last_event_id,
        }
    }

    async fn load(
        connection: &mut PgConnection,
        table: &str,
        ids: &[String],
    ) -> Result<HashMap<String, SagaRow>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT saga_id, order_id, customer_id, state, rejection_reason, steps, started_at, \
             finished_at, last_progress_at, version, last_event_id, updated_at \
             FROM {table} WHERE saga_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(connection)
        .await?;
        rows.into_iter()
            .map(|r| {
                let Json(steps): Json<Vec<StepRow>> = r.try_get("steps")?;
                let row = SagaRow {
                    saga_id: r.try_get("saga_id")?,
                    order_id: r.try_get("order_id")?,
                    customer_id: r.try_get("customer_id")?,
                    state: r.try_get("state")?,
                    rejection_reason: r.try_get("rejection_reason")?,
                    steps,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    last_progress_at: r.try_get("last_progress_at")?,
                    version: r.try_get("version")?,
                    last_event_id: r.try_get("last_event_id")?,
                    updated_at: r.try_get("updated_at")?,
                };
                Ok((row.saga_id.clone(), row))
            })
            .collect()
    }

    fn fold(
        row: Option<SagaRow>,
        aggregate_id: &str,
        event: SagaEvent,
        stamp: Stamp,
    ) -> Result<SagaRow, FoldError> {
        let at = stamp.at;
        let mut row = match (row, &event) {
            (
                None,
                SagaEvent::SagaStarted {
                    order_id,
                    customer_id,
                    ..
                },
            ) => SagaRow {
                saga_id: aggregate_id.to_owned(),
                order_id: order_id.to_string(),
                customer_id: customer_id.to_string(),
                state: String::new(),
                rejection_reason: None,
                steps: vec![],
                started_at: at,
                finished_at: None,
                last_progress_at: at,
                version: 0,
                last_event_id: stamp.event_id,
                updated_at: at,
            },
            (None, _) => return Err(FoldError("saga event before the saga started".into())),
            (Some(_), SagaEvent::SagaStarted { .. }) => {
                return Err(FoldError("the saga started twice".into()))
            }
            (Some(row), _) => row,
        };
        // A timeout and the re-request right after it are not progress (see the domain rule).
        let after_timeout = row
            .steps
            .iter()
            .any(|s| s.status == "TIMED_OUT" && s.at == row.updated_at);
        let retry = matches!(event, SagaEvent::StepTimedOut { .. })
            || (event.is_request() && after_timeout);
        if let Some(phase) = event.phase_after() {
            row.state = phase.into();
        }
        match &event {
            SagaEvent::StockReservationRequested { line } => {
                row.request(SagaStep::ReserveStock { line: *line }, 1, at)
            }
            SagaEvent::StockReserved { line } => row.settle(
                SagaStep::ReserveStock { line: *line },
                "SUCCEEDED",
                None,
                at,
            ),
            SagaEvent::StockReservationFailed { line, reason } => row.settle(
                SagaStep::ReserveStock { line: *line },
                "FAILED",
                Some(reason.code().into()),
                at,
            ),
            SagaEvent::CreditReservationRequested => row.request(SagaStep::ReserveCredit, 1, at),
            SagaEvent::CreditReserved => row.settle(SagaStep::ReserveCredit, "SUCCEEDED", None, at),
            SagaEvent::CreditReservationFailed { reason } => row.settle(
                SagaStep::ReserveCredit,
                "FAILED",
                Some(reason.code().into()),
                at,
            ),
            SagaEvent::ApprovalRequested => row.request(SagaStep::Approve, 1, at),
            SagaEvent::SagaApproved => {
                row.settle(SagaStep::Approve, "SUCCEEDED", None, at);
                row.finished_at = Some(at);
            }
            SagaEvent::StepTimedOut { step } => row.settle(*step, "TIMED_OUT", None, at),
            SagaEvent::CompensationStarted { .. } => row.finished_at = None,
            SagaEvent::StockReleaseRequested { line, attempt } => {
                row.request(SagaStep::ReleaseStock { line: *line }, *attempt, at)
            }
            SagaEvent::StockReleased { line } => row.settle(
                SagaStep::ReleaseStock { line: *line },
                "SUCCEEDED",
                None,
                at,
            ),
            SagaEvent::CreditReleaseRequested { attempt } => {
                row.request(SagaStep::ReleaseCredit, *attempt, at)
            }
            SagaEvent::CreditReleased => row.settle(SagaStep::ReleaseCredit, "SUCCEEDED", None, at),
            SagaEvent::RejectionRequested { reason, .. } => {
                row.rejection_reason = Some(reason.code().into());
                row.request(SagaStep::Reject, 1, at);
            }
            SagaEvent::CancellationConfirmationRequested => {
                row.request(SagaStep::ConfirmCancellation, 1, at)
            }
            SagaEvent::SagaRejected { reason } => {
                row.rejection_reason = Some(reason.code().into());
                row.settle(SagaStep::Reject, "SUCCEEDED", None, at);
                row.finished_at = Some(at);
            }
            SagaEvent::SagaCancelled => {
                row.settle(SagaStep::ConfirmCancellation, "SUCCEEDED", None, at);
                row.finished_at = Some(at);
            }
            SagaEvent::SagaStarted { .. } => {}
        }
        if !retry {
            row.last_progress_at = at;
        }
        row.version = stamp.version;
        row.last_event_id = stamp.event_id;
        row.updated_at = at;
        Ok(row)
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[SagaRow],
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let steps: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::to_value(&r.steps).unwrap_or_default())
            .collect();
        sqlx::query(&format!(
            "INSERT INTO {table} (saga_id, order_id, customer_id, state, rejection_reason, steps, \
               started_at, finished_at, last_progress_at, version, last_event_id, updated_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
               $6::jsonb[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::int8[], \
               $11::uuid[], $12::timestamptz[]) \
             ON CONFLICT (saga_id) DO UPDATE SET state = EXCLUDED.state, \
               rejection_reason = EXCLUDED.rejection_reason, steps = EXCLUDED.steps, \
               finished_at = EXCLUDED.finished_at, last_progress_at = EXCLUDED.last_progress_at, \
               version = EXCLUDED.version, last_event_id = EXCLUDED.last_event_id, \
               updated_at = EXCLUDED.updated_at"
        ))
        .bind(rows.iter().map(|r| r.saga_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.order_id.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.customer_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.state.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.rejection_reason.clone())
                .collect::<Vec<_>>(),
        )
        .bind(steps)
        .bind(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.finished_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_progress_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(connection)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use domain::order::OrderLine;
    use domain::saga::SagaOutcome;
    use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};

    fn fold_all(events: Vec<SagaEvent>) -> SagaRow {
        let mut row = None;
        for (i, event) in events.into_iter().enumerate() {
            let stamp = Stamp {
                version: i as i64 + 1,
                event_id: Uuid::now_v7(),
                at: Utc::now() + chrono::Duration::milliseconds(i as i64),
            };
            row = Some(OrderSagas::fold(row, "saga-1", event, stamp).unwrap());
        }
        row.unwrap()
    }

    fn started() -> SagaEvent {
        let usd = Currency::try_from("USD").unwrap();
        SagaEvent::SagaStarted {
            order_id: OrderId::from_uuid(Uuid::from_u128(1)),
            customer_id: CustomerId::try_from("ada").unwrap(),
            lines: vec![OrderLine {
                sku: Sku::try_from("apple").unwrap(),
                quantity: Quantity::try_from(1).unwrap(),
                unit_price: Money::new(100, usd).unwrap(),
            }],
            total: Money::new(100, usd).unwrap(),
        }
    }

    #[test]
    fn a_reservation_that_lands_after_its_timeout_shows_as_late_and_its_release_as_a_new_attempt() {
        let reserve = SagaStep::ReserveStock { line: 0 };
        let row = fold_all(vec![
            started(),
            SagaEvent::StockReservationRequested { line: 0 },
            SagaEvent::StepTimedOut { step: reserve },
            SagaEvent::CompensationStarted {
                outcome: SagaOutcome::Cancel,
            },
            SagaEvent::StockReleaseRequested {
                line: 0,
                attempt: 1,
            },
            SagaEvent::StockReleased { line: 0 },
            SagaEvent::StockReserved { line: 0 },
            SagaEvent::StockReleaseRequested {
                line: 0,
                attempt: 2,
            },
        ]);
        let steps: Vec<(String, u32, String)> = row
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.attempt, s.status.clone()))
            .collect();
        assert_eq!(
            steps,
            [
                ("reserve-stock/0".into(), 1, "LATE".into()),
                ("release-stock/0".into(), 1, "SUCCEEDED".into()),
                ("release-stock/0".into(), 2, "REQUESTED".into()),
            ]
        );
        assert_eq!(row.state, "COMPENSATING");
        assert_eq!(row.finished_at, None);
    }

    #[test]
    fn a_step_asked_again_after_a_timeout_counts_a_retry_and_no_progress() {
        let row = fold_all(vec![
            started(),
            SagaEvent::CreditReservationRequested,
            SagaEvent::CreditReserved,
            SagaEvent::ApprovalRequested,
        ]);
        let progress = row.last_progress_at;
        let row = {
            let mut row = Some(row);
            for (i, event) in [
                SagaEvent::StepTimedOut {
                    step: SagaStep::Approve,
                },
                SagaEvent::ApprovalRequested,
            ]
            .into_iter()
            .enumerate()
            {
                let stamp = Stamp {
                    version: 5 + i as i64,
                    event_id: Uuid::now_v7(),
                    at: progress + chrono::Duration::seconds(10),
                };
                row = Some(OrderSagas::fold(row, "saga-1", event, stamp).unwrap());
            }
            row.unwrap()
        };
        let approve = row.steps.last().unwrap();
        assert_eq!((approve.status.as_str(), approve.retries), ("REQUESTED", 1));
        assert_eq!(row.last_progress_at, progress, "a retry is not progress");
        assert!(OrderSagas::fold(
            None,
            "saga-2",
            SagaEvent::SagaApproved,
            Stamp {
                version: 1,
                event_id: Uuid::now_v7(),
                at: Utc::now(),
            }
        )
        .is_err());
    }
}
