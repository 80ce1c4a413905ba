//! The statements of the batch transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use platform::topics::Topics;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::{PgConnection, Row};

use super::Outcome;

/// Headers as parked (JSON), back into Kafka headers.
pub(super) fn headers_from_json(json: &serde_json::Value) -> rdkafka::message::OwnedHeaders {
    let mut headers = rdkafka::message::OwnedHeaders::new();
    if let Some(map) = json.as_object() {
        for (key, value) in map {
            headers = headers.insert(rdkafka::message::Header {
                key: key.as_str(),
                value: value.as_str(),
            });
        }
    }
    headers
}

pub(super) fn headers_json(message: &OwnedMessage) -> serde_json::Value {
    use rdkafka::message::Headers;
    let mut map = serde_json::Map::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned());
            map.insert(
                header.key.to_owned(),
                value.map_or(serde_json::Value::Null, serde_json::Value::String),
            );
        }
    }
    serde_json::Value::Object(map)
}

/// Where a projection stands in one partition: the next offset to apply, and the log-order
/// rule's clock after the records before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Progress {
    pub(super) next_offset: i64,
    pub(super) clock: i64,
}

pub(super) async fn lock_offsets(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, Progress>, sqlx::Error> {
    // Make sure the rows exist, so FOR UPDATE serialises concurrent batches on a partition.
    sqlx::query(
        "INSERT INTO projection_offsets (projection, topic, partition, next_offset, updated_at) \
         SELECT $1, $2, p, 0, now() FROM UNNEST($3::int4[]) AS p ON CONFLICT DO NOTHING",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .execute(&mut *connection)
    .await?;
    let rows = sqlx::query(
        "SELECT partition, next_offset, clock_ms FROM projection_offsets \
         WHERE projection = $1 AND topic = $2 AND partition = ANY($3) FOR UPDATE",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i32, _>("partition")?,
                Progress {
                    next_offset: r.try_get("next_offset")?,
                    clock: r.try_get("clock_ms")?,
                },
            ))
        })
        .collect()
}

/// Moves the offsets and announces it on [`super::CHECKPOINT_CHANNEL`], in one statement. The
/// notification is delivered when (and only if) the batch's transaction commits; Postgres folds
/// identical notifications of one transaction into one. The payload is the projection's name
/// without its generation, so a rebuild's batches wake waiters too: that costs them a re-check.
pub(super) async fn store_offsets(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    next: &BTreeMap<i32, Progress>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH moved AS ( \
           UPDATE projection_offsets o SET next_offset = GREATEST(o.next_offset, n.next), \
             clock_ms = GREATEST(o.clock_ms, n.clock), updated_at = now() \
           FROM UNNEST($3::int4[], $4::int8[], $6::int8[]) AS n(partition, next, clock) \
           WHERE o.projection = $1 AND o.topic = $2 AND o.partition = n.partition) \
         SELECT pg_notify($5, split_part($1, '@', 1))",
    )
    .bind(projection)
    .bind(topic)
    .bind(next.keys().copied().collect::<Vec<_>>())
    .bind(next.values().map(|p| p.next_offset).collect::<Vec<_>>())
    .bind(super::CHECKPOINT_CHANNEL)
    .bind(next.values().map(|p| p.clock).collect::<Vec<_>>())
    .execute(connection)
    .await?;
    Ok(())
}

/// Parked aggregates are rare: up to this many are read whole and matched in memory, which
/// spares the database a lookup of every id of the batch (a measured 2.5 ms per 2,000 ids).
const PARKED_READ_WHOLE: i64 = 1000;

pub(super) async fn parked_aggregates(
    connection: &mut PgConnection,
    projection: &str,
    ids: &[String],
) -> Result<HashSet<String>, sqlx::Error> {
    let few: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM parked_aggregates WHERE projection = $1 LIMIT $2",
    )
    .bind(projection)
    .bind(PARKED_READ_WHOLE + 1)
    .fetch_all(&mut *connection)
    .await?;
    let parked: Vec<String> = if i64::try_from(few.len()).unwrap_or(i64::MAX) <= PARKED_READ_WHOLE {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        few.into_iter()
            .filter(|id| wanted.contains(id.as_str()))
            .collect()
    } else {
        sqlx::query_scalar("SELECT aggregate_id FROM parked_aggregates WHERE projection = $1 AND aggregate_id = ANY($2)")
            .bind(projection)
            .bind(ids)
            .fetch_all(&mut *connection)
            .await?
    };
    if parked.is_empty() {
        return Ok(HashSet::new());
    }
    // An operator may be releasing one of them (`dlq redrive` or `skip` hold its parking row
    // FOR UPDATE): wait for that and take what it left, so that no event is parked behind an
    // aggregate just released, nor applied on rows read before the release.
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM parked_aggregates WHERE projection = $1 AND aggregate_id = ANY($2) FOR SHARE",
    )
    .bind(projection)
    .bind(parked.as_slice())
    .fetch_all(connection)
    .await?;
    Ok(locked.into_iter().collect())
}

pub(super) async fn record(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    outcome: &Outcome,
) -> Result<(), sqlx::Error> {
    if !outcome.anomalies.is_empty() {
        sqlx::query(
            "INSERT INTO projection_anomalies (projection, topic, partition, \"offset\", aggregate_id, kind, detail, seen_at) \
             SELECT $1, $2, p, o, a, k, d, now() FROM UNNEST($3::int4[], $4::int8[], $5::text[], $6::text[], $7::text[]) AS t(p, o, a, k, d) \
             ON CONFLICT DO NOTHING",
        )
        .bind(projection)
        .bind(topic)
        .bind(outcome.anomalies.iter().map(|a| a.partition).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.offset).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.aggregate_id.clone()).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.kind.to_owned()).collect::<Vec<_>>())
        .bind(outcome.anomalies.iter().map(|a| a.detail.clone()).collect::<Vec<_>>())
        .execute(&mut *connection)
        .await?;
    }
    for (aggregate_id, reason) in &outcome.new_parks {
        sqlx::query(
            "INSERT INTO parked_aggregates (projection, aggregate_id, dlq_topic, reason, parked_at) VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT DO NOTHING",
        )
        .bind(projection)
        .bind(aggregate_id)
        .bind(Topics::dead_letters(topic))
        .bind(reason)
        .execute(&mut *connection)
        .await?;
    }
    for parked in &outcome.parked_events {
        sqlx::query(
            "INSERT INTO parked_events (projection, topic, partition, \"offset\", aggregate_id, payload, headers, parked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, now()) ON CONFLICT DO NOTHING",
        )
        .bind(projection)
        .bind(topic)
        .bind(parked.partition)
        .bind(parked.offset)
        .bind(&parked.aggregate_id)
        .bind(&parked.payload)
        .bind(&parked.headers)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}
