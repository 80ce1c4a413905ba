//! `projectors dlq list|redrive|skip`: the dead letters of every projection, and the way out
//! for each parked aggregate (redrive once fixed, or skip for good).

use std::time::Duration;

use futures::future::LocalBoxFuture;
use platform::config::KafkaSettings;
use platform::log_end::LogEnds;
use platform::topics::Topics;
use rdkafka::message::{Headers, Message, OwnedMessage};
use sqlx::PgPool;

use crate::applier::{Applier, Generation, Redriven, Skipped};
use crate::dead_letters::names;
use crate::projection::Projection;
use crate::projections::{self, ForProjection};

/// Every record currently on the dead-letter topics (or one of them).
pub fn dlq_list(kafka: &KafkaSettings, only: Option<&str>) -> anyhow::Result<()> {
    let topics = Topics::new(kafka.topic_prefix.clone());
    let ends = LogEnds::new(kafka)?;
    println!(
        "{:<36} {:>6} {:<32} {:>9} {:>8} {:>8}  ERROR",
        "DLQ TOPIC", "OFFSET", "SOURCE", "PARTITION", "OFFSET", "ATTEMPTS"
    );
    for source in topics.all_events() {
        let dlq = Topics::dead_letters(&source);
        if only.is_some_and(|o| o != dlq && o != source) {
            continue;
        }
        let Ok(extents) = ends.extents(&dlq, Duration::from_secs(5)) else {
            continue;
        };
        for message in ends.read_to_end(&dlq, &extents, READ_STALL)? {
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            println!(
                "{dlq:<36} {:>9} {:>6} {:<32} {:>9} {:>8} {:>8}  {}",
                message.partition(),
                message.offset(),
                header(names::SOURCE_TOPIC),
                header(names::SOURCE_PARTITION),
                header(names::SOURCE_OFFSET),
                header(names::ATTEMPTS),
                header(names::ERROR)
            );
        }
    }
    Ok(())
}

/// How long reading a dead-letter topic may go without a record or a position moving.
const READ_STALL: Duration = Duration::from_secs(5);

/// The records on a dead-letter topic, oldest first per partition. Read until the reader's
/// position reaches each partition's end, not by counting `high - low` records: dead letters
/// are written outside transactions today, but a marker or aborted record would take an offset
/// no record is read at.
fn read_dead_letters(kafka: &KafkaSettings, dlq: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let ends = LogEnds::new(kafka)?;
    let extents = ends.extents(dlq, Duration::from_secs(5))?;
    Ok(ends.read_to_end(dlq, &extents, READ_STALL)?)
}

/// A dead letter as operators act on it.
struct Letter {
    /// The consumer that gave up on it (`dlq-projection`): a projection, or another consumer.
    projection: String,
    /// Where it is on the `.dlq` topic: what `dlq list` shows and `dlq skip` takes.
    dlq_partition: i32,
    dlq_offset: i64,
    /// Why it was dead-lettered.
    error: String,
    /// The record it was: original key, value and headers, at its source partition and offset.
    original: OwnedMessage,
}

