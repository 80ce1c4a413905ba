//! Where a partition's readable records end, for readers that must know they have read (or
//! applied) everything committed so far.
//!
//! Event topics are written in Kafka transactions. A commit or abort marker takes an offset of
//! its own in every partition the transaction wrote, and an aborted transaction's records keep
//! theirs, but a `read_committed` reader is handed neither. So the offset after the last record
//! read (or the checkpoint stored after the last record applied) stays below the end of the
//! partition whenever a marker or aborted records follow, and consecutive records need not have
//! consecutive offsets. What does reach the end is the reader's *position*: librdkafka moves it
//! past every marker it serves (an aborted transaction ends with one too) without handing
//! anything to the application. Hence:
//!
//! - a reader has read a partition to its end once its [`position`] reaches the end
//!   ([`LogEnds::read_to_end`]), not once a record at `end - 1` arrived;
//! - a checkpoint is at the end when no committed record lies between it and the end
//!   ([`LogEnds::gap`]), not when it equals the end.
//!
//! The end itself: for a `read_committed` client, `fetch_watermarks` answers the last stable
//! offset, which is the high watermark once no transaction is open on the partition; no
//! `read_committed` reader gets past it.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::KafkaSettings;

/// How long one poll waits before positions are looked at again.
const POLL: Duration = Duration::from_millis(20);

/// While records keep coming, a reader asks for its position once in this many records.
const POSITION_EVERY: usize = 1_024;

/// The position of `consumer` on `topic`'s `partition`: the offset after the last record or
/// transaction marker it served. `None` before it served anything there, or if the partition
/// is not assigned to it.
///
/// Not free: rdkafka's `position()` first asks for the consumer's assignment, a request served
/// by librdkafka's main thread that the caller blocks on (two thread switches). Readers ask for
/// it now and then, or once nothing else can tell them, never after every record.
pub fn position<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

/// One partition's readable range right now: a `read_committed` reader starting at `start`
/// (the low watermark) is handed every committed record below `end` (the last stable offset),
/// and its position reaches `end` once it has been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl Extent {
    /// Whether a reader at `position` has read everything in this extent. Compares the
    /// position, never the last record's offset: markers and aborted records may come last.
    pub fn read_by(&self, position: Option<i64>) -> bool {
        self.start >= self.end || position.is_some_and(|p| p >= self.end)
    }
}

/// What lies between a checkpoint and the end of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// No committed record: nothing, or only transaction markers and aborted records, which
    /// no `read_committed` reader is ever handed. A checkpoint here is at the end.
    Empty,
    /// A committed record, at this offset.
    Record(i64),
    /// The reader did not get through in time: there may be a record.
    Unknown,
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("kafka")]
    Kafka(#[from] KafkaError),
    #[error(
        "{topic} [{partition}]: position {position:?} stayed below the end {end} for {stall:?}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        position: Option<i64>,
        end: i64,
        stall: Duration,
    },
}

/// Settings for a reader that assigns partitions itself and commits nothing: `read_committed`
/// (so watermarks answer the last stable offset), from the earliest record when an offset is
/// gone. librdkafka wants a group id to assign partitions; this one is unique and is never
/// joined or committed to.
pub fn reader_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = crate::kafka::client_config(&settings.brokers);
    config
        .set(
            "group.id",
            format!(
                "{}.log-end-reader-{}",
                settings.topic_prefix,
                uuid::Uuid::new_v4()
            ),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // An empty fetch at the end comes back soon; positions are looked at between polls.
        .set("fetch.wait.max.ms", "100");
    crate::kafka::one_partition_prefetch(&mut config, 2_000);
    config
}

