//! Reading a partition writer's snapshot (decisions 0009 and 0010), shared by the writers that
//! write them (command-api) and the saga orchestrator, which takes over its partitions from the
//! order and saga writers' snapshots instead of replaying both topics from offset 0.
//!
//! A snapshot is a set of keyed records on a compacted topic (the newest per key counts): one
//! per aggregate (its chain head and state), one per command use the window remembers, and a
//! checkpoint saying which events it covers and the log-order clock after them. Reading it is
//! all or nothing: a record that cannot be decoded, a missing checkpoint, another format or
//! window, a record under a foreign key, a missing aggregate or one its writer could not read
//! makes the whole snapshot unusable, and the reader replays the events instead: never wrong
//! state. A reader copies the snapshot into a file of its own (`platform::spill`) and checks it
//! there, so a snapshot of any size is never held in memory at once (decision 0012).

use std::collections::HashMap;
use std::time::Duration;

use domain::{AggregateKind, Version};
use platform::config::KafkaSettings;
use platform::log_end::LogEnds;
use platform::log_order::{ChainHead, CommandWindow, LogOrder, RecordedCommand};
use platform::spill::SpillFile;
use rdkafka::message::Message;
use schemas::wire::snapshots::{Checkpoint, CommandUse, Head, Snapshot, CHECKPOINT_KEY};

pub use schemas::wire::snapshots::COMMAND_KEY_PREFIX;

/// What the states of a snapshot mean (how they fold). A reader finding another format replays
/// the events instead: bump it whenever `evolve` or the state types change meaning.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// How long reading a snapshot may stall before the reader replays instead.
const READ_STALL: Duration = Duration::from_secs(10);

/// The key of a command use's record.
pub fn command_key(command_id: &str) -> String {
    format!("{COMMAND_KEY_PREFIX}{command_id}")
}

/// Why a snapshot partition could not be read into records.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading")]
    Read(#[from] platform::log_end::ReadError),
    #[error("offset {offset}: the key is not UTF-8")]
    Key { offset: i64 },
    #[error("the blocking read did not finish")]
    Join,
    #[error("copying the snapshot to local disk")]
    Spill(#[from] platform::spill::SpillError),
}

/// Why snapshot records cannot be restored (the reader replays the events instead).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("the snapshot has no checkpoint")]
    NoCheckpoint,
    #[error("the snapshot's format is {found}, this build reads {SNAPSHOT_FORMAT}")]
    Format { found: u32 },
    #[error("record {key:?} is not a {kind} snapshot of that aggregate")]
    ForeignRecord { key: String, kind: &'static str },
    #[error(
        "the snapshot was judged with a {found} ms command window, this reader uses {expected} ms"
    )]
    Window { found: i64, expected: i64 },
    #[error("the snapshot holds an aggregate its writer could not read ({0}); this build may")]
    Unreadable(String),
    #[error("the checkpoint counts {expected} aggregates, the snapshot holds {found}")]
    Incomplete { expected: u64, found: u64 },
}

/// Copies the newest committed record of each key in partition `partition` of a snapshots
/// topic into `spill`, undecoded (a tombstone removes the key), on a blocking thread: a
/// snapshot of any size is restored through the file, never held in memory at once. Returns
/// the file and how many records were read (0: there is no snapshot).
pub async fn copy_partition(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    mut spill: SpillFile,
) -> Result<(SpillFile, u64), ReadError> {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let ends = LogEnds::new(&kafka)?;
        let extents: Vec<_> = ends
            .extents(&topic, Duration::from_secs(5))?
            .into_iter()
            .filter(|e| e.partition == partition)
            .collect();
        let mut read = 0_u64;
        let mut failed = None;
        ends.read_each_to_end(&topic, &extents, READ_STALL, |message| {
            if failed.is_some() {
                return;
            }
            read += 1;
            let offset = message.offset();
            let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                failed = Some(ReadError::Key { offset });
                return;
            };
            let copied = match message.payload() {
                Some(payload) => spill.put(key.to_owned(), payload.to_vec()),
                None => spill.remove(key.to_owned()),
            };
            if let Err(error) = copied {
                failed = Some(ReadError::Spill(error));
            }
        })?;
        match failed {
            Some(error) => Err(error),
            None => Ok((spill, read)),
        }
    })
    .await
    .map_err(|_| ReadError::Join)?
}

/// Why a snapshot copied to a spill file cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Spill(#[from] platform::spill::SpillError),
    #[error("record {key:?}: {source}")]
    Record {
        key: String,
        #[source]
        source: schemas::DecodeError,
    },
    #[error("{0}")]
    Restore(#[from] RestoreError),
}

