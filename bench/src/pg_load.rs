//! The raw Postgres baseline: the projector's rows (the inventory read model's shape), batched
//! UNNEST upserts straight into a table, no Kafka and no offsets.

use std::time::Instant;

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

const BATCH: usize = 1000;

pub(crate) async fn raw_insert(pool: &PgPool, rows: usize) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_raw_inventory (sku text PRIMARY KEY, on_hand bigint NOT NULL, \
         reserved bigint NOT NULL, version bigint NOT NULL, last_event_id uuid NOT NULL, updated_at timestamptz NOT NULL)",
    )
    .execute(pool)
    .await?;
    sqlx::query("TRUNCATE bench_raw_inventory")
        .execute(pool)
        .await?;
    let started = Instant::now();
    let mut written = 0;
    while written < rows {
        let n = BATCH.min(rows - written);
        let skus: Vec<String> = (written..written + n)
            .map(|i| format!("raw-{i:08}"))
            .collect();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO bench_raw_inventory (sku, on_hand, reserved, version, last_event_id, updated_at) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::uuid[], $6::timestamptz[]) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand, version = EXCLUDED.version, \
               last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at",
        )
        .bind(&skus)
        .bind(vec![1i64; n])
        .bind(vec![0i64; n])
        .bind(vec![1i64; n])
        .bind((0..n).map(|_| Uuid::now_v7()).collect::<Vec<_>>())
        .bind(vec![Utc::now(); n])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        written += n;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
