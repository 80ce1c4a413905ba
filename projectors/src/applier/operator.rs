//! What operators do to dead letters: redrive them once fixed, or skip one for good.
//!
//! Every parked aggregate has a way out. A dead letter whose cause can be fixed (a handler, a
//! constraint) is redriven once it is; one that can never apply (its envelope cannot be read, its
//! value is garbage) is skipped. A skip is durable (`operator_skips`, see [`super::skips`]):
//! every generation, rebuilds included, passes over the skipped record.

use std::collections::{BTreeMap, HashSet};

use platform::envelope::EventEnvelope;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::{PgConnection, Row};

use super::commands;
use super::skips::{self, Skip};
use super::sql::{headers_from_json, record};
use super::{
    command_ids, generation_key, generation_table, is_statement_failure, Applier, ApplyError,
    Incoming, Sorted,
};
use crate::projection::Projection;

/// What a redrive did to one aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// Its dead letters and everything parked behind them applied (this many events; none when
    /// it was no longer parked): it is unparked.
    Applied(usize),
    /// Something still fails (the cause is not fixed yet): nothing changed, it stays parked.
    StillFailing(String),
    /// A dead letter (at this source partition and offset) without a readable envelope: no fix
    /// makes it apply, so only a skip releases its aggregate. Nothing changed.
    Unreadable {
        partition: i32,
        offset: i64,
        error: String,
    },
}

/// What a skip did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// The skip is recorded and the events parked behind the record were applied in order
    /// (`applied`), unless one of them failed in turn (`parked_again`, its error): that one is
    /// dead-lettered and the aggregate now waits behind it.
    Recorded {
        applied: usize,
        parked_again: Option<String>,
    },
    /// The record was skipped before; nothing changed.
    Already,
    /// Not skipped, and why.
    Refused(String),
}

/// The record's envelope, or why it has none naming `aggregate` (then it can never apply).
fn envelope_of(letter: &OwnedMessage, aggregate: &str) -> Result<EventEnvelope, String> {
    match EventEnvelope::from_headers(letter.headers().map(|h| h.as_borrowed())) {
        Ok(envelope) if envelope.aggregate_id == aggregate => Ok(envelope),
        Ok(_) => Err("envelope names another aggregate than the record key".into()),
        Err(error) => Err(format!("invalid envelope: {error}")),
    }
}

impl<P: Projection> Applier<P> {
    /// Re-applies dead-lettered events (rebuilt from their DLQ records) and everything parked
    /// behind them, on the current generation, in one transaction per aggregate. An aggregate is
    /// unparked only if all of it now applies; otherwise nothing changes. Records an operator
    /// skipped are passed over.
    pub async fn redrive(
        &self,
        letters: &[OwnedMessage],
    ) -> Result<Vec<(String, Redriven)>, sqlx::Error> {
        let mut by_aggregate: BTreeMap<String, Vec<&OwnedMessage>> = BTreeMap::new();
        for letter in letters {
            if let Some(key) = letter.key().and_then(|k| std::str::from_utf8(k).ok()) {
                by_aggregate.entry(key.to_owned()).or_default().push(letter);
            }
        }
        let mut results = Vec::new();
        for (aggregate, mut dead) in by_aggregate {
            dead.sort_by_key(|m| (m.partition(), m.offset()));
            // A record dead-lettered twice (by the live generation and by a rebuild) is one event.
            dead.dedup_by_key(|m| (m.partition(), m.offset()));
            let dead: Vec<OwnedMessage> = dead.into_iter().cloned().collect();
            let result = self.redrive_with(&aggregate, &dead).await?;
            results.push((aggregate, result));
        }
        Ok(results)
    }

    /// The events parked behind `aggregate` in the generation `key`, as records, in log order.
    async fn parked_messages(
        &self,
        connection: &mut PgConnection,
        key: &str,
        aggregate: &str,
    ) -> Result<Vec<OwnedMessage>, sqlx::Error> {
        let rows = sqlx::query("SELECT partition, \"offset\", payload, headers FROM parked_events WHERE projection = $1 AND aggregate_id = $2 ORDER BY partition, \"offset\"")
            .bind(key)
            .bind(aggregate)
            .fetch_all(connection)
            .await?;
        rows.iter()
            .map(|row| {
                let headers: serde_json::Value = row.try_get("headers")?;
                Ok(OwnedMessage::new(
                    row.try_get::<Option<Vec<u8>>, _>("payload")?,
                    Some(aggregate.as_bytes().to_vec()),
                    self.topic.clone(),
                    rdkafka::Timestamp::NotAvailable,
                    row.try_get("partition")?,
                    row.try_get("offset")?,
                    Some(headers_from_json(&headers)),
                ))
            })
            .collect()
    }

