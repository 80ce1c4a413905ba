//! Rows a rebuild has written, kept in memory so its batches need not read them back.
//!
//! Only a rebuild uses it: its generation table is new and empty, and the rebuild's runner is
//! its only writer until the switch (operators act on the live generation), so what it wrote is
//! exactly what the table holds. While nothing was ever evicted the cache is *complete*: a row
//! it lacks does not exist, and a batch reads nothing at all. Past its capacity it is emptied
//! and becomes a plain cache (misses are read from the table). Any failed batch empties it too,
//! since a failed commit may or may not have happened.

use std::collections::HashMap;

/// Rows by aggregate id, as last committed by this applier.
#[derive(Debug)]
pub(super) struct RowCache<R> {
    rows: HashMap<String, R>,
    complete: bool,
    capacity: usize,
}

impl<R: Clone> RowCache<R> {
    /// A cache for a table that starts empty.
    pub(super) fn for_empty_table(capacity: usize) -> Self {
        Self {
            rows: HashMap::new(),
            complete: true,
            capacity,
        }
    }

    /// The cached rows among `ids`, and the ids that must be read from the table (none while the
    /// cache is complete).
    pub(super) fn lookup(&self, ids: &[String]) -> (HashMap<String, R>, Vec<String>) {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.rows.get(id) {
                Some(row) => {
                    found.insert(id.clone(), row.clone());
                }
                None if self.complete => {}
                None => missing.push(id.clone()),
            }
        }
        (found, missing)
    }

    /// Records rows a committed batch wrote.
    pub(super) fn committed(&mut self, rows: impl IntoIterator<Item = (String, R)>) {
        self.rows.extend(rows);
        if self.rows.len() > self.capacity {
            self.forget();
        }
    }

    /// Forgets everything; misses are read from the table from now on.
    pub(super) fn forget(&mut self) {
        self.rows.clear();
        self.complete = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_complete_cache_reads_nothing_and_knows_absent_rows() {
        let mut cache = RowCache::for_empty_table(10);
        cache.committed([("a".to_owned(), 1)]);
        let (found, missing) = cache.lookup(&ids(&["a", "b"]));
        assert_eq!(found.get("a"), Some(&1));
        assert!(!found.contains_key("b"));
        assert!(missing.is_empty());
    }

    #[test]
    fn past_its_capacity_it_empties_and_reads_misses_from_the_table() {
        let mut cache = RowCache::for_empty_table(2);
        cache.committed([
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 3),
        ]);
        let (found, missing) = cache.lookup(&ids(&["a", "c"]));
        assert!(found.is_empty());
        assert_eq!(missing, ids(&["a", "c"]));
        cache.committed([("a".to_owned(), 4)]);
        let (found, missing) = cache.lookup(&ids(&["a", "c"]));
        assert_eq!(found.get("a"), Some(&4));
        assert_eq!(missing, ids(&["c"]));
    }

    #[test]
    fn after_a_failed_batch_every_row_is_read_from_the_table() {
        let mut cache = RowCache::for_empty_table(10);
        cache.committed([("a".to_owned(), 1)]);
        cache.forget();
        let (found, missing) = cache.lookup(&ids(&["a"]));
        assert!(found.is_empty());
        assert_eq!(missing, ids(&["a"]));
    }
}