/// Reads where partitions end and what lies before the end. Blocking: call it from a blocking
/// thread.
pub struct LogEnds {
    /// Settings of the readers [`Self::gap`] and [`Self::read_to_end`] read with: a fresh one
    /// per read, so no position is left over from an earlier read (librdkafka clears a
    /// partition's position only once its old fetch has stopped, which may come after a new
    /// assignment is in place).
    config: ClientConfig,
    /// `read_committed`: its watermarks answer the last stable offset.
    committed: BaseConsumer,
    /// `read_uncommitted`: its watermarks answer the high watermark, for [`Self::settled`].
    uncommitted: BaseConsumer,
}

impl std::fmt::Debug for LogEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEnds").finish_non_exhaustive()
    }
}

impl LogEnds {
    pub fn new(settings: &KafkaSettings) -> KafkaResult<Self> {
        let config = reader_config(settings);
        Ok(Self {
            committed: config.create()?,
            uncommitted: config
                .clone()
                .set("isolation.level", "read_uncommitted")
                .create()?,
            config,
        })
    }

    /// Every partition's extent of `topic` (none if the topic does not exist), by partition.
    pub fn extents(&self, topic: &str, timeout: Duration) -> KafkaResult<Vec<Extent>> {
        extents(&self.committed, topic, timeout)
    }

    /// The extents of `topic` once no transaction is open on it: waits up to `within` for the
    /// last stable offset of every partition to reach its high watermark, then answers them as
    /// they are. A committed transaction's markers are written just after its commit returns,
    /// and until then its records are past the last stable offset: a reader that must see
    /// everything already acknowledged (a test, right after a request was answered) waits.
    pub fn settled(&self, topic: &str, within: Duration) -> KafkaResult<Vec<Extent>> {
        let deadline = Instant::now() + within;
        loop {
            let committed = self.extents(topic, Duration::from_secs(5))?;
            let high = extents(&self.uncommitted, topic, Duration::from_secs(5))?;
            let settled = committed
                .iter()
                .zip(&high)
                .all(|(c, h)| c.partition == h.partition && c.end >= h.end);
            if (settled && committed.len() == high.len()) || Instant::now() >= deadline {
                return Ok(committed);
            }
            std::thread::sleep(POLL);
        }
    }

