//! What operators do to dead letters: redrive them once fixed, or skip one explicitly.

use std::collections::{BTreeMap, HashSet};

use platform::envelope::EventEnvelope;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::Row;

use super::sql::headers_from_json;
use super::{generation_key, generation_table, is_statement_failure, Applier, Incoming, Outcome};
use crate::projection::{Projection, RowHead};

impl<P: Projection> Applier<P> {
    /// Re-applies dead-lettered events (rebuilt from their DLQ records) and everything parked
    /// behind them, on the current generation, in one transaction per aggregate. An aggregate is
    /// unparked only if all of it now applies; otherwise nothing changes and the error is returned.
    pub async fn redrive(
        &self,
        letters: &[OwnedMessage],
    ) -> Result<Vec<(String, Result<usize, String>)>, sqlx::Error> {
        let mut by_aggregate: BTreeMap<String, Vec<&OwnedMessage>> = BTreeMap::new();
        for letter in letters {
            if let Some(key) = letter.key().and_then(|k| std::str::from_utf8(k).ok()) {
                by_aggregate.entry(key.to_owned()).or_default().push(letter);
            }
        }
        let mut results = Vec::new();
        for (aggregate, mut dead) in by_aggregate {
            dead.sort_by_key(|m| (m.partition(), m.offset()));
            let dead: Vec<OwnedMessage> = dead.into_iter().cloned().collect();
            let result = self.redrive_with(&aggregate, &dead).await?;
            results.push((aggregate, result));
        }
        Ok(results)
    }

    /// Re-applies `dead` (in order) and then the aggregate's parked events, in one transaction;
    /// unparks the aggregate only if all of them apply.
    async fn redrive_with(
        &self,
        aggregate: &str,
        dead: &[OwnedMessage],
    ) -> Result<Result<usize, String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        let still_parked: Option<String> = sqlx::query_scalar("SELECT aggregate_id FROM parked_aggregates WHERE projection = $1 AND aggregate_id = $2 FOR UPDATE")
            .bind(&key)
            .bind(aggregate)
            .fetch_optional(&mut *tx)
            .await?;
        if still_parked.is_none() {
            return Ok(Ok(0));
        }
        let parked_rows = sqlx::query("SELECT partition, \"offset\", payload, headers FROM parked_events WHERE projection = $1 AND aggregate_id = $2 ORDER BY partition, \"offset\"")
            .bind(&key)
            .bind(aggregate)
            .fetch_all(&mut *tx)
            .await?;
        let mut messages: Vec<OwnedMessage> = dead.to_vec();
        for row in &parked_rows {
            let headers: serde_json::Value = row.try_get("headers")?;
            messages.push(OwnedMessage::new(
                row.try_get::<Option<Vec<u8>>, _>("payload")?,
                Some(aggregate.as_bytes().to_vec()),
                self.topic.clone(),
                rdkafka::Timestamp::NotAvailable,
                row.try_get("partition")?,
                row.try_get("offset")?,
                Some(headers_from_json(&headers)),
            ));
        }
        let mut rows = P::load(&mut tx, &table, &[aggregate.to_owned()]).await?;
        let (mut changed, mut parked, mut outcome) =
            (HashSet::new(), HashSet::new(), Outcome::default());
        for message in messages {
            let incoming = Incoming::prepare(message);
            self.decide(
                &incoming,
                &mut rows,
                &mut changed,
                &mut parked,
                &mut outcome,
                1,
            );
        }
        if let Some(failure) = outcome.dead.first() {
            tx.rollback().await?;
            return Ok(Err(failure.error.clone()));
        }
        let changed_rows: Vec<P::Row> = changed
            .iter()
            .filter_map(|id| rows.get(id).cloned())
            .collect();
        match P::store(&mut tx, &table, &changed_rows).await {
            Ok(()) => {}
            Err(error) if is_statement_failure(&error) => {
                tx.rollback().await?;
                return Ok(Err(error.to_string()));
            }
            Err(error) => return Err(error),
        }
        for statement in [
            "DELETE FROM parked_events WHERE projection = $1 AND aggregate_id = $2",
            "DELETE FROM parked_aggregates WHERE projection = $1 AND aggregate_id = $2",
        ] {
            sqlx::query(statement)
                .bind(&key)
                .bind(aggregate)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(outcome.applied as usize))
    }

    /// Skips a dead-lettered event explicitly: its aggregate's chain head moves past it (its
    /// effect is never applied, and the skip is recorded as an anomaly), then the events parked
    /// behind it are applied in order and the aggregate is unparked. Refused when the event has
    /// no valid envelope, does not follow the row's head, or would be the aggregate's first.
    pub async fn skip(&self, letter: &OwnedMessage) -> Result<Result<usize, String>, sqlx::Error> {
        let Some(aggregate) = letter
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
        else {
            return Ok(Err(
                "the record has no key: no aggregate is parked behind it".into(),
            ));
        };
        let envelope = match EventEnvelope::from_headers(letter.headers().map(|h| h.as_borrowed())) {
            Ok(envelope) => envelope,
            Err(error) => return Ok(Err(format!("no valid envelope ({error}): nothing says which version to skip; rebuild after fixing the cause"))),
        };
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        let mut rows = P::load(&mut tx, &table, std::slice::from_ref(&aggregate)).await?;
        let Some(row) = rows.remove(&aggregate) else {
            return Ok(Err(
                "it is the aggregate's first event: there is no row to skip it on".into(),
            ));
        };
        let head = P::head(&row);
        let version = i64::try_from(envelope.version.get()).unwrap_or(i64::MAX);
        if version != head.version + 1 || envelope.predecessor != Some(head.last_event_id) {
            return Ok(Err(format!(
                "it does not follow the read model (version {version} after {})",
                head.version
            )));
        }
        let moved = P::with_head(
            row,
            RowHead {
                version,
                last_event_id: envelope.event_id,
            },
        );
        P::store(&mut tx, &table, std::slice::from_ref(&moved)).await?;
        sqlx::query(
            "INSERT INTO projection_anomalies (projection, topic, partition, \"offset\", aggregate_id, kind, detail, seen_at) \
             VALUES ($1, $2, $3, $4, $5, 'skipped', 'dead letter skipped by an operator', now()) ON CONFLICT DO NOTHING",
        )
        .bind(&key)
        .bind(&self.topic)
        .bind(letter.partition())
        .bind(letter.offset())
        .bind(&aggregate)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // What was parked behind it now follows the moved head.
        Ok(match self.redrive_with(&aggregate, &[]).await? {
            Ok(applied) => Ok(applied),
            Err(error) => Err(format!("skipped, but a parked event still fails: {error}")),
        })
    }
}
