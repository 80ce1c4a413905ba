//! Operators' skips, durable in `operator_skips` and read by every batch of every generation.
//!
//! A skipped record is never applied, parked or dead-lettered again, and is no anomaly. It keeps
//! its place in its aggregate's chain: the events after it name it as their predecessor, so an
//! event that does not extend its row's head may extend the skipped links that follow that head
//! in the log. A record skipped with an unreadable envelope has no known id: the event after it
//! is taken to name it, whatever predecessor it gives, as long as its version is the next one.
//! Skips are keyed by the projection's name, not its generation, so a rebuild sees every skip
//! made on the live generation and ends with the same rows.

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::projection::RowHead;

/// Skips are rare: up to this many are read whole per batch and matched in memory (as parked
/// aggregates are), past it only those of the batch's aggregates are read.
const READ_WHOLE: i64 = 1000;

/// One skipped record, as its aggregate's chain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Skip {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) aggregate_id: String,
    /// The version the record holds in its aggregate's chain.
    pub(super) version: i64,
    /// Its event id; `None` when its envelope could not be read (then its predecessor is
    /// unknown too).
    pub(super) event_id: Option<Uuid>,
    pub(super) predecessor: Option<Uuid>,
}

/// The last link of an aggregate's chain, as far as the log has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// No event yet (version 0).
    Start,
    Event(Uuid),
    /// A skipped record whose id is unknown.
    Unknown,
}