/// Where a reader of a snapshot keeps the command uses it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandUses {
    /// In the restored log order.
    InMemory,
    /// In the file the snapshot was copied to, noted as expiring from their use on
    /// (`SpillFile::put_expiring`), for the reader to take back when it needs one and to forget
    /// when the window does (decision 0015): the restored log order holds none.
    InFile,
    /// Checked only: the reader takes them from the copy itself, to keep elsewhere.
    CheckedOnly,
}

/// Checks every record of a snapshot of `kind` copied to `copy` ([`copy_partition`]), all or
/// nothing as [`restore_log`] does, keeping none of the aggregates in memory: the restored log
/// order holds no chain head, and the aggregates' records stay in the file for the reader to
/// take as it needs them. The command uses go where `uses` says.
pub fn restore_copied(
    kind: AggregateKind,
    window: CommandWindow,
    copy: &mut SpillFile,
    uses: CommandUses,
) -> Result<RestoredLog, CopyError> {
    let mut restoring = RestoringLog::without_aggregates(kind);
    restoring.keep_commands = uses == CommandUses::InMemory;
    let noted = uses == CommandUses::InFile;
    copy.try_for_each_noting_expiry(|key, bytes| {
        let record = schemas::decode::<Snapshot>(bytes).map_err(|source| CopyError::Record {
            key: key.to_owned(),
            source,
        })?;
        let expires_from = match &record {
            Snapshot::CommandUse(used) if noted => Some(used.used_at),
            _ => None,
        };
        restoring.add(key.to_owned(), record)?;
        Ok::<_, CopyError>(expires_from)
    })?;
    Ok(restoring.finish(window)?)
}

/// Whether a snapshot key is an aggregate's (not the checkpoint's or a command use's).
pub fn is_aggregate_key(key: &str) -> bool {
    key != CHECKPOINT_KEY && !key.starts_with(COMMAND_KEY_PREFIX)
}

/// What a snapshot restores, whatever its aggregates' kind: the log order after its checkpoint
/// and each aggregate's record, for the reader to take the state it needs from.
#[derive(Debug)]
pub struct RestoredLog {
    pub checkpoint: Checkpoint,
    /// The partition's log order at `checkpoint.events_end`: every chain head (none when
    /// restored [`RestoringLog::without_aggregates`]), and the command uses the window still
    /// remembers at the checkpoint's clock.
    pub log: LogOrder,
    /// Every aggregate's record (its head's id is its key, its kind the snapshot's), unless
    /// restored without them.
    pub aggregates: Vec<Snapshot>,
    /// Every command use the snapshot holds, remembered or not (a writer deletes the forgotten),
    /// unless the reader keeps them elsewhere ([`CommandUses::InFile`]).
    pub command_ids: Vec<String>,
}

/// The log order and aggregate records a snapshot of `kind` describes, from its records (key
/// and record, `None` for a deleted key, in log order; the newest per key counts).
pub fn restore_log(
    kind: AggregateKind,
    window: CommandWindow,
    records: impl IntoIterator<Item = (String, Option<Snapshot>)>,
) -> Result<RestoredLog, RestoreError> {
    let newest: HashMap<String, Option<Snapshot>> = records.into_iter().collect();
    let mut restoring = RestoringLog::new(kind);
    for (key, record) in newest {
        if let Some(record) = record {
            restoring.add(key, record)?;
        }
    }
    restoring.finish(window)
}

/// A snapshot being restored record by record (the newest of each key, in any order), checked
/// as it goes and as a whole at the end.
#[derive(Debug)]
pub struct RestoringLog {
    kind: AggregateKind,
    /// Whether the aggregates' heads and records are kept: a reader that keeps them elsewhere
    /// (a writer's spill file, decision 0012) has them checked and counted only.
    keep_aggregates: bool,
    /// Whether the command uses are kept: a reader that keeps them elsewhere has them checked
    /// only.
    keep_commands: bool,
    checkpoint: Option<Checkpoint>,
    heads: Vec<(String, ChainHead)>,
    aggregates: Vec<Snapshot>,
    found: u64,
    commands: Vec<(String, RecordedCommand)>,
}

impl RestoringLog {
    /// Keeps every aggregate's head and record.
    pub fn new(kind: AggregateKind) -> Self {
        Self {
            kind,
            keep_aggregates: true,
            keep_commands: true,
            checkpoint: None,
            heads: Vec::new(),
            aggregates: Vec::new(),
            found: 0,
            commands: Vec::new(),
        }
    }

