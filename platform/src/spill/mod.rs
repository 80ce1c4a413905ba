//! A process-private file of keyed records, for state a worker keeps out of memory but may need
//! again (the orchestrator's finished sagas, decision 0011; a writer's aggregates no command
//! touched lately, decision 0012).
//!
//! The file is a cache of what the worker folded from the log, never a source of truth: each
//! worker starts one empty and unlinks it as soon as it is open, so it is gone with the worker
//! however the worker ends (SIGKILL, out of memory), and nothing is read across restarts.
//! Records are written in batches, and found in the batch until it is. A batch that fills is
//! written behind, on a thread of its own, and found there until it is: the worker goes on
//! (a batch of 1,024 random keys takes 5-25 ms to write, a durable one up to 60 ms, and a
//! command writer waiting for it held up its partition's commands). No write needs to be
//! durable; one in [`DURABLE_EVERY`] is, only so redb lets go of what it tracks until then.
//! At most two batches are in memory (one filling, one written behind). A batch that could not
//! be written leaves the file refusing every call after ([`SpillError::Lost`]): its worker
//! starts again with a new one, as on any failure of the file.
//!
//! Layout: this file holds the file and its records; `expiring` the records noted with a time
//! from which they may expire (a writer's command uses, decision 0015).

mod expiring;

pub use expiring::pass_size;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::backends::FileBackend;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// redb's page cache per file (its default is 1 GiB): lookups are for records no longer in
/// memory, which the worker's own access pattern makes rare, and the kernel's page cache
/// (not counted in the process's memory) serves what redb's does not. A process runs a file
/// per partition worker, so this counts a dozen times.
const CACHE_BYTES: usize = 1024 * 1024;

/// Records held before they are written, in one transaction.
const BATCH: usize = 1024;

/// Every this many writes, one is made durable. The file needs no durability, but redb keeps in
/// memory every page a non-durable commit allocated, and reuses no page freed since, until a
/// durable commit: with none, both the memory and the file grow with every record ever
/// written.
const DURABLE_EVERY: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("spill file in {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spill file: {0}")]
    Database(#[from] redb::Error),
    #[error("spill file: the thread writing a batch behind stopped without finishing it")]
    WriterLost,
    #[error(
        "spill file: a batch could not be written, so the file no longer holds all that was put"
    )]
    Lost,
}

/// Converts any of redb's specific errors.
fn db(error: impl Into<redb::Error>) -> SpillError {
    SpillError::Database(error.into())
}

/// Records not yet written: key -> `None` to remove it.
type Batch = HashMap<String, Option<Vec<u8>>>;

/// One worker's spilled records: key -> bytes.
pub struct SpillFile {
    db: Arc<Database>,
    path: PathBuf,
    /// Not yet written: `None` removes the key.
    batch: Batch,
    /// Not yet written: (time, key) noted as expiring from then (`expiring`).
    expiring: Vec<(i64, String)>,
    /// Writes since the last durable one.
    since_durable: u32,
    /// The last full batch, being written behind: what it holds is found here until it is.
    behind: Option<WrittenBehind>,
    /// A batch written behind failed: the file may lack records that were put, so it answers
    /// nothing more (a lookup that missed one would let a writer accept a command twice).
    lost: bool,
}

/// A batch a thread of its own is writing.
struct WrittenBehind {
    /// What it writes, found here by lookups until it is written.
    batch: Arc<Batch>,
    /// The earliest expiry noted with it (`expiring`'s check whether any note is due).
    earliest_note: Option<i64>,
    /// The thread: how its write ended.
    done: JoinHandle<Result<(), SpillError>>,
}

impl std::fmt::Debug for SpillFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillFile")
            .field("path", &self.path)
            .field("batch", &self.batch.len())
            .finish()
    }
}