/// A dead letter turned back into the record it was; `None` when it lacks its source headers.
fn original(letter: &OwnedMessage, source_topic: &str) -> Option<Letter> {
    let header = |name: &str| {
        letter
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut headers = rdkafka::message::OwnedHeaders::new();
    if let Some(all) = letter.headers() {
        for h in all.iter().filter(|h| !h.key.starts_with("dlq-")) {
            headers = headers.insert(rdkafka::message::Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let message = OwnedMessage::new(
        letter.payload().map(<[u8]>::to_vec),
        letter.key().map(<[u8]>::to_vec),
        source_topic.to_owned(),
        rdkafka::Timestamp::NotAvailable,
        header(names::SOURCE_PARTITION)?.parse().ok()?,
        header(names::SOURCE_OFFSET)?.parse().ok()?,
        Some(headers),
    );
    Some(Letter {
        projection: header(names::PROJECTION)?,
        dlq_partition: letter.partition(),
        dlq_offset: letter.offset(),
        error: header(names::ERROR).unwrap_or_default(),
        original: message,
    })
}

/// The dead letters of `topic` (a source topic or its `.dlq`), filtered to one partition or
/// offset of the `.dlq` topic when given.
fn select_dead_letters(
    kafka: &KafkaSettings,
    topic: &str,
    partition: Option<i32>,
    offset: Option<i64>,
) -> anyhow::Result<(String, Vec<Letter>)> {
    let source = topic.strip_suffix(".dlq").unwrap_or(topic).to_owned();
    let dlq = Topics::dead_letters(&source);
    let letters = read_dead_letters(kafka, &dlq)?
        .into_iter()
        .filter(|m| {
            offset.is_none_or(|o| m.offset() == o) && partition.is_none_or(|p| m.partition() == p)
        })
        .map(|m| {
            original(&m, &source).ok_or_else(|| {
                anyhow::anyhow!("dead letter at {} lacks its source headers", m.offset())
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((dlq, letters))
}

/// An operator's action on the live generation of one projection.
enum Action<'a> {
    Redrive(&'a [OwnedMessage]),
    /// The record, and why it was dead-lettered (recorded with the skip).
    Skip(&'a OwnedMessage, &'a str),
}

/// What an action did.
enum Acted {
    Redriven(Vec<(String, Redriven)>),
    Skipped(Skipped),
}

async fn act<P: Projection>(applier: Applier<P>, action: Action<'_>) -> anyhow::Result<Acted> {
    Ok(match action {
        Action::Redrive(letters) => Acted::Redriven(applier.redrive(letters).await?),
        Action::Skip(letter, reason) => Acted::Skipped(applier.skip(letter, reason).await?),
    })
}

/// `act` with the applier of the projection chosen by name.
struct Act<'a> {
    pool: &'a PgPool,
    kafka: &'a KafkaSettings,
    producer: rdkafka::producer::FutureProducer,
    action: Action<'a>,
}

impl<'a> ForProjection for Act<'a> {
    type Output = LocalBoxFuture<'a, anyhow::Result<Acted>>;

    fn call<P: Projection>(self) -> Self::Output {
        let applier = Applier::<P>::new(
            self.pool.clone(),
            self.kafka,
            self.producer,
            Generation::Live,
            self.kafka.command_window,
        );
        Box::pin(act(applier, self.action))
    }
}

/// Runs `action` on the projection named `projection` (as its dead letters name it); `None`
/// when no projection has that name (another consumer's dead letters, e.g. the saga
/// orchestrator's).
async fn act_on(
    pool: &PgPool,
    kafka: &KafkaSettings,
    projection: &str,
    action: Action<'_>,
) -> anyhow::Result<Option<Acted>> {
    let producer: rdkafka::producer::FutureProducer =
        platform::kafka::producer_config(kafka).create()?;
    let work = Act {
        pool,
        kafka,
        producer,
        action,
    };
    match projections::by_name(projection, work) {
        Some(acting) => Ok(Some(acting.await?)),
        None => Ok(None),
    }
}

/// Re-applies the dead letters of `topic` (a source or `.dlq` topic; one record with `offset`)
/// and what is parked behind them, once whatever made them fail is fixed: for every projection
/// the dead letters name. A record that can never apply (no readable envelope) is reported with
/// the `dlq skip` command that releases its aggregate.
pub async fn dlq_redrive(
    pool: &PgPool,
    kafka: &KafkaSettings,
    topic: &str,
    partition: Option<i32>,
    offset: Option<i64>,
) -> anyhow::Result<()> {
    let (dlq, letters) = select_dead_letters(kafka, topic, partition, offset)?;
    if letters.is_empty() {
        println!("no dead letters to redrive on {dlq}");
        return Ok(());
    }
    let mut consumers: Vec<&str> = letters.iter().map(|l| l.projection.as_str()).collect();
    consumers.sort_unstable();
    consumers.dedup();
    for projection in consumers {
        let mine: Vec<&Letter> = letters
            .iter()
            .filter(|l| l.projection == projection)
            .collect();
        let records: Vec<OwnedMessage> = mine.iter().map(|l| l.original.clone()).collect();
        let acted = act_on(pool, kafka, projection, Action::Redrive(&records)).await?;
        let Some(Acted::Redriven(results)) = acted else {
            println!(
                "{projection}: {} dead letters left alone: not a projection ({})",
                mine.len(),
                projections::ALL.join(", ")
            );
            continue;
        };
        for (aggregate, result) in results {
            match result {
                Redriven::Applied(applied) => println!(
                    "{projection} {aggregate}: redriven, {applied} events applied, unparked"
                ),
                Redriven::StillFailing(error) => println!(
                    "{projection} {aggregate}: still failing, left parked: {error} \
                     (redrive again once fixed, or give it up with `projectors dlq skip`)"
                ),
                Redriven::Unreadable {
                    partition,
                    offset,
                    error,
                } => {
                    let skip = mine
                        .iter()
                        .find(|l| {
                            l.original.partition() == partition && l.original.offset() == offset
                        })
                        .map_or_else(
                            || format!("projectors dlq skip {dlq} --partition P --offset N"),
                            |l| {
                                format!(
                                    "projectors dlq skip {dlq} --partition {} --offset {}",
                                    l.dlq_partition, l.dlq_offset
                                )
                            },
                        );
                    println!(
                        "{projection} {aggregate}: can never apply, left parked: {error}; \
                         no fix makes this record readable, give it up with `{skip}`"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Skips one dead letter for good (`--offset` on the `.dlq` topic, and `--partition` when
/// offsets repeat across its partitions): recorded in `operator_skips`, which every generation
/// and every rebuild honour; then what was parked behind it is applied.
pub async fn dlq_skip(
    pool: &PgPool,
    kafka: &KafkaSettings,
    topic: &str,
    partition: Option<i32>,
    offset: i64,
) -> anyhow::Result<()> {
    let (dlq, letters) = select_dead_letters(kafka, topic, partition, Some(offset))?;
    let letter = match letters.as_slice() {
        [one] => one,
        [] => anyhow::bail!("no dead letter at offset {offset} on {dlq}"),
        _ => {
            anyhow::bail!("offset {offset} exists on several partitions of {dlq}: add --partition")
        }
    };
    let reason = if letter.error.is_empty() {
        "dead letter skipped by an operator"
    } else {
        letter.error.as_str()
    };
    let action = Action::Skip(&letter.original, reason);
    let Some(acted) = act_on(pool, kafka, &letter.projection, action).await? else {
        anyhow::bail!(
            "not skipped: the dead letter belongs to {:?}, not to a projection ({})",
            letter.projection,
            projections::ALL.join(", ")
        );
    };
    match acted {
        Acted::Skipped(Skipped::Recorded {
            applied,
            parked_again: None,
        }) => println!("skipped; {applied} parked events applied, unparked"),
        Acted::Skipped(Skipped::Recorded {
            applied,
            parked_again: Some(error),
        }) => println!(
            "skipped; {applied} parked events applied, then one failed in turn and parks the \
             aggregate again: {error} (its dead letter is in `projectors dlq list`)"
        ),
        Acted::Skipped(Skipped::Already) => println!("already skipped; nothing to do"),
        Acted::Skipped(Skipped::Refused(reason)) => anyhow::bail!("not skipped: {reason}"),
        Acted::Redriven(_) => anyhow::bail!("not skipped: nothing happened"),
    }
    Ok(())
}