    /// Checks and counts the aggregates' records but keeps none of them: the restored log
    /// order holds no chain head.
    pub fn without_aggregates(kind: AggregateKind) -> Self {
        Self {
            keep_aggregates: false,
            ..Self::new(kind)
        }
    }

    /// Takes the newest record of `key`.
    pub fn add(&mut self, key: String, record: Snapshot) -> Result<(), RestoreError> {
        let foreign = |key: String| RestoreError::ForeignRecord {
            key,
            kind: self.kind.as_str(),
        };
        match record {
            Snapshot::Checkpoint(c) if key == CHECKPOINT_KEY => self.checkpoint = Some(c),
            Snapshot::CommandUse(u) if key == command_key(&u.command_id) => {
                if self.keep_commands {
                    self.commands.push((u.command_id.clone(), recorded(u)));
                }
            }
            Snapshot::Checkpoint(_) | Snapshot::CommandUse(_) => return Err(foreign(key)),
            aggregate => {
                let Some(head) = aggregate
                    .head()
                    .filter(|head| head.aggregate_id == key && aggregate.kind() == Some(self.kind))
                else {
                    return Err(foreign(key));
                };
                // Whether it is readable is this build's to find out, by replaying.
                if head.unreadable {
                    return Err(RestoreError::Unreadable(key));
                }
                self.found += 1;
                if self.keep_aggregates {
                    self.heads.push((key, chain_head(head)));
                    self.aggregates.push(aggregate);
                }
            }
        }
        Ok(())
    }

    /// The restored log, once every record is in: it must hold a checkpoint of this build's
    /// format and window, and every aggregate the checkpoint counts.
    pub fn finish(self, window: CommandWindow) -> Result<RestoredLog, RestoreError> {
        let checkpoint = self.checkpoint.ok_or(RestoreError::NoCheckpoint)?;
        if checkpoint.format != SNAPSHOT_FORMAT {
            return Err(RestoreError::Format {
                found: checkpoint.format,
            });
        }
        if checkpoint.window_ms != window.millis() {
            return Err(RestoreError::Window {
                found: checkpoint.window_ms,
                expected: window.millis(),
            });
        }
        if self.found != checkpoint.aggregates {
            return Err(RestoreError::Incomplete {
                expected: checkpoint.aggregates,
                found: self.found,
            });
        }
        let command_ids = self.commands.iter().map(|(id, _)| id.clone()).collect();
        Ok(RestoredLog {
            log: LogOrder::restored(window, checkpoint.clock, self.heads, self.commands),
            checkpoint,
            aggregates: self.aggregates,
            command_ids,
        })
    }
}

/// The chain head a snapshot record's head describes.
pub fn chain_head(head: &Head) -> ChainHead {
    ChainHead {
        version: Version::new(head.version),
        event_id: head.event_id,
        command_id: head.command_id.clone(),
        offset: head.offset,
    }
}

/// The snapshot record's head of `aggregate_id`, whose chain head is `head`.
pub fn head_record(aggregate_id: &str, head: &ChainHead, unreadable: bool) -> Head {
    Head {
        aggregate_id: aggregate_id.to_owned(),
        version: head.version.get(),
        event_id: head.event_id,
        command_id: head.command_id.clone(),
        offset: head.offset,
        unreadable,
    }
}

/// A command use as its snapshot record holds it.
pub fn command_use(command_id: &str, r: &RecordedCommand) -> CommandUse {
    CommandUse {
        command_id: command_id.to_owned(),
        aggregate_id: r.aggregate_id.clone(),
        version: r.version.get(),
        event_types: r.event_types.clone(),
        offsets: r.offsets.clone(),
        request_hash: r.request_hash.clone(),
        used_at: r.used_at,
    }
}

/// Whether the encoded snapshot record `bytes` is a command use stamped before `before` (one
/// the window has forgotten when `before` is its oldest remembered stamp); any other record is
/// not. What a reader's file asks of a use whose expiry note came due (decision 0015).
pub fn use_stamped_before(bytes: &[u8], before: i64) -> Result<bool, schemas::DecodeError> {
    Ok(match schemas::decode::<Snapshot>(bytes)? {
        Snapshot::CommandUse(used) => used.used_at < before,
        _ => false,
    })
}

/// The command use a snapshot record holds.
pub fn recorded(u: CommandUse) -> RecordedCommand {
    RecordedCommand {
        aggregate_id: u.aggregate_id,
        version: Version::new(u.version),
        event_types: u.event_types,
        offsets: u.offsets,
        request_hash: u.request_hash,
        used_at: u.used_at,
    }
}
