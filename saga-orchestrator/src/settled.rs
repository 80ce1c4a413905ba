//! Finished sagas on local disk (decision 0011), so a worker's memory holds the sagas in
//! flight, not every saga its partition ever ran.
//!
//! A finished saga is not gone for good: an approved order may still be cancelled (the saga
//! releases what it reserved) and a rejected saga still releases a reservation that arrives
//! late. So a worker keeps what such an event needs, the saga's state and the chain heads of
//! the order and the saga (to judge the event by the log-order rule), in a file of its own,
//! and takes them back before it judges the next event of that order or saga.
//!
//! The file is a `platform::spill` file: a cache of what the worker folded, never a source of
//! truth, gone with the worker however it ends.
//!
//! It keeps the command uses the log-order rule remembers too (decision 0015): the worker moves
//! them out of memory every tick, takes one back before it judges an event of that command, and
//! the file forgets them when the window passes.

use std::path::Path;

use command_bus::snapshots::{chain_head, command_use, head_record, recorded, use_stamped_before};
use domain::saga::{OrderSagaAggregate, SagaState};
use domain::{Current, Version};
use platform::log_order::{ChainHead, RecordedCommand};
use platform::spill::{SpillError, SpillFile};
use schemas::wire::snapshots::Snapshot;

/// The key of each saga's state and chain head (a snapshot record as the saga writer holds it).
fn saga_key(saga_id: &str) -> String {
    format!("saga/{saga_id}")
}

/// The key of the chain head of a settled saga's order (a record without state).
fn order_key(saga_id: &str) -> String {
    format!("order/{saga_id}")
}

/// The key of a command use read from topic `source` (`orders` or `sagas`: each topic's log
/// order remembers its own).
fn use_key(source: &str, command_id: &str) -> String {
    format!("use/{source}/{command_id}")
}

/// What a worker keeps of a finished saga.
#[derive(Debug, Clone)]
pub(crate) struct SettledSaga {
    pub(crate) current: Current<OrderSagaAggregate>,
    pub(crate) saga_head: ChainHead,
    pub(crate) order_head: Option<ChainHead>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SettledError {
    #[error("settled sagas: {0}")]
    File(#[from] SpillError),
    #[error("settled saga record: {0}")]
    Record(#[from] schemas::DecodeError),
    #[error("settled saga record: {0}")]
    Encode(#[from] schemas::EncodeError),
    #[error("settled saga record of {0} is not a saga's")]
    Foreign(String),
}

/// A worker's settled sagas.
#[derive(Debug)]
pub(crate) struct Settled {
    file: SpillFile,
}

impl Settled {
    /// An empty file of settled sagas in `dir` (created if missing), for partition `partition`.
    pub(crate) fn create(dir: &Path, partition: i32) -> Result<Self, SettledError> {
        let file = SpillFile::create(dir, &format!("settled-sagas-p{partition}"))?;
        Ok(Self { file })
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
        match order {
            Some(order) => self.file.put(order_key(&saga_id), order)?,
            None => self.file.remove(order_key(&saga_id))?,
        }
        self.file.put(saga_key(&saga_id), record)?;
        Ok(())
    }

    /// The settled saga `saga_id`, if it is one. It stays in the file: a worker takes it back
    /// into memory and puts it again once it has finished again.
    pub(crate) fn get(&self, saga_id: &str) -> Result<Option<SettledSaga>, SettledError> {
        let Some(record) = self.file.get(&saga_key(saga_id))? else {
            return Ok(None);
        };
        let order = self.file.get(&order_key(saga_id))?;
        decode(saga_id, &record, order.as_deref()).map(Some)
    }

    /// Keeps a command use of topic `source`, to be forgotten once the window has passed it.
    pub(crate) fn put_use(
        &mut self,
        source: &str,
        command_id: &str,
        used: &RecordedCommand,
    ) -> Result<(), SettledError> {
        let record = schemas::encode(&Snapshot::CommandUse(command_use(command_id, used)))?;
        self.file
            .put_expiring(use_key(source, command_id), record, used.used_at)?;
        Ok(())
    }

    /// Keeps a command use as a writer's snapshot holds it (`record`, a `CommandUse`), read
    /// from topic `source`.
    pub(crate) fn put_use_record(
        &mut self,
        source: &str,
        command_id: &str,
        record: &[u8],
    ) -> Result<(), SettledError> {
        let Snapshot::CommandUse(used) = schemas::decode::<Snapshot>(record)? else {
            return Err(SettledError::Foreign(command_id.to_owned()));
        };
        // Kept as the snapshot encoded it.
        self.file
            .put_expiring(use_key(source, command_id), record.to_vec(), used.used_at)?;
        Ok(())
    }

    /// The use of `command_id` in topic `source`, if the file holds one. It stays in the file.
    pub(crate) fn get_use(
        &self,
        source: &str,
        command_id: &str,
    ) -> Result<Option<RecordedCommand>, SettledError> {
        let Some(record) = self.file.get(&use_key(source, command_id))? else {
            return Ok(None);
        };
        match schemas::decode::<Snapshot>(&record)? {
            Snapshot::CommandUse(used) => Ok(Some(recorded(used))),
            _ => Err(SettledError::Foreign(command_id.to_owned())),
        }
    }

    /// Forgets the uses stamped before `before` (at most `most` of them); how many it forgot.
    pub(crate) fn forget_uses_before(
        &mut self,
        before: i64,
        most: usize,
    ) -> Result<usize, SettledError> {
        let forgotten = self.file.expire_before(before, most, |record| {
            Ok::<_, SettledError>(use_stamped_before(record, before)?)
        })?;
        Ok(forgotten.len())
    }

    /// Writes what is held, in one transaction (not made durable: see `platform::spill`).
    #[cfg(test)]
    pub(crate) fn flush(&mut self) -> Result<(), SettledError> {
        Ok(self.file.flush()?)
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

    fn dir() -> std::path::PathBuf {
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

    fn used_at(at: i64) -> RecordedCommand {
        RecordedCommand {
            aggregate_id: "s-1".into(),
            version: Version::new(3),
            event_types: vec!["StockReserved".into()],
            offsets: vec![12],
            request_hash: None,
            used_at: at,
        }
    }

    #[test]
    fn a_command_use_comes_back_as_it_was_kept_for_its_own_topic_only() {
        let mut settled = Settled::create(&dir(), 1).expect("a store");
        settled.put_use("sagas", "c-1", &used_at(5)).expect("put");
        assert_eq!(
            settled.get_use("sagas", "c-1").expect("get"),
            Some(used_at(5))
        );
        assert_eq!(
            settled.get_use("orders", "c-1").expect("get"),
            None,
            "each topic's log order remembers its own uses"
        );
        assert!(
            settled.get("c-1").expect("get").is_none(),
            "a use is no saga"
        );
    }

    #[test]
    fn the_file_forgets_the_uses_stamped_before_the_window() {
        let mut settled = Settled::create(&dir(), 1).expect("a store");
        settled.put_use("orders", "old", &used_at(5)).expect("put");
        settled.put_use("sagas", "new", &used_at(50)).expect("put");
        settled.put("s-1".into(), &approved(1)).expect("put");
        assert_eq!(settled.forget_uses_before(10, 100).expect("forget"), 1);
        assert_eq!(settled.get_use("orders", "old").expect("get"), None);
        assert!(settled.get_use("sagas", "new").expect("get").is_some());
        assert!(
            settled.get("s-1").expect("get").is_some(),
            "settled sagas are never forgotten"
        );
    }
}