impl Last {
    /// Whether an event naming `predecessor` follows this link.
    fn named_by(self, predecessor: Option<Uuid>) -> bool {
        match self {
            Self::Start => predecessor.is_none(),
            Self::Event(id) => predecessor == Some(id),
            Self::Unknown => predecessor.is_some(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct End {
    version: i64,
    last: Last,
}

impl End {
    fn of(row: Option<RowHead>) -> Self {
        row.map_or(
            Self {
                version: 0,
                last: Last::Start,
            },
            |head| Self {
                version: head.version,
                last: Last::Event(head.last_event_id),
            },
        )
    }

    fn followed_by(self, version: i64, predecessor: Option<Uuid>) -> bool {
        self.version.checked_add(1) == Some(version) && self.last.named_by(predecessor)
    }
}

/// The skips of one projection's topic that a batch needs: those of its aggregates.
#[derive(Debug, Default)]
pub(super) struct Skips {
    /// (partition, offset) of every skipped record.
    offsets: HashSet<(i32, i64)>,
    /// Per aggregate, in log order.
    by_aggregate: HashMap<String, Vec<Skip>>,
}

impl Skips {
    pub(super) fn new(skips: impl IntoIterator<Item = Skip>) -> Self {
        let mut all = Self::default();
        for skip in skips {
            all.offsets.insert((skip.partition, skip.offset));
            all.by_aggregate
                .entry(skip.aggregate_id.clone())
                .or_default()
                .push(skip);
        }
        for skips in all.by_aggregate.values_mut() {
            skips.sort_by_key(|s| (s.partition, s.offset));
        }
        all
    }

    /// Whether an operator skipped the record at this position.
    pub(super) fn contains(&self, partition: i32, offset: i64) -> bool {
        self.offsets.contains(&(partition, offset))
    }

    /// The chain ends of `aggregate` an event at `offset` may follow: its row's head, then each
    /// skipped record before `offset` that extends the end before it.
    fn ends(&self, aggregate: &str, offset: i64, row: Option<RowHead>) -> Vec<End> {
        let mut end = End::of(row);
        let mut ends = vec![end];
        for skip in self
            .by_aggregate
            .get(aggregate)
            .into_iter()
            .flatten()
            .filter(|s| s.offset < offset)
        {
            let extends = end.version.checked_add(1) == Some(skip.version)
                && (skip.event_id.is_none() || end.last.named_by(skip.predecessor));
            if extends {
                end = End {
                    version: skip.version,
                    last: skip.event_id.map_or(Last::Unknown, Last::Event),
                };
                ends.push(end);
            }
        }
        ends
    }

    /// The chain end, past the row's head, over skipped records before `offset`, that an
    /// event (`version`, `predecessor`) follows, if any.
    fn bridge(
        &self,
        aggregate: &str,
        offset: i64,
        row: Option<RowHead>,
        version: i64,
        predecessor: Option<Uuid>,
    ) -> Option<End> {
        if !self.by_aggregate.contains_key(aggregate) {
            return None;
        }
        self.ends(aggregate, offset, row)
            .into_iter()
            .skip(1)
            .find(|end| end.followed_by(version, predecessor))
    }

    /// The head an event (`version`, `predecessor`) at `offset` of `aggregate` is judged
    /// against: its row's head, unless the event extends the skipped records that follow that
    /// head instead, then the last of those (the event's own predecessor standing in for a
    /// skipped record's unknown id). The log-order rule is then applied to that head as to any.
    pub(super) fn head_for(
        &self,
        aggregate: &str,
        offset: i64,
        row: Option<RowHead>,
        version: i64,
        predecessor: Option<Uuid>,
    ) -> Option<RowHead> {
        if End::of(row).followed_by(version, predecessor) {
            return row;
        }
        let Some(end) = self.bridge(aggregate, offset, row, version, predecessor) else {
            return row;
        };
        let last_event_id = match end.last {
            Last::Event(id) => Some(id),
            Last::Unknown => predecessor,
            Last::Start => None,
        };
        last_event_id.map_or(row, |last_event_id| {
            Some(RowHead {
                version: end.version,
                last_event_id,
            })
        })
    }

    /// Whether an event (`version`, `predecessor`) at `offset` extends `aggregate`'s chain,
    /// directly or over skipped records.
    pub(super) fn follows(
        &self,
        aggregate: &str,
        offset: i64,
        row: Option<RowHead>,
        version: i64,
        predecessor: Option<Uuid>,
    ) -> bool {
        End::of(row).followed_by(version, predecessor)
            || self
                .bridge(aggregate, offset, row, version, predecessor)
                .is_some()
    }

    /// The version `aggregate` expects next at `offset`: what a record skipped there with an
    /// unreadable envelope stands for.
    pub(super) fn next_version(&self, aggregate: &str, offset: i64, row: Option<RowHead>) -> i64 {
        self.ends(aggregate, offset, row)
            .last()
            .map_or(1, |end| end.version.saturating_add(1))
    }
}

/// The skips of `projection` (its name, not a generation) on `topic` for the aggregates `ids`.
pub(super) async fn load(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    ids: &[String],
) -> Result<Skips, sqlx::Error> {
    let mut rows = sqlx::query(
        "SELECT partition, \"offset\", aggregate_id, version, event_id, predecessor \
         FROM operator_skips WHERE projection = $1 AND topic = $2 LIMIT $3",
    )
    .bind(projection)
    .bind(topic)
    .bind(READ_WHOLE + 1)
    .fetch_all(&mut *connection)
    .await?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) > READ_WHOLE {
        rows = sqlx::query(
            "SELECT partition, \"offset\", aggregate_id, version, event_id, predecessor \
             FROM operator_skips WHERE projection = $1 AND topic = $2 AND aggregate_id = ANY($3)",
        )
        .bind(projection)
        .bind(topic)
        .bind(ids)
        .fetch_all(&mut *connection)
        .await?;
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut skips = Vec::new();
    for row in rows {
        let aggregate_id: String = row.try_get("aggregate_id")?;
        if !wanted.contains(aggregate_id.as_str()) {
            continue;
        }
        skips.push(Skip {
            partition: row.try_get("partition")?,
            offset: row.try_get("offset")?,
            aggregate_id,
            version: row.try_get("version")?,
            event_id: row.try_get("event_id")?,
            predecessor: row.try_get("predecessor")?,
        });
    }
    Ok(Skips::new(skips))
}

/// Whether the record at this position is already skipped for `projection`.
pub(super) async fn is_recorded(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM operator_skips WHERE projection = $1 AND topic = $2 AND partition = $3 AND \"offset\" = $4",
    )
    .bind(projection)
    .bind(topic)
    .bind(partition)
    .bind(offset)
    .fetch_optional(connection)
    .await?;
    Ok(found.is_some())
}

/// Records a skip for `projection` (its name: every generation honours it).
pub(super) async fn record(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    skip: &Skip,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO operator_skips (projection, topic, partition, \"offset\", aggregate_id, version, event_id, predecessor, reason, skipped_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now()) ON CONFLICT DO NOTHING",
    )
    .bind(projection)
    .bind(topic)
    .bind(skip.partition)
    .bind(skip.offset)
    .bind(&skip.aggregate_id)
    .bind(skip.version)
    .bind(skip.event_id)
    .bind(skip.predecessor)
    .bind(reason)
    .execute(connection)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: i64, id: Uuid) -> Option<RowHead> {
        Some(RowHead {
            version,
            last_event_id: id,
        })
    }

    fn skip(offset: i64, version: i64, ids: Option<(Uuid, Option<Uuid>)>) -> Skip {
        Skip {
            partition: 0,
            offset,
            aggregate_id: "a".into(),
            version,
            event_id: ids.map(|(id, _)| id),
            predecessor: ids.and_then(|(_, p)| p),
        }
    }

    #[test]
    fn an_event_after_a_skipped_record_extends_the_chain_over_it() {
        let (e1, e2, e3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let skips = Skips::new([skip(5, 2, Some((e2, Some(e1))))]);
        assert!(skips.contains(0, 5));
        assert_eq!(
            skips.head_for("a", 6, head(1, e1), 3, Some(e2)),
            head(2, e2)
        );
        assert!(skips.follows("a", 6, head(1, e1), 3, Some(e2)));
        assert!(
            !skips.follows("a", 6, head(1, e1), 3, Some(e3)),
            "an event naming another predecessor does not"
        );
        assert!(
            !skips.follows("a", 4, head(1, e1), 3, Some(e2)),
            "nor one before the skipped record"
        );
    }

    #[test]
    fn an_unreadable_skipped_record_is_named_by_whatever_event_comes_next() {
        let (e1, unknown) = (Uuid::now_v7(), Uuid::now_v7());
        let skips = Skips::new([skip(5, 2, None)]);
        assert_eq!(skips.next_version("a", 5, head(1, e1)), 2);
        assert_eq!(
            skips.head_for("a", 6, head(1, e1), 3, Some(unknown)),
            head(2, unknown)
        );
        assert!(skips.follows("a", 6, head(1, e1), 3, Some(unknown)));
        assert!(
            !skips.follows("a", 6, head(1, e1), 4, Some(unknown)),
            "one skipped record stands for one version"
        );
    }

    #[test]
    fn a_stray_record_skipped_lets_the_event_that_follows_the_row_apply_as_usual() {
        let e1 = Uuid::now_v7();
        let skips = Skips::new([skip(5, 2, None)]);
        assert_eq!(
            skips.head_for("a", 6, head(1, e1), 2, Some(e1)),
            head(1, e1)
        );
        assert!(skips.follows("a", 6, head(1, e1), 2, Some(e1)));
    }

    #[test]
    fn a_skipped_first_event_lets_the_second_start_the_chain() {
        let e1 = Uuid::now_v7();
        let skips = Skips::new([skip(5, 1, Some((e1, None)))]);
        assert_eq!(skips.head_for("a", 6, None, 2, Some(e1)), head(1, e1));
        assert!(skips.follows("a", 6, None, 2, Some(e1)));
        assert!(!skips.follows("a", 6, None, 1, Some(e1)));
    }

    #[test]
    fn a_skip_the_chain_has_moved_past_is_ignored() {
        let (e1, e2) = (Uuid::now_v7(), Uuid::now_v7());
        let skips = Skips::new([skip(5, 1, None)]);
        assert_eq!(skips.next_version("a", 9, head(2, e2)), 3);
        assert!(!skips.follows("a", 9, head(2, e2), 2, Some(e1)));
    }
}
