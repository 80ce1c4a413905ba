//! Records that may expire (decision 0015): a second table orders keys by a time the worker
//! gives when it puts them (for a writer, when a command was used), so what a window has
//! forgotten is found by reading the front of that table, never every record. A key put again
//! with a later time is noted twice; the record as it is when the earlier note comes due says
//! whether it has expired, so a note never removes a newer record.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{db, SpillError, SpillFile, BATCH, RECORDS};

/// (time, key) -> nothing: the keys in the order they may expire.
pub(super) const EXPIRING: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiring");

/// The records one expiry pass may remove after `just_put` were noted: twice those, which keeps
/// pace with a window (about as many expire in an interval as were put in one a window
/// earlier), and at least 4,096, which works off a backlog (a worker idle for longer than the
/// window) a bounded part at a time instead of holding it all at once.
pub fn pass_size(just_put: usize) -> usize {
    4_096 + 2 * just_put
}

/// Writes the notes `pending` holds in the transaction `write`.
pub(super) fn note(write: &WriteTransaction, pending: &[(i64, String)]) -> Result<(), SpillError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut table = write.open_table(EXPIRING).map_err(db)?;
    for (at, key) in pending {
        table.insert((*at, key.as_str()), ()).map_err(db)?;
    }
    Ok(())
}

impl SpillFile {
    /// Keeps `value` under `key` like [`SpillFile::put`], noted as expiring from `at` on.
    pub fn put_expiring(&mut self, key: String, value: Vec<u8>, at: i64) -> Result<(), SpillError> {
        self.expiring.push((at, key.clone()));
        self.put(key, value)
    }

    /// Removes every record noted to expire before `before` (the `most` oldest notes due) that
    /// `expired` (given the record as it is now) says has, and returns their keys; the notes due
    /// go either way. Stops at the first error `expired` returns, removing nothing. Writes
    /// nothing when no note is due (a worker calls this often).
    pub fn expire_before<E: From<SpillError>>(
        &mut self,
        before: i64,
        most: usize,
        mut expired: impl FnMut(&[u8]) -> Result<bool, E>,
    ) -> Result<Vec<String>, E> {
        if !self.any_note_before(before)? {
            return Ok(Vec::new());
        }
        // The records as they are now, the batch's included.
        self.flush()?;
        let write = self.begin_write()?;
        let mut removed = Vec::new();
        {
            let mut notes = write.open_table(EXPIRING).map_err(db)?;
            let mut records = write.open_table(RECORDS).map_err(db)?;
            let due = notes
                .range(..(before, ""))
                .map_err(db)?
                .take(most)
                .map(|entry| {
                    let (note, _) = entry?;
                    let (at, key) = note.value();
                    Ok((at, key.to_owned()))
                })
                .collect::<Result<Vec<(i64, String)>, redb::StorageError>>()
                .map_err(db)?;
            for (at, key) in due {
                notes.remove((at, key.as_str())).map_err(db)?;
                let gone = match records.get(key.as_str()).map_err(db)? {
                    Some(record) => expired(record.value())?,
                    None => false,
                };
                if gone {
                    records.remove(key.as_str()).map_err(db)?;
                    removed.push(key);
                }
            }
        }
        write.commit().map_err(db)?;
        Ok(removed)
    }

    /// Whether a note is due before `before`, written, being written behind or in the batch (a
    /// read: no write transaction for nothing).
    fn any_note_before(&self, before: i64) -> Result<bool, SpillError> {
        self.usable()?;
        if self.expiring.iter().any(|(at, _)| *at < before) {
            return Ok(true);
        }
        let behind = self.behind.as_ref().and_then(|b| b.earliest_note);
        if behind.is_some_and(|at| at < before) {
            return Ok(true);
        }
        let read = redb::ReadableDatabase::begin_read(&*self.db).map_err(db)?;
        let notes = read.open_table(EXPIRING).map_err(db)?;
        let first = notes.first().map_err(db)?;
        Ok(first.is_some_and(|(note, _)| note.value().0 < before))
    }

    /// Calls `each` with every record, in key order, like [`SpillFile::try_for_each`], and
    /// notes each record for which it returns a time as expiring from then: how a file filled
    /// by copying records in (a restored snapshot) gets its notes.
    pub fn try_for_each_noting_expiry<E: From<SpillError>>(
        &mut self,
        mut each: impl FnMut(&str, &[u8]) -> Result<Option<i64>, E>,
    ) -> Result<(), E> {
        self.flush()?;
        let read = redb::ReadableDatabase::begin_read(&*self.db).map_err(db)?;
        let table = read.open_table(RECORDS).map_err(db)?;
        for entry in table.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            if let Some(at) = each(key.value(), value.value())? {
                self.expiring.push((at, key.value().to_owned()));
            }
            if self.expiring.len() >= BATCH {
                // Written beside the open read, which goes on reading the file as it was.
                self.flush()?;
            }
        }
        self.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> SpillFile {
        let dir = std::env::temp_dir().join(format!("spill-test-{}", uuid::Uuid::new_v4()));
        SpillFile::create(&dir, "t").expect("a file")
    }

