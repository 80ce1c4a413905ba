//! Reports events partitions that an open transaction holds: the last stable offset (LSO, the
//! end a `read_committed` reader may read to) stuck below the high watermark. Every reader of
//! such a partition (writers reading back their appends, projectors, the orchestrator) stops at
//! the LSO, so commands on it time out and its read models stop moving, with no error anywhere.
//!
//! Our own writers' transactions are short and time out after 30 s (the coordinator aborts
//! them). A partition held for longer is held by a *hanging* transaction (Apache Kafka can leave
//! one behind when a single node is killed while it writes commit markers, see session notes and
//! KAFKA-5202's rule) or by a foreign producer with a long `transaction.timeout.ms`. Neither goes
//! away by itself quickly, and the cure is an operator's: `kafka-transactions.sh find-hanging`,
//! then `abort` (which drops that transaction's records). This module makes it visible:
//! `kafka_partition_blocked_seconds{topic, partition}` and an error log once past
//! [`REPORT_AFTER`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::error;

use crate::config::KafkaSettings;

/// How often the watermarks are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Past this a partition is reported as held by a hanging or foreign transaction: twice our
/// writers' `transaction.timeout.ms`, so none of our own live transactions is ever reported.
pub const REPORT_AFTER: Duration = Duration::from_secs(60);

/// For each partition, since when its LSO has stood still below the high watermark (pure: the
/// clock and the offsets are inputs).
#[derive(Debug, Default)]
pub struct HeldPartitions {
    held: HashMap<(String, i32), Held>,
}

#[derive(Debug)]
struct Held {
    stable: i64,
    since: Instant,
    reported: bool,
}

/// What one sample says about a partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holding {
    /// How long its LSO has stood still below the high watermark (zero when it is not held).
    pub held_for: Duration,
    /// True the first time `held_for` passes [`REPORT_AFTER`].
    pub report: bool,
}

impl HeldPartitions {
    /// Records one sample of `topic`/`partition`: its last stable offset and high watermark.
    pub fn sample(
        &mut self,
        topic: &str,
        partition: i32,
        stable: i64,
        high: i64,
        now: Instant,
    ) -> Holding {
        let key = (topic.to_owned(), partition);
        if stable >= high {
            self.held.remove(&key);
            return Holding {
                held_for: Duration::ZERO,
                report: false,
            };
        }
        let held = self.held.entry(key).or_insert(Held {
            stable,
            since: now,
            reported: false,
        });
        if held.stable != stable {
            // The LSO moved: a transaction ended and another (or a later one) is open now.
            *held = Held {
                stable,
                since: now,
                reported: false,
            };
        }
        let held_for = now.saturating_duration_since(held.since);
        let report = held_for > REPORT_AFTER && !held.reported;
        held.reported |= report;
        Holding { held_for, report }
    }
}

/// Samples every partition of `topics` every [`SAMPLE_EVERY`] until `stop` returns true, on the
/// calling thread (it blocks: run it on a blocking thread). Publishes
/// `kafka_partition_blocked_seconds` and logs a partition once it is held past [`REPORT_AFTER`].
pub fn watch(
    settings: &KafkaSettings,
    topics: &[String],
    stop: impl Fn() -> bool,
) -> rdkafka::error::KafkaResult<()> {
    let client = |isolation: &str| -> rdkafka::error::KafkaResult<BaseConsumer> {
        crate::kafka::client_config(&settings.brokers)
            .set("isolation.level", isolation)
            .create()
    };
    // A read_committed client is answered the LSO as the high watermark; read_uncommitted, the
    // real high watermark.
    let (committed, uncommitted) = (client("read_committed")?, client("read_uncommitted")?);
    let mut held = HeldPartitions::default();
    let timeout = Duration::from_secs(5);
    while !stop() {
        for topic in topics {
            for partition in 0..settings.partitions {
                if stop() {
                    return Ok(());
                }
                let ends = committed
                    .fetch_watermarks(topic, partition, timeout)
                    .and_then(|(_, stable)| {
                        let (_, high) = uncommitted.fetch_watermarks(topic, partition, timeout)?;
                        Ok((stable, high))
                    });
                let Ok((stable, high)) = ends else {
                    continue;
                };
                let holding = held.sample(topic, partition, stable, high, Instant::now());
                metrics::gauge!("kafka_partition_blocked_seconds", "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(holding.held_for.as_secs_f64());
                if holding.report {
                    error!(
                        %topic, partition, last_stable_offset = stable, high_watermark = high,
                        held_secs = holding.held_for.as_secs(),
                        "an open transaction has held this partition past every transaction timeout of ours: \
                         every read_committed reader stops at its last stable offset. Find it with \
                         `kafka-transactions.sh --bootstrap-server <broker> find-hanging --broker-id <leader>` \
                         (or `describe-producers --topic {topic} --partition {partition}`), then `abort` it; \
                         its records are dropped"
                    );
                }
            }
        }
        let until = Instant::now() + SAMPLE_EVERY;
        while Instant::now() < until && !stop() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_held_while_its_stable_offset_stands_still_below_the_end() {
        let mut held = HeldPartitions::default();
        let t0 = Instant::now();
        assert_eq!(held.sample("t", 0, 5, 7, t0).held_for, Duration::ZERO);
        let later = held.sample("t", 0, 5, 9, t0 + Duration::from_secs(10));
        assert_eq!(later.held_for, Duration::from_secs(10));
        assert!(!later.report);
    }

    #[test]
    fn a_moving_or_caught_up_stable_offset_is_not_held() {
        let mut held = HeldPartitions::default();
        let t0 = Instant::now();
        held.sample("t", 0, 5, 7, t0);
        // Another transaction now: the clock starts again.
        let moved = held.sample("t", 0, 8, 9, t0 + Duration::from_secs(30));
        assert_eq!(moved.held_for, Duration::ZERO);
        let done = held.sample("t", 0, 9, 9, t0 + Duration::from_secs(40));
        assert_eq!(done.held_for, Duration::ZERO);
    }

    #[test]
    fn a_partition_held_past_every_timeout_of_ours_is_reported_once() {
        let mut held = HeldPartitions::default();
        let t0 = Instant::now();
        held.sample("t", 1, 5, 7, t0);
        let first = held.sample("t", 1, 5, 7, t0 + REPORT_AFTER + Duration::from_secs(1));
        let again = held.sample("t", 1, 5, 7, t0 + REPORT_AFTER + Duration::from_secs(6));
        assert!(first.report);
        assert!(!again.report);
        assert!(again.held_for > REPORT_AFTER);
    }
}