impl SpillFile {
    /// An empty file in `dir` (created if missing), named after `name` while it is being
    /// opened (it is unlinked at once), for a worker to keep as long as it runs.
    pub fn create(dir: &Path, name: &str) -> Result<Self, SpillError> {
        let open_error = |source| SpillError::Open {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_error)?;
        let path = dir.join(format!("{name}-{}.redb", uuid::Uuid::new_v4()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(open_error)?;
        // Unlinked at once: the open file is all there is, so a worker killed with its process
        // leaves nothing behind in the volume.
        std::fs::remove_file(&path).map_err(open_error)?;
        let backend = FileBackend::new(file).map_err(db)?;
        let db_file = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(db)?;
        let db_file = Arc::new(db_file);
        // The table exists from the start: a lookup before the first batch finds nothing in it
        // rather than failing on a missing table.
        let write = db_file.begin_write().map_err(db)?;
        write.open_table(RECORDS).map_err(db)?;
        write.open_table(expiring::EXPIRING).map_err(db)?;
        write.commit().map_err(db)?;
        Ok(Self {
            db: db_file,
            path,
            batch: HashMap::new(),
            expiring: Vec::new(),
            since_durable: 0,
            behind: None,
            lost: false,
        })
    }

    /// Keeps `value` under `key` (written with the next batch), replacing what it held.
    pub fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), SpillError> {
        self.usable()?;
        self.batch.insert(key, Some(value));
        self.flush_if_full()
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: String) -> Result<(), SpillError> {
        self.usable()?;
        self.batch.insert(key, None);
        self.flush_if_full()
    }

    /// Writes a full batch behind; reaps the last one written behind once it is written (its
    /// failure is this call's).
    fn flush_if_full(&mut self) -> Result<(), SpillError> {
        if self.batch.len() >= BATCH || self.expiring.len() >= BATCH {
            return self.write_behind();
        }
        if self.behind.as_ref().is_some_and(|b| b.done.is_finished()) {
            self.settle()?;
        }
        Ok(())
    }

    /// What `key` holds. It stays in the file: a worker that takes a record back into memory
    /// puts it again when it spills it again.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SpillError> {
        self.usable()?;
        if let Some(value) = self.batch.get(key) {
            return Ok(value.clone());
        }
        if let Some(value) = self.behind.as_ref().and_then(|b| b.batch.get(key)) {
            return Ok(value.clone());
        }
        let read = self.db.begin_read().map_err(db)?;
        let table = read.open_table(RECORDS).map_err(db)?;
        let value = table.get(key).map_err(db)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Writes the batch, in one transaction, and waits until it and any batch written behind
    /// are in the file: not made durable (see the module doc), except one in
    /// [`DURABLE_EVERY`], which lets redb forget what it tracks until one is.
    pub fn flush(&mut self) -> Result<(), SpillError> {
        self.usable()?;
        self.settle()?;
        if self.batch.is_empty() && self.expiring.is_empty() {
            return Ok(());
        }
        let durable = self.next_is_durable();
        write_batch(&self.db, &self.batch, &self.expiring, durable)?;
        self.batch.clear();
        self.expiring.clear();
        Ok(())
    }

    /// Refuses once a batch written behind was lost (see `lost`).
    fn usable(&self) -> Result<(), SpillError> {
        if self.lost {
            return Err(SpillError::Lost);
        }
        Ok(())
    }

    /// Hands the batch to a thread of its own, once the one before it is written; writes it
    /// here if no thread can be started.
    fn write_behind(&mut self) -> Result<(), SpillError> {
        self.settle()?;
        let batch = Arc::new(std::mem::take(&mut self.batch));
        let notes = Arc::new(std::mem::take(&mut self.expiring));
        let earliest_note = notes.iter().map(|(at, _)| *at).min();
        let durable = self.next_is_durable();
        let (file, records, noted) = (Arc::clone(&self.db), Arc::clone(&batch), Arc::clone(&notes));
        let started = std::thread::Builder::new()
            .name("spill-writer".into())
            .spawn(move || write_batch(&file, &records, &noted, durable));
        match started {
            Ok(done) => {
                self.behind = Some(WrittenBehind {
                    batch,
                    earliest_note,
                    done,
                });
                Ok(())
            }
            Err(_) => write_batch(&self.db, &batch, &notes, durable).inspect_err(|_| {
                self.lost = true;
            }),
        }
    }

    /// Waits for the batch written behind, if any: its failure is the caller's, and the
    /// file's (see `lost`).
    fn settle(&mut self) -> Result<(), SpillError> {
        let Some(behind) = self.behind.take() else {
            return Ok(());
        };
        let written = behind.done.join().unwrap_or(Err(SpillError::WriterLost));
        if written.is_err() {
            self.lost = true;
        }
        written
    }

    /// Whether the next write is the durable one in [`DURABLE_EVERY`].
    fn next_is_durable(&mut self) -> bool {
        self.since_durable += 1;
        if self.since_durable >= DURABLE_EVERY {
            self.since_durable = 0;
            return true;
        }
        false
    }

    /// A write transaction here, once any batch written behind is in: not durable (see the
    /// module doc), except one in [`DURABLE_EVERY`].
    fn begin_write(&mut self) -> Result<WriteTransaction, SpillError> {
        self.settle()?;
        let durable = self.next_is_durable();
        begin(&self.db, durable)
    }

    /// Calls `each` with every record, in key order, after writing the batch; stops at the
    /// first error `each` returns.
    pub fn try_for_each<E: From<SpillError>>(
        &mut self,
        mut each: impl FnMut(&str, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.flush()?;
        let read = self.db.begin_read().map_err(db)?;
        let table = read.open_table(RECORDS).map_err(db)?;
        for entry in table.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            each(key.value(), value.value())?;
        }
        Ok(())
    }
}

/// A write transaction on `file`, durable or not (see the module doc).
fn begin(file: &Database, durable: bool) -> Result<WriteTransaction, SpillError> {
    let mut write = file.begin_write().map_err(db)?;
    if !durable {
        write.set_durability(Durability::None).map_err(db)?;
    }
    Ok(write)
}

/// Writes `batch` and the expiry `notes` in one transaction.
fn write_batch(
    file: &Database,
    batch: &Batch,
    notes: &[(i64, String)],
    durable: bool,
) -> Result<(), SpillError> {
    let write = begin(file, durable)?;
    expiring::note(&write, notes)?;
    {
        let mut table = write.open_table(RECORDS).map_err(db)?;
        for (key, value) in batch {
            match value {
                Some(value) => table.insert(key.as_str(), value.as_slice()).map(drop),
                None => table.remove(key.as_str()).map(drop),
            }
            .map_err(db)?;
        }
    }
    write.commit().map_err(db)
}

/// Calls `each` with every key `left` or `right` holds, in key order, and what each holds of
/// it (both written first); stops at the first error `each` returns. Two files keyed alike
/// (an order's records and its saga's) are read side by side, neither into memory.
pub fn try_for_each_pair<E: From<SpillError>>(
    left: &mut SpillFile,
    right: &mut SpillFile,
    mut each: impl FnMut(&str, Option<&[u8]>, Option<&[u8]>) -> Result<(), E>,
) -> Result<(), E> {
    left.flush()?;
    right.flush()?;
    let (left_read, right_read) = (
        left.db.begin_read().map_err(db)?,
        right.db.begin_read().map_err(db)?,
    );
    let (left_table, right_table) = (
        left_read.open_table(RECORDS).map_err(db)?,
        right_read.open_table(RECORDS).map_err(db)?,
    );
    let mut lefts = left_table.iter().map_err(db)?.peekable();
    let mut rights = right_table.iter().map_err(db)?.peekable();
    loop {
        let next_left = lefts.peek().map(|e| e.as_ref().map(|(k, _)| k.value()));
        let next_right = rights.peek().map(|e| e.as_ref().map(|(k, _)| k.value()));
        let (take_left, take_right) = match (next_left, next_right) {
            (None, None) => return Ok(()),
            (Some(Err(_)), _) | (_, Some(Err(_))) => (true, true),
            (Some(Ok(l)), Some(Ok(r))) => (l <= r, r <= l),
            (Some(Ok(_)), None) => (true, false),
            (None, Some(Ok(_))) => (false, true),
        };
        let left_entry = next_if(take_left, &mut lefts)?;
        let right_entry = next_if(take_right, &mut rights)?;
        let key = match (&left_entry, &right_entry) {
            (Some((key, _)), _) | (None, Some((key, _))) => key.value().to_owned(),
            (None, None) => return Ok(()),
        };
        each(
            &key,
            left_entry.as_ref().map(|(_, v)| v.value()),
            right_entry.as_ref().map(|(_, v)| v.value()),
        )?;
    }
}

type Entry<'a> = (
    redb::AccessGuard<'a, &'static str>,
    redb::AccessGuard<'a, &'static [u8]>,
);

