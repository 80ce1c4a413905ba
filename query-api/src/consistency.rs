//! Read-your-writes on request: with `X-Consistency-Token`, answer only once every position in
//! the token has been applied by the projection of its topic, waiting up to
//! `X-Consistency-Wait-Ms` (default 5000, at most 30000); past it, 504.
//!
//! A wait holds a request open for up to 30 s, so it is the last thing a view does before
//! reading: the token is verified when the request is extracted ([`ReadAfter`]: a forged,
//! malformed or oversized token is a 400 at once), the caller is authorized next (403 at once),
//! and only then does the view call [`ReadAfter::wait`]. The wait checks the stored offsets once
//! (one query for all positions), then sleeps until the projectors announce that a checkpoint
//! moved ([`crate::checkpoints`]) and checks again. A re-check every [`RECHECK`] whatever
//! happens covers a notification lost while the listener reconnects, so no request outlives its
//! deadline for want of one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use domain::AggregateKind;
use platform::consistency::{ConsistencyToken, TokenError, TokenKey};
use platform::topics::Topics;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::problem::ApiError;
use crate::startup::AppState;

pub const DEFAULT_WAIT_MS: u64 = 5000;
pub const MAX_WAIT_MS: u64 = 30_000;
/// How often a waiting request re-checks when no notification comes.
pub const RECHECK: Duration = Duration::from_millis(500);

/// The projection that applies events of a kind (its name in `projection_generations` and in
/// the projectors' checkpoint notifications).
pub(crate) fn projection(kind: AggregateKind) -> Option<&'static str> {
    match kind {
        AggregateKind::Customer => Some("customers"),
        AggregateKind::InventoryItem => Some("inventory"),
        AggregateKind::Order => Some("orders"),
        AggregateKind::OrderSaga | AggregateKind::IdempotencyKey => None,
    }
}

/// What a request asked to wait for: nothing, or a verified token and how long to wait.
#[derive(Debug)]
pub struct ReadAfter(Option<Wanted>);

#[derive(Debug)]
struct Wanted {
    token: ConsistencyToken,
    wait: Duration,
}

/// Parses and verifies the headers before the handler runs (after the caller is authenticated,
/// since `Caller` comes first in every view's arguments).
impl FromRequestParts<AppState> for ReadAfter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Self::from_headers(&parts.headers, app.token_key())
    }
}

impl ReadAfter {
    /// 400 for a token that is not one command-api signed, is too long or names too many
    /// positions, or for a wait outside 0..=30000 ms.
    pub fn from_headers(headers: &HeaderMap, key: &TokenKey) -> Result<Self, ApiError> {
        let Some(raw) = headers.get("x-consistency-token") else {
            return Ok(Self(None));
        };
        let raw = raw
            .to_str()
            .map_err(|_| ApiError::BadConsistencyToken(TokenError::Malformed))?;
        let token = ConsistencyToken::decode(raw, key)?;
        let wait_ms = match headers.get("x-consistency-wait-ms") {
            None => DEFAULT_WAIT_MS,
            Some(raw) => raw
                .to_str()
                .ok()
                .and_then(|r| r.trim().parse::<u64>().ok())
                .filter(|ms| *ms <= MAX_WAIT_MS)
                .ok_or_else(|| ApiError::BadRequest(format!("X-Consistency-Wait-Ms must be a number of milliseconds from 0 to {MAX_WAIT_MS}")))?,
        };
        Ok(Self(Some(Wanted {
            token,
            wait: Duration::from_millis(wait_ms),
        })))
    }

    /// Whether [`Self::wait`] may wait at all (a view uses it to skip a pre-authorization
    /// lookup that only matters before a wait).
    pub fn waits(&self) -> bool {
        self.0.is_some()
    }

    /// Returns once the read models include the token's positions; 504 past the deadline.
    /// Call it only after the caller has been authorized for what the view will read.
    pub async fn wait(&self, app: &AppState) -> Result<(), ApiError> {
        let Some(wanted) = &self.0 else {
            return Ok(());
        };
        let started = Instant::now();
        let deadline = started + wanted.wait;
        // Subscribed before the first check: a checkpoint that moves while a check runs still
        // wakes the wait that follows it.
        let projections: BTreeSet<&'static str> = wanted
            .token
            .positions()
            .filter_map(|(kind, _, _)| projection(kind))
            .collect();
        let mut moved: Vec<(&'static str, watch::Receiver<u64>)> = projections
            .into_iter()
            .filter_map(|name| app.checkpoints().subscribe(name).map(|rx| (name, rx)))
            .collect();
        loop {
            for (_, rx) in &mut moved {
                rx.mark_unchanged();
            }
            // The check itself is bounded by the deadline too (a busy pool could hold it).
            let not_caught_up = || ApiError::NotCaughtUp {
                waited_ms: u64::try_from(wanted.wait.as_millis()).unwrap_or(u64::MAX),
            };
            let checked = tokio::time::timeout_at(
                deadline.into(),
                first_behind(&wanted.token, app.pool(), app.topics()),
            )
            .await
            .map_err(|_| {
                metrics::counter!("consistency_wait_timeouts_total").increment(1);
                not_caught_up()
            })??;
            let Some(behind) = checked else {
                metrics::histogram!("consistency_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
                return Ok(());
            };
            let now = Instant::now();
            if now >= deadline {
                metrics::counter!("consistency_wait_timeouts_total").increment(1);
                return Err(not_caught_up());
            }
            // Only the projection that is behind can make the answer change.
            let until = tokio::time::Instant::now() + RECHECK.min(deadline - now);
            let woken = match moved.iter_mut().find(|(name, _)| *name == behind) {
                Some((_, rx)) => tokio::time::timeout_at(until, rx.changed())
                    .await
                    .is_ok_and(|changed| changed.is_ok()),
                None => false,
            };
            if !woken {
                // Timed out (the re-check is due) or no signal to wait on: sleep out the nap.
                tokio::time::sleep_until(until).await;
            }
        }
    }
}

/// The projection of the first position its read model has not applied yet, or `None` when
/// all are applied. One query for the whole token, against the live generation's offsets.
async fn first_behind(
    token: &ConsistencyToken,
    pool: &PgPool,
    topics: &Topics,
) -> Result<Option<&'static str>, ApiError> {
    let (mut names, mut topic_names, mut partitions, mut offsets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (kind, partition, offset) in token.positions() {
        let Some(name) = projection(kind) else {
            continue;
        };
        names.push(name);
        topic_names.push(topics.events(kind));
        partitions.push(partition);
        offsets.push(offset);
    }
    if names.is_empty() {
        return Ok(None);
    }
    let behind: Option<String> = sqlx::query_scalar(
        "SELECT t.projection FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[]) \
           WITH ORDINALITY AS t(projection, topic, partition, wanted, ord) \
         LEFT JOIN projection_generations g ON g.projection = t.projection \
         LEFT JOIN projection_offsets o ON o.projection = projection_key(g.projection, g.generation) \
           AND o.topic = t.topic AND o.partition = t.partition \
         WHERE COALESCE(o.next_offset, 0) <= t.wanted \
         ORDER BY t.ord LIMIT 1",
    )
    .bind(&names)
    .bind(&topic_names)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_optional(pool)
    .await?;
    Ok(behind.and_then(|name| names.into_iter().find(|n| *n == name)))
}
