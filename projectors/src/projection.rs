//! What a projection is: load the rows a batch touches, fold each event into its row (pure),
//! store the changed rows in one statement. The runner owns everything else (offsets, the
//! log-order rule, parking, dead letters), so a projection is only its SQL and its fold.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::AggregateKind;
use platform::envelope::EventEnvelope;
use schemas::WireRecord;
use sqlx::PgConnection;
use uuid::Uuid;

/// The chain head a row records: the last applied event of its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowHead {
    pub version: i64,
    pub last_event_id: Uuid,
}

/// An event that cannot be folded into its row (a handler failure): dead-lettered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FoldError(pub String);

/// The envelope fields a fold records on the row.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub version: i64,
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
}

impl Stamp {
    pub fn of(envelope: &EventEnvelope) -> Self {
        Self {
            version: i64::try_from(envelope.version.get()).unwrap_or(i64::MAX),
            event_id: envelope.event_id,
            at: envelope.occurred_at,
        }
    }
}

#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Name of the projection, and of the view that serves it (generation tables are
    /// `<NAME>_g<N>`; offsets, parking and anomalies are keyed `<NAME>@g<N>`).
    const NAME: &'static str;
    /// The aggregate kind whose events topic it reads.
    const KIND: AggregateKind;
    type Event: WireRecord + Clone + Send + Sync;
    type Row: Clone + Send + Sync + std::fmt::Debug;

    fn head(row: &Self::Row) -> RowHead;

    /// The current rows of these aggregates in `table` (absent ones are simply missing).
    async fn load(
        connection: &mut PgConnection,
        table: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Self::Row>, sqlx::Error>;

    /// The row after `event`. Pure: no I/O. `Err` when the event does not fit the row.
    fn fold(
        row: Option<Self::Row>,
        aggregate_id: &str,
        event: Self::Event,
        stamp: Stamp,
    ) -> Result<Self::Row, FoldError>;

    /// Writes the changed rows to `table` (one round trip, whatever the count).
    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[Self::Row],
    ) -> Result<(), sqlx::Error>;
}