    /// Records hold their own expiry time as one byte.
    fn expired_before(before: i64) -> impl FnMut(&[u8]) -> Result<bool, SpillError> {
        move |record| Ok(i64::from(record[0]) < before)
    }

    #[test]
    fn only_records_noted_before_the_time_expire() {
        let mut file = file();
        file.put_expiring("a".into(), vec![1], 1).expect("put");
        file.put_expiring("b".into(), vec![5], 5).expect("put");
        file.put("c".into(), vec![0]).expect("put");
        file.flush().expect("flush");
        let removed = file
            .expire_before(3, usize::MAX, expired_before(3))
            .expect("expire");
        assert_eq!(removed, ["a"]);
        assert_eq!(file.get("a").expect("get"), None);
        assert_eq!(file.get("b").expect("get"), Some(vec![5]));
        assert_eq!(
            file.get("c").expect("get"),
            Some(vec![0]),
            "a record never noted never expires"
        );
        assert!(file
            .expire_before(3, usize::MAX, expired_before(3))
            .expect("expire")
            .is_empty());
    }

    #[test]
    fn a_record_put_again_later_outlives_its_first_note() {
        let mut file = file();
        file.put_expiring("a".into(), vec![1], 1).expect("put");
        file.flush().expect("flush");
        file.put_expiring("a".into(), vec![8], 8).expect("put");
        assert!(file
            .expire_before(5, usize::MAX, expired_before(5))
            .expect("expire")
            .is_empty());
        assert_eq!(file.get("a").expect("get"), Some(vec![8]));
        assert_eq!(
            file.expire_before(9, usize::MAX, expired_before(9))
                .expect("expire"),
            ["a"],
            "its second note still stands"
        );
    }

    #[test]
    fn at_most_the_oldest_notes_due_go_at_once_and_the_rest_next_time() {
        let mut file = file();
        for at in [4_u8, 1, 3, 2] {
            file.put_expiring(format!("k-{at}"), vec![at], i64::from(at))
                .expect("put");
        }
        file.flush().expect("flush");
        let first = file.expire_before(9, 3, expired_before(9)).expect("expire");
        assert_eq!(first, ["k-1", "k-2", "k-3"]);
        let rest = file.expire_before(9, 3, expired_before(9)).expect("expire");
        assert_eq!(rest, ["k-4"]);
    }

    #[test]
    fn notes_still_in_the_batch_come_due_too() {
        let mut file = file();
        file.put_expiring("a".into(), vec![1], 1).expect("put");
        assert_eq!(
            file.expire_before(3, usize::MAX, expired_before(3))
                .expect("expire"),
            ["a"]
        );
    }

    #[test]
    fn notes_being_written_behind_come_due_too() {
        let mut file = file();
        for n in 0..BATCH {
            file.put_expiring(format!("k-{n:05}"), vec![1], 1)
                .expect("put");
        }
        assert!(
            file.behind.is_some(),
            "the full batch is being written behind"
        );
        let expired = file
            .expire_before(3, usize::MAX, expired_before(3))
            .expect("expire");
        assert_eq!(expired.len(), BATCH);
    }

    #[test]
    fn an_error_while_expiring_removes_nothing() {
        let mut file = file();
        file.put_expiring("a".into(), vec![1], 1).expect("put");
        file.flush().expect("flush");
        let failed = file.expire_before(3, usize::MAX, |_| {
            Err(SpillError::Database(redb::Error::Corrupted("test".into())))
        });
        assert!(failed.is_err());
        assert_eq!(
            file.expire_before(3, usize::MAX, expired_before(3))
                .expect("expire"),
            ["a"]
        );
    }

    #[test]
    fn records_copied_in_are_noted_as_they_are_read() {
        let mut file = file();
        // More than a batch of notes, so some are written while the file is being read.
        let time = |record: &[u8]| i64::from(u16::from_be_bytes([record[0], record[1]]));
        for n in 0..(2 * BATCH as u16) {
            file.put(format!("k-{n:04}"), n.to_be_bytes().to_vec())
                .expect("put");
        }
        file.try_for_each_noting_expiry(|_, record| {
            Ok::<_, SpillError>(Some(time(record)).filter(|at| at % 2 == 0))
        })
        .expect("every record");
        let removed = file
            .expire_before(2_000, usize::MAX, |record| {
                Ok::<_, SpillError>(time(record) < 2_000)
            })
            .expect("expire");
        assert_eq!(removed.len(), 1_000);
        assert!(removed
            .iter()
            .all(|key| key.ends_with(['0', '2', '4', '6', '8'])));
        assert_eq!(file.get("k-0001").expect("get"), Some(vec![0, 1]));
    }
}
