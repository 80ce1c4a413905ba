//! Read-your-writes on request: with `X-Consistency-Token`, answer only once every position in
//! the token has been applied by the projection of its topic, waiting up to
//! `X-Consistency-Wait-Ms` (default 5000, at most 30000); past it, 504.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use domain::AggregateKind;
use platform::consistency::ConsistencyToken;
use platform::topics::Topics;
use sqlx::PgPool;

use crate::problem::ApiError;

pub const DEFAULT_WAIT_MS: u64 = 5000;
pub const MAX_WAIT_MS: u64 = 30_000;
const POLL: Duration = Duration::from_millis(10);

/// The projection that applies events of a kind.
fn projection(kind: AggregateKind) -> Option<&'static str> {
    match kind {
        AggregateKind::Customer => Some("customers"),
        AggregateKind::InventoryItem => Some("inventory"),
        AggregateKind::Order => Some("orders"),
        AggregateKind::OrderSaga => None,
    }
}

/// Parses the headers (400 when malformed) and waits if a token was given.
pub async fn wait_for(headers: &HeaderMap, pool: &PgPool, topics: &Topics) -> Result<(), ApiError> {
    let Some(raw) = headers.get("x-consistency-token") else {
        return Ok(());
    };
    let token = raw
        .to_str()
        .ok()
        .and_then(|raw| ConsistencyToken::decode(raw).ok())
        .ok_or_else(|| {
            ApiError::BadRequest("X-Consistency-Token is not a token this service issued".into())
        })?;
    let wait_ms = match headers.get("x-consistency-wait-ms") {
        None => DEFAULT_WAIT_MS,
        Some(raw) => raw
            .to_str()
            .ok()
            .and_then(|r| r.trim().parse::<u64>().ok())
            .filter(|ms| *ms <= MAX_WAIT_MS)
            .ok_or_else(|| ApiError::BadRequest(format!("X-Consistency-Wait-Ms must be a number of milliseconds from 0 to {MAX_WAIT_MS}")))?,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_millis(wait_ms);
    loop {
        if caught_up(&token, pool, topics).await? {
            metrics::histogram!("consistency_wait_seconds").record(started.elapsed().as_secs_f64());
            return Ok(());
        }
        if Instant::now() >= deadline {
            metrics::counter!("consistency_wait_timeouts_total").increment(1);
            return Err(ApiError::NotCaughtUp { waited_ms: wait_ms });
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

async fn caught_up(
    token: &ConsistencyToken,
    pool: &PgPool,
    topics: &Topics,
) -> Result<bool, ApiError> {
    for (kind, partition, offset) in token.positions() {
        let Some(projection) = projection(kind) else {
            continue;
        };
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT o.next_offset FROM projection_offsets o JOIN projection_generations g ON o.projection = projection_key(g.projection, g.generation) WHERE g.projection = $1 AND o.topic = $2 AND o.partition = $3",
        )
        .bind(projection)
        .bind(topics.events(kind))
        .bind(partition)
        .fetch_optional(pool)
        .await?;
        if next.unwrap_or(0) <= offset {
            return Ok(false);
        }
    }
    Ok(true)
}
