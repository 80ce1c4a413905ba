//! Finished sagas on local disk (decision 0011), so a worker's memory holds the sagas in
//! flight, not every saga its partition ever ran.
//!
//! A finished saga is not gone for good: an approved order may still be cancelled (the saga
//! releases what it reserved) and a rejected saga still releases a reservation that arrives
//! late. So a worker keeps what such an event needs, the saga's state and the chain heads of
//! the order and the saga (to judge the event by the log-order rule), in a file of its own,
//! and takes them back before it judges the next event of that order or saga.
//!
//! The file is a cache of what the worker folded, never a source of truth: each worker
//! starts one empty (from the writers' snapshots or the events) and unlinks it as soon as it
//! is open, so it is gone with the worker however the worker ends, nothing is read across
//! restarts and nothing needs fsync. Settled sagas are written in
//! batches, and found in the batch until it is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use command_bus::snapshots::{chain_head, head_record};
use domain::saga::{OrderSagaAggregate, SagaState};
use domain::{Current, Version};
use platform::log_order::ChainHead;
use redb::backends::FileBackend;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use schemas::wire::snapshots::Snapshot;

/// Each saga's state and its chain head, as a snapshot record of the saga writer holds them.
const SAGAS: TableDefinition<&str, &[u8]> = TableDefinition::new("sagas");
/// The chain head of each settled saga's order (a record without state).
const ORDER_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("order_heads");

/// redb's page cache per worker (its default is 1 GiB): lookups are rare (an event of a
/// finished saga), so a small cache costs little.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Settled sagas held before they are written, in one transaction.
const BATCH: usize = 1024;