    /// What lies in `from..until` of `topic`'s `partition`, found by reading it from `from`
    /// for up to `within`: a checkpoint `from` is at the end `until` when the gap is
    /// [`Gap::Empty`], though `from < until` whenever markers or aborted records come last.
    pub fn gap(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        until: i64,
        within: Duration,
    ) -> KafkaResult<Gap> {
        // Records below the low watermark are gone (no reader gets them any more).
        let (low, _) = self
            .committed
            .fetch_watermarks(topic, partition, Duration::from_secs(5))?;
        let from = from.max(low);
        if from >= until {
            return Ok(Gap::Empty);
        }
        let reader: BaseConsumer = self.config.create()?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(from))?;
        reader.assign(&list)?;
        Ok(scan(
            &reader,
            topic,
            partition,
            until,
            Instant::now() + within,
        ))
    }

    /// Every committed record in `extents` of `topic`, in the order read. Done once the
    /// reader's position reaches each extent's end: the offset after the last record handed
    /// over stays short of it whenever a marker or aborted records come last, and counting
    /// records against `end - start` never finishes once markers take offsets. Fails when
    /// `stall` passes without a record or a position moving.
    pub fn read_to_end(
        &self,
        topic: &str,
        extents: &[Extent],
        stall: Duration,
    ) -> Result<Vec<OwnedMessage>, ReadError> {
        let mut records = Vec::new();
        self.read_each_to_end(topic, extents, stall, |message| {
            records.push(message.detach())
        })?;
        Ok(records)
    }

    /// [`Self::read_to_end`], handing each record to `each` as it is read instead of keeping
    /// it: for a reader that keeps less than every record (the newest per key of a compacted
    /// topic, say), so memory holds what it keeps, not the partition.
    pub fn read_each_to_end(
        &self,
        topic: &str,
        extents: &[Extent],
        stall: Duration,
        mut each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), ReadError> {
        if extents.iter().all(|e| e.read_by(None)) {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for extent in extents.iter().filter(|e| e.start < e.end) {
            list.add_partition_offset(topic, extent.partition, Offset::Offset(extent.start))?;
        }
        let reader: BaseConsumer = self.config.create()?;
        reader.assign(&list)?;
        // Where each partition is known to be read to: past the last record handed over, or
        // the reader's position, asked only when no record came or every
        // `POSITION_EVERY` records (librdkafka answers it on its main thread, a round trip
        // that cost more than the record itself when it was asked after each one).
        let mut positions: Vec<Option<i64>> = vec![None; extents.len()];
        let mut moved = Instant::now();
        let mut since_position = 0_usize;
        loop {
            let mut ask = since_position >= POSITION_EVERY;
            match reader.poll(POLL) {
                Some(Ok(message)) => {
                    moved = Instant::now();
                    since_position += 1;
                    let at = extents.iter().position(|e| {
                        message.topic() == topic && e.partition == message.partition()
                    });
                    if let Some(at) = at {
                        if message.offset() < extents[at].end {
                            each(&message);
                        }
                        let past = message.offset() + 1;
                        if positions[at].is_none_or(|p| p < past) {
                            positions[at] = Some(past);
                        }
                    }
                }
                _ => ask = true,
            }
            if ask {
                since_position = 0;
                let now: Vec<Option<i64>> = extents
                    .iter()
                    .zip(&positions)
                    .map(|(e, known)| position(&reader, topic, e.partition).max(*known))
                    .collect();
                if now != positions {
                    positions = now;
                    moved = Instant::now();
                }
            }
            let behind = extents
                .iter()
                .zip(&positions)
                .find(|(extent, position)| !extent.read_by(**position));
            let Some((extent, position)) = behind else {
                return Ok(());
            };
            if moved.elapsed() >= stall {
                return Err(ReadError::Stalled {
                    topic: topic.to_owned(),
                    partition: extent.partition,
                    position: *position,
                    end: extent.end,
                    stall,
                });
            }
        }
    }
}

/// Reads the assigned `partition` until the first record, the position reaching `until` (only
/// markers and aborted records before it), or `deadline`.
fn scan(reader: &BaseConsumer, topic: &str, partition: i32, until: i64, deadline: Instant) -> Gap {
    loop {
        // Errors (a broker connection lost) are retried by librdkafka; the deadline bounds them.
        if let Some(Ok(message)) = reader.poll(POLL) {
            if message.topic() == topic && message.partition() == partition {
                return if message.offset() < until {
                    Gap::Record(message.offset())
                } else {
                    Gap::Empty
                };
            }
        }
        if position(reader, topic, partition).is_some_and(|p| p >= until) {
            return Gap::Empty;
        }
        if Instant::now() >= deadline {
            return Gap::Unknown;
        }
    }
}

/// Every partition's extent of `topic` as `client` sees it (its isolation level decides
/// whether `end` is the last stable offset or the high watermark), by partition.
fn extents(client: &BaseConsumer, topic: &str, timeout: Duration) -> KafkaResult<Vec<Extent>> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    partitions
        .into_iter()
        .map(|partition| {
            let (start, end) = client.fetch_watermarks(topic, partition, timeout)?;
            Ok(Extent {
                partition,
                start,
                end,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Extent;

    #[test]
    fn an_extent_is_read_once_the_position_reaches_its_end() {
        let extent = Extent {
            partition: 0,
            start: 0,
            end: 5,
        };
        // The last record at 3, a commit marker at 4: the offset after the record is short.
        assert!(!extent.read_by(Some(4)));
        assert!(extent.read_by(Some(5)));
        assert!(!extent.read_by(None));
        let empty = Extent {
            partition: 1,
            start: 7,
            end: 7,
        };
        assert!(empty.read_by(None), "nothing to read");
    }
}