/// The next entry of `entries` when `take`.
fn next_if<'a>(
    take: bool,
    entries: &mut std::iter::Peekable<redb::Range<'a, &'static str, &'static [u8]>>,
) -> Result<Option<Entry<'a>>, SpillError> {
    if !take {
        return Ok(None);
    }
    entries.next().transpose().map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("spill-test-{}", uuid::Uuid::new_v4()))
    }

    fn all(file: &mut SpillFile) -> Vec<(String, Vec<u8>)> {
        let mut records = Vec::new();
        file.try_for_each(|key, value| {
            records.push((key.to_owned(), value.to_vec()));
            Ok::<_, SpillError>(())
        })
        .expect("every record");
        records
    }

    #[test]
    fn a_new_file_holds_nothing() {
        let mut file = SpillFile::create(&dir(), "t").expect("a file");
        assert_eq!(file.get("a").expect("get"), None);
        assert!(all(&mut file).is_empty());
    }

    #[test]
    fn a_record_comes_back_as_it_was_put_before_and_after_its_batch_is_written() {
        let mut file = SpillFile::create(&dir(), "t").expect("a file");
        file.put("a".into(), vec![1, 2]).expect("put");
        assert_eq!(file.get("a").expect("get"), Some(vec![1, 2]));
        file.flush().expect("flush");
        assert_eq!(file.get("a").expect("get"), Some(vec![1, 2]));
        assert_eq!(file.get("b").expect("get"), None);
    }

    #[test]
    fn the_newest_put_counts_and_a_removed_key_is_gone() {
        let mut file = SpillFile::create(&dir(), "t").expect("a file");
        file.put("a".into(), vec![1]).expect("put");
        file.put("b".into(), vec![2]).expect("put");
        file.flush().expect("flush");
        file.put("a".into(), vec![3]).expect("put");
        file.remove("b".into()).expect("remove");
        assert_eq!(file.get("b").expect("get"), None);
        assert_eq!(all(&mut file), vec![("a".to_owned(), vec![3])]);
    }

    #[test]
    fn two_files_are_read_side_by_side_in_key_order() {
        let (mut left, mut right) = (
            SpillFile::create(&dir(), "l").expect("a file"),
            SpillFile::create(&dir(), "r").expect("a file"),
        );
        for (key, value) in [("b", 2), ("a", 1), ("d", 4)] {
            left.put(key.into(), vec![value]).expect("put");
        }
        for (key, value) in [("c", 30), ("b", 20), ("e", 50)] {
            right.put(key.into(), vec![value]).expect("put");
        }
        let mut seen = Vec::new();
        try_for_each_pair(&mut left, &mut right, |key, l, r| {
            seen.push((key.to_owned(), l.map(<[u8]>::to_vec), r.map(<[u8]>::to_vec)));
            Ok::<_, SpillError>(())
        })
        .expect("both files");
        let v = |n: u8| Some(vec![n]);
        assert_eq!(
            seen,
            vec![
                ("a".to_owned(), v(1), None),
                ("b".to_owned(), v(2), v(20)),
                ("c".to_owned(), None, v(30)),
                ("d".to_owned(), v(4), None),
                ("e".to_owned(), None, v(50)),
            ]
        );
    }

    #[test]
    fn a_batch_written_behind_is_found_while_it_is_written_and_after() {
        let mut file = SpillFile::create(&dir(), "t").expect("a file");
        // The last put fills the batch and hands it to a thread: nothing reaps it before the
        // assertion, however fast the thread is.
        for n in 0..BATCH {
            file.put(format!("k-{n:05}"), vec![1]).expect("put");
        }
        assert!(
            file.behind.is_some(),
            "the full batch is being written behind"
        );
        assert_eq!(file.get("k-00000").expect("get"), Some(vec![1]));
        // A newer change to a key of the batch behind counts, before and after it is written.
        file.remove("k-00000".into()).expect("remove");
        file.put("k-00001".into(), vec![2]).expect("put");
        assert_eq!(file.get("k-00000").expect("get"), None);
        assert_eq!(file.get("k-00001").expect("get"), Some(vec![2]));
        file.flush().expect("flush");
        assert!(file.behind.is_none(), "a flush waits for the batch behind");
        let records = all(&mut file);
        assert_eq!(records.len(), BATCH - 1);
        assert_eq!(records[0], ("k-00001".to_owned(), vec![2]));
    }

    #[test]
    fn a_file_that_lost_a_batch_answers_nothing_more() {
        // What a failed write behind leaves (`settle`): a lookup that missed one of the
        // batch's records would let a writer accept a retried command twice.
        let mut file = SpillFile::create(&dir(), "t").expect("a file");
        file.put("a".into(), vec![1]).expect("put");
        file.lost = true;
        assert!(matches!(file.get("a"), Err(SpillError::Lost)));
        assert!(matches!(
            file.put("b".into(), vec![2]),
            Err(SpillError::Lost)
        ));
        assert!(matches!(file.remove("a".into()), Err(SpillError::Lost)));
        assert!(matches!(file.flush(), Err(SpillError::Lost)));
        let every = file.try_for_each(|_, _| Ok::<_, SpillError>(()));
        assert!(matches!(every, Err(SpillError::Lost)));
        let expired = file.expire_before(i64::MAX, 10, |_| Ok::<_, SpillError>(true));
        assert!(matches!(expired, Err(SpillError::Lost)));
    }

    #[test]
    fn a_full_batch_is_written_without_a_flush_to_a_file_no_one_else_can_see() {
        let dir = dir();
        let mut file = SpillFile::create(&dir, "t").expect("a file");
        for n in 0..=BATCH {
            file.put(format!("k-{n}"), vec![7]).expect("put");
        }
        assert!(file.batch.len() < BATCH);
        assert_eq!(file.get("k-0").expect("get"), Some(vec![7]));
        let left: Vec<_> = std::fs::read_dir(&dir).expect("the directory").collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