    /// Whether `aggregate` is parked in the generation `key`, locking its parking (a batch that
    /// would park an event behind it waits, see `sql::parked_aggregates`).
    async fn lock_parked(
        connection: &mut PgConnection,
        key: &str,
        aggregate: &str,
    ) -> Result<bool, sqlx::Error> {
        let parked: Option<String> = sqlx::query_scalar("SELECT aggregate_id FROM parked_aggregates WHERE projection = $1 AND aggregate_id = $2 FOR UPDATE")
            .bind(key)
            .bind(aggregate)
            .fetch_optional(connection)
            .await?;
        Ok(parked.is_some())
    }

    /// Re-applies `dead` (in order) and then the aggregate's parked events, in one transaction;
    /// unparks the aggregate only if all of them apply.
    async fn redrive_with(
        &self,
        aggregate: &str,
        dead: &[OwnedMessage],
    ) -> Result<Redriven, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        if !Self::lock_parked(&mut tx, &key, aggregate).await? {
            return Ok(Redriven::Applied(0));
        }
        let ids = [aggregate.to_owned()];
        let skips = skips::load(&mut tx, P::NAME, &self.topic, &ids).await?;
        for letter in dead {
            if skips.contains(letter.partition(), letter.offset()) {
                continue;
            }
            if let Err(error) = envelope_of(letter, aggregate) {
                tx.rollback().await?;
                return Ok(Redriven::Unreadable {
                    partition: letter.partition(),
                    offset: letter.offset(),
                    error,
                });
            }
        }
        let mut messages: Vec<OwnedMessage> = dead.to_vec();
        messages.extend(self.parked_messages(&mut tx, &key, aggregate).await?);
        let rows = P::load(&mut tx, &table, &ids).await?;
        let incoming: Vec<Incoming<P::Event>> =
            messages.into_iter().map(Incoming::prepare).collect();
        let used = commands::load(&mut tx, &key, &command_ids(&incoming)).await?;
        let mut sorted = Sorted::new(rows, HashSet::new(), used, None);
        for record in &incoming {
            self.sort_event(record, &skips, &mut sorted, 1);
        }
        if let Some(failure) = sorted.outcome.dead.first() {
            tx.rollback().await?;
            return Ok(Redriven::StillFailing(failure.error.clone()));
        }
        commands::store(&mut tx, &key, &sorted.changed_commands()).await?;
        let outcome = &sorted.outcome;
        match P::store(&mut tx, &table, &sorted.changed_rows()).await {
            Ok(()) => {}
            Err(error) if is_statement_failure(&error) => {
                tx.rollback().await?;
                return Ok(Redriven::StillFailing(error.to_string()));
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
        // A redriven event that turns out to be a loser is recorded, not silently dropped.
        record(&mut tx, &key, &self.topic, outcome).await?;
        tx.commit().await?;
        Ok(Redriven::Applied(outcome.applied as usize))
    }

    /// Skips the dead letter `letter` (the record that parks its aggregate) for good, in one
    /// transaction: records it in `operator_skips` with `reason` and its link in the chain (from
    /// its envelope, or the version its aggregate expects when the envelope cannot be read), then
    /// applies what was parked behind it in order and unparks the aggregate. A parked event that
    /// fails in turn is dead-lettered and parks the aggregate again, so it can be redriven or
    /// skipped on its own. Refused when the record is not what parks its aggregate, or when the
    /// parked events would break a database rule (fix that first: nothing is recorded).
    pub async fn skip(&self, letter: &OwnedMessage, reason: &str) -> Result<Skipped, ApplyError> {
        let Some(aggregate) = letter
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
        else {
            return Ok(Skipped::Refused(
                "the record has no key: no aggregate waits behind it".into(),
            ));
        };
        let (partition, offset) = (letter.partition(), letter.offset());
        let mut tx = self.pool.begin().await?;
        let generation = self.generation_in(&mut tx).await?;
        let (key, table) = (
            generation_key(P::NAME, generation),
            generation_table(P::NAME, generation),
        );
        if skips::is_recorded(&mut tx, P::NAME, &self.topic, partition, offset).await? {
            tx.commit().await?;
            return Ok(Skipped::Already);
        }
        if !Self::lock_parked(&mut tx, &key, &aggregate).await? {
            return Ok(Skipped::Refused(format!(
                "{aggregate} is not parked: nothing waits behind this dead letter (redriven already?)"
            )));
        }
        let ids = [aggregate.clone()];
        let earlier = skips::load(&mut tx, P::NAME, &self.topic, &ids).await?;
        let rows = P::load(&mut tx, &table, &ids).await?;
        let head = rows.get(&aggregate).map(P::head);
        let parked_messages = self.parked_messages(&mut tx, &key, &aggregate).await?;
        if let Some(first) = parked_messages
            .iter()
            .find(|m| m.partition() == partition && m.offset() < offset)
        {
            return Ok(Skipped::Refused(format!(
                "it is not what parks {aggregate}: the event at offset {} waits behind an earlier dead letter",
                first.offset()
            )));
        }
        let skip = match envelope_of(letter, &aggregate) {
            Ok(envelope) => {
                let version = i64::try_from(envelope.version.get()).unwrap_or(i64::MAX);
                if !earlier.follows(&aggregate, offset, head, version, envelope.predecessor) {
                    return Ok(Skipped::Refused(format!(
                        "it is not what parks {aggregate}: version {version} does not follow the read model (at version {})",
                        head.map_or(0, |h| h.version)
                    )));
                }
                Skip {
                    partition,
                    offset,
                    aggregate_id: aggregate.clone(),
                    version,
                    event_id: Some(envelope.event_id),
                    predecessor: envelope.predecessor,
                }
            }
            // Nothing says which version it held: the one its aggregate expects next.
            Err(_) => Skip {
                partition,
                offset,
                aggregate_id: aggregate.clone(),
                version: earlier.next_version(&aggregate, offset, head),
                event_id: None,
                predecessor: None,
            },
        };
        skips::record(&mut tx, P::NAME, &self.topic, &skip, reason).await?;
        let skips = skips::load(&mut tx, P::NAME, &self.topic, &ids).await?;
        let incoming: Vec<Incoming<P::Event>> =
            parked_messages.into_iter().map(Incoming::prepare).collect();
        let used = commands::load(&mut tx, &key, &command_ids(&incoming)).await?;
        let mut sorted = Sorted::new(rows, HashSet::new(), used, None);
        for record in &incoming {
            self.sort_event(record, &skips, &mut sorted, 1);
        }
        commands::store(&mut tx, &key, &sorted.changed_commands()).await?;
        let outcome = &sorted.outcome;
        match P::store(&mut tx, &table, &sorted.changed_rows()).await {
            Ok(()) => {}
            Err(error) if is_statement_failure(&error) => {
                tx.rollback().await?;
                return Ok(Skipped::Refused(format!(
                    "the events parked behind it would fail: {error}; fix that and skip again"
                )));
            }
            Err(error) => return Err(error.into()),
        }
        sqlx::query("DELETE FROM parked_events WHERE projection = $1 AND aggregate_id = $2")
            .bind(&key)
            .bind(&aggregate)
            .execute(&mut *tx)
            .await?;
        let parked_again = outcome.new_parks.first().map(|(_, reason)| reason.clone());
        // Parked again: the parking row stays (updated, not replaced, so a batch waiting on its
        // lock still finds it); otherwise it goes.
        let unpark = match &parked_again {
            Some(reason) => sqlx::query("UPDATE parked_aggregates SET reason = $3, parked_at = now() WHERE projection = $1 AND aggregate_id = $2")
                .bind(&key)
                .bind(&aggregate)
                .bind(reason),
            None => sqlx::query("DELETE FROM parked_aggregates WHERE projection = $1 AND aggregate_id = $2")
                .bind(&key)
                .bind(&aggregate),
        };
        unpark.execute(&mut *tx).await?;
        record(&mut tx, &key, &self.topic, outcome).await?;
        // The new dead letter must be durable before the parking that points to it.
        self.dead_letters
            .publish(&outcome.dead)
            .await
            .map_err(ApplyError::DeadLetters)?;
        tx.commit().await?;
        Ok(Skipped::Recorded {
            applied: outcome.applied as usize,
            parked_again,
        })
    }
}
