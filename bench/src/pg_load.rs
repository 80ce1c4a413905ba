//! The raw Postgres baseline: the rows the projector writes for the pre-filled topic (the
//! inventory read model's shape, the same items in the same order, so inserts first and then
//! updates of existing rows), as batched UNNEST upserts of the projector's live batch size, each
//! in its own durable transaction. No Kafka, no offsets, no loads, no decoding: what is left of
//! the projector's time once those are taken away.

use std::time::Instant;

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

/// Rows written per transaction: the projector's live batch size.
fn batch() -> usize {
    projectors::runner::BatchLimits::default().max_events
}

/// Writes `rows` rows over `items` items (row `i` is item `i % items`, like the pre-filled
/// events) and returns rows per second.
pub(crate) async fn raw_insert(pool: &PgPool, rows: usize, items: usize) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_raw_inventory (sku text PRIMARY KEY, on_hand bigint NOT NULL, \
         reserved bigint NOT NULL, version bigint NOT NULL, last_event_id uuid NOT NULL, updated_at timestamptz NOT NULL)",
    )
    .execute(pool)
    .await?;
    sqlx::query("TRUNCATE bench_raw_inventory")
        .execute(pool)
        .await?;
    // A batch never holds one item twice (an upsert cannot touch a row twice), as in the
    // projector, whose batches hold each changed row once.
    let batch = batch().min(items);
    let started = Instant::now();
    let mut written = 0;
    while written < rows {
        let n = batch.min(rows - written);
        let range = written..written + n;
        let skus: Vec<String> = range
            .clone()
            .map(|i| format!("bench-sku-{:06}", i % items))
            .collect();
        let versions: Vec<i64> = range
            .map(|i| i64::try_from(i / items + 1).unwrap_or(i64::MAX))
            .collect();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO bench_raw_inventory (sku, on_hand, reserved, version, last_event_id, updated_at) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::uuid[], $6::timestamptz[]) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved, \
               version = EXCLUDED.version, last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at",
        )
        .bind(&skus)
        .bind(&versions)
        .bind(vec![0i64; n])
        .bind(&versions)
        .bind((0..n).map(|_| Uuid::now_v7()).collect::<Vec<_>>())
        .bind(vec![Utc::now(); n])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        written += n;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