/// What a worker keeps of a finished saga.
#[derive(Debug, Clone)]
pub(crate) struct SettledSaga {
    pub(crate) current: Current<OrderSagaAggregate>,
    pub(crate) saga_head: ChainHead,
    pub(crate) order_head: Option<ChainHead>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SettledError {
    #[error("settled sagas file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settled sagas file: {0}")]
    Database(#[from] redb::Error),
    #[error("settled saga record: {0}")]
    Record(#[from] schemas::DecodeError),
    #[error("settled saga record: {0}")]
    Encode(#[from] schemas::EncodeError),
    #[error("settled saga record of {0} is not a saga's")]
    Foreign(String),
}

/// A worker's settled sagas.
pub(crate) struct Settled {
    db: Database,
    path: PathBuf,
    /// Encoded, not yet written: the saga record and the order head record.
    batch: HashMap<String, (Vec<u8>, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settled")
            .field("path", &self.path)
            .field("batch", &self.batch.len())
            .finish()
    }
}

impl Settled {
    /// An empty file of settled sagas in `dir` (created if missing), for partition `partition`.
    pub(crate) fn create(dir: &Path, partition: i32) -> Result<Self, SettledError> {
        let open_error = |source| SettledError::Open {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_error)?;
        let path = dir.join(format!(
            "settled-sagas-p{partition}-{}.redb",
            uuid::Uuid::new_v4()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(open_error)?;
        // Unlinked at once: the open file is all there is, so a worker killed with its process
        // (SIGKILL, out of memory) leaves nothing behind in the volume.
        std::fs::remove_file(&path).map_err(open_error)?;
        let backend = FileBackend::new(file).map_err(redb::Error::from)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(redb::Error::from)?;
        let settled = Self {
            db,
            path,
            batch: HashMap::new(),
        };
        // Both tables exist from the start: a lookup before the first batch finds nothing in
        // them rather than failing on a missing table.
        let write = settled.db.begin_write().map_err(redb::Error::from)?;
        write.open_table(SAGAS).map_err(redb::Error::from)?;
        write.open_table(ORDER_HEADS).map_err(redb::Error::from)?;
        write.commit().map_err(redb::Error::from)?;
        Ok(settled)
    }

    /// Keeps a finished saga (written with the next batch).
    pub(crate) fn put(&mut self, saga_id: String, saga: &SettledSaga) -> Result<(), SettledError> {
        let state = match &saga.current.state {
            SagaState::Running(saga) => Some(saga.clone()),
            SagaState::NotStarted => None,
        };
        let record = schemas::encode(&Snapshot::OrderSaga(
            head_record(&saga_id, &saga.saga_head, false),
            state,
        ))?;
        let order = saga
            .order_head
            .as_ref()
            .map(|head| schemas::encode(&Snapshot::Order(head_record(&saga_id, head, false), None)))
            .transpose()?;
        self.batch.insert(saga_id, (record, order));
        if self.batch.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// The settled saga `saga_id`, if it is one. It stays in the file: a worker takes it back
    /// into memory and puts it again once it has finished again.
    pub(crate) fn get(&self, saga_id: &str) -> Result<Option<SettledSaga>, SettledError> {
        if let Some((record, order)) = self.batch.get(saga_id) {
            return decode(saga_id, record, order.as_deref()).map(Some);
        }
        let read = self.db.begin_read().map_err(redb::Error::from)?;
        let sagas = read.open_table(SAGAS).map_err(redb::Error::from)?;
        let Some(record) = sagas.get(saga_id).map_err(redb::Error::from)? else {
            return Ok(None);
        };
        let orders = read.open_table(ORDER_HEADS).map_err(redb::Error::from)?;
        let order = orders.get(saga_id).map_err(redb::Error::from)?;
        decode(saga_id, record.value(), order.as_ref().map(|o| o.value())).map(Some)
    }

    /// Writes the batch, in one transaction (not made durable: see the module doc).
    pub(crate) fn flush(&mut self) -> Result<(), SettledError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut write = self.db.begin_write().map_err(redb::Error::from)?;
        write
            .set_durability(Durability::None)
            .map_err(redb::Error::from)?;
        {
            let mut sagas = write.open_table(SAGAS).map_err(redb::Error::from)?;
            let mut orders = write.open_table(ORDER_HEADS).map_err(redb::Error::from)?;
            for (saga_id, (record, order)) in &self.batch {
                sagas
                    .insert(saga_id.as_str(), record.as_slice())
                    .map_err(redb::Error::from)?;
                match order {
                    Some(order) => orders.insert(saga_id.as_str(), order.as_slice()),
                    None => orders.remove(saga_id.as_str()),
                }
                .map_err(redb::Error::from)?;
            }
        }
        write.commit().map_err(redb::Error::from)?;
        self.batch.clear();
        Ok(())
    }
}

fn decode(saga_id: &str, record: &[u8], order: Option<&[u8]>) -> Result<SettledSaga, SettledError> {
    let Snapshot::OrderSaga(head, state) = schemas::decode::<Snapshot>(record)? else {
        return Err(SettledError::Foreign(saga_id.to_owned()));
    };
    let order_head = match order.map(schemas::decode::<Snapshot>).transpose()? {
        Some(Snapshot::Order(head, _)) => Some(chain_head(&head)),
        Some(_) => return Err(SettledError::Foreign(saga_id.to_owned())),
        None => None,
    };
    Ok(SettledSaga {
        current: Current {
            state: state.map_or(SagaState::NotStarted, SagaState::Running),
            version: Version::new(head.version),
        },
        saga_head: chain_head(&head),
        order_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::saga::{Hold, OrderSaga, SagaPhase};
    use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};

    fn head(version: u64) -> ChainHead {
        ChainHead {
            version: Version::new(version),
            event_id: uuid::Uuid::new_v4(),
            command_id: uuid::Uuid::new_v4().to_string(),
            offset: 41,
        }
    }

    fn approved(order: u128) -> SettledSaga {
        let usd = Currency::try_from("USD").expect("a currency");
        let line = domain::order::OrderLine {
            sku: Sku::try_from("apple").expect("a sku"),
            quantity: Quantity::try_from(2).expect("a quantity"),
            unit_price: Money::new(150, usd).expect("a price"),
        };
        SettledSaga {
            current: Current {
                state: SagaState::Running(OrderSaga {
                    order_id: OrderId::from_uuid(uuid::Uuid::from_u128(order)),
                    customer_id: CustomerId::try_from("c-1").expect("a customer"),
                    lines: vec![line],
                    total: Money::new(300, usd).expect("a total"),
                    stock: vec![Hold::Held],
                    credit: Hold::Held,
                    phase: SagaPhase::Approved,
                }),
                version: Version::new(7),
            },
            saga_head: head(7),
            order_head: Some(head(2)),
        }
    }

    /// What a settled saga holds, comparable.
    fn held(
        saga: Option<SettledSaga>,
    ) -> Option<(SagaState, Version, ChainHead, Option<ChainHead>)> {
        saga.map(|s| {
            (
                s.current.state,
                s.current.version,
                s.saga_head,
                s.order_head,
            )
        })
    }

    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("settled-test-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn a_new_file_holds_no_saga() {
        let settled = Settled::create(&dir(), 2).expect("a store");
        assert!(settled.get("s-1").expect("get").is_none());
    }

    #[test]
    fn a_settled_saga_comes_back_as_it_was_put_before_and_after_its_batch_is_written() {
        let mut settled = Settled::create(&dir(), 3).expect("a store");
        let saga = approved(1);
        settled.put("s-1".into(), &saga).expect("put");
        assert_eq!(
            held(settled.get("s-1").expect("get")),
            held(Some(saga.clone()))
        );
        settled.flush().expect("flush");
        assert_eq!(held(settled.get("s-1").expect("get")), held(Some(saga)));
        assert!(settled.get("s-2").expect("get").is_none());
    }

    #[test]
    fn a_saga_settled_again_replaces_what_was_kept_of_it() {
        let mut settled = Settled::create(&dir(), 0).expect("a store");
        settled.put("s-1".into(), &approved(1)).expect("put");
        settled.flush().expect("flush");
        let mut again = approved(1);
        // A saga's version is its chain head's.
        again.current.version = Version::new(11);
        again.saga_head = head(11);
        again.order_head = None;
        settled.put("s-1".into(), &again).expect("put");
        settled.flush().expect("flush");
        assert_eq!(held(settled.get("s-1").expect("get")), held(Some(again)));
    }

    #[test]
    fn a_full_batch_is_written_without_a_flush_to_a_file_no_one_else_can_see() {
        let dir = dir();
        let mut settled = Settled::create(&dir, 1).expect("a store");
        for n in 0..=BATCH {
            settled
                .put(format!("s-{n}"), &approved(n as u128))
                .expect("put");
        }
        assert!(settled.batch.len() < BATCH);
        assert_eq!(
            settled.get("s-0").expect("get").map(|s| s.saga_head.offset),
            Some(41)
        );
        let left: Vec<_> = std::fs::read_dir(&dir).expect("the directory").collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
