//! Given a partition's history, when a command arrives, then this plan: every rule of the write
//! path without a broker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, TimeZone, Utc};
use domain::inventory::{InventoryCommand, InventoryEvent, InventoryItem};
use domain::values::{OrderId, Quantity, Sku};
use domain::{AggregateKind, Version};
use platform::envelope::{Actor, CommandEnvelope, EventEnvelope, Trace};
use platform::partitioner::partition_for;
use schemas::{CommandReply, RejectionCode, ReplyOutcome};
use uuid::Uuid;

use schemas::wire::snapshots::Snapshot;

use super::{Batch, Inputs, Judged, PartitionModel, Plan};
use crate::processor::IncomingCommand;

const PARTITIONS: i32 = 3;
const SKU: &str = "apple";

pub(super) fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap()
}

/// A partition and the history it has read.
pub(super) struct Given {
    pub(super) model: PartitionModel<InventoryItem>,
    pub(super) next_offset: i64,
    pub(super) last_event: Option<Uuid>,
    version: u64,
    /// Every record read: (offset, envelope, payload, timestamp), to replay into another model.
    log: Vec<(i64, EventEnvelope, Vec<u8>, i64)>,
}

pub(super) fn given() -> Given {
    Given {
        model: PartitionModel::new(
            partition_for(SKU.as_bytes(), PARTITIONS),
            PARTITIONS,
            Default::default(),
        ),
        next_offset: 0,
        last_event: None,
        version: 0,
        log: Vec::new(),
    }
}

/// [`given`] with a command window of 60 s.
pub(super) fn given_with_a_minute_window() -> Given {
    let window = platform::log_order::CommandWindow::new(std::time::Duration::from_secs(60));
    Given {
        model: PartitionModel::new(
            partition_for(SKU.as_bytes(), PARTITIONS),
            PARTITIONS,
            window,
        ),
        ..given()
    }
}

impl Given {
    /// `StockAdded` for `SKU` by `command_id`, read from the log, stamped `now()`.
    pub(super) fn stock_added(
        self,
        quantity: i64,
        command_id: &str,
        request_hash: Option<&str>,
    ) -> Self {
        self.stock_added_at(now(), quantity, command_id, request_hash)
    }

    /// `StockAdded` for `SKU` by `command_id`, read from the log, stamped `at`.
    pub(super) fn stock_added_at(
        mut self,
        at: DateTime<Utc>,
        quantity: i64,
        command_id: &str,
        request_hash: Option<&str>,
    ) -> Self {
        self.version += 1;
        let mut envelope = event(self.version, self.last_event, command_id, request_hash);
        envelope.occurred_at = at;
        let payload = schemas::encode(&InventoryEvent::StockAdded {
            sku: Sku::try_from(SKU).unwrap(),
            quantity: Quantity::try_from(quantity).unwrap(),
        })
        .unwrap();
        assert_eq!(
            self.model.judge(
                self.next_offset,
                &envelope,
                Some(&payload),
                Some(at.timestamp_millis())
            ),
            Judged::Accepted
        );
        self.log.push((
            self.next_offset,
            envelope.clone(),
            payload,
            at.timestamp_millis(),
        ));
        self.next_offset += 2; // a commit marker follows each transaction
        self.last_event = Some(envelope.event_id);
        self
    }

    /// Decides `commands` as one batch, with the clock at `now()` and ids 1, 2, 3, ...
    fn when(&self, commands: &[IncomingCommand]) -> Vec<Plan> {
        let mut next_id = 0u128;
        let mut new_event_id = || {
            next_id += 1;
            Uuid::from_u128(next_id)
        };
        let mut inputs = Inputs {
            now: now(),
            new_event_id: &mut new_event_id,
        };
        let mut batch = Batch::default();
        commands
            .iter()
            .enumerate()
            .map(|(index, command)| self.model.decide(&mut batch, index, command, &mut inputs))
            .collect()
    }

    pub(super) fn when_one(&self, command: IncomingCommand) -> Plan {
        self.when(&[command]).pop().unwrap()
    }
}

pub(super) fn event(
    version: u64,
    predecessor: Option<Uuid>,
    command_id: &str,
    hash: Option<&str>,
) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::now_v7(),
        event_type: "StockAdded".into(),
        aggregate_kind: AggregateKind::InventoryItem,
        aggregate_id: SKU.into(),
        version: Version::new(version),
        predecessor,
        command_id: command_id.into(),
        request_hash: hash.map(str::to_owned),
        occurred_at: now(),
        trace: trace(),
    }
}

fn trace() -> Trace {
    Trace {
        correlation_id: "corr".into(),
        causation_id: "cause".into(),
        traceparent: None,
    }
}

/// A command as it arrives on the commands topic, from admin unless changed.
struct Command {
    envelope: CommandEnvelope,
    command: InventoryCommand,
}

fn add_stock(quantity: i64, command_id: &str) -> Command {
    let sku = Sku::try_from(SKU).unwrap();
    Command {
        envelope: CommandEnvelope {
            command_id: command_id.into(),
            command_type: "AddStock".into(),
            aggregate_id: SKU.into(),
            reply_to: Some("requester".into()),
            reply_ticket: None,
            expected_version: None,
            request_hash: None,
            actor: Actor {
                subject: "operator".into(),
                role: "admin".into(),
            },
            deadline: Some(now() + chrono::Duration::seconds(5)),
            trace: trace(),
        },
        command: InventoryCommand::AddStock {
            sku,
            quantity: Quantity::try_from(quantity).unwrap(),
        },
    }
}

impl Command {
    fn with(mut self, change: impl FnOnce(&mut CommandEnvelope)) -> Self {
        change(&mut self.envelope);
        self
    }

    fn incoming(self) -> IncomingCommand {
        IncomingCommand {
            offset: 0,
            payload: Some(schemas::encode(&self.command).unwrap()),
            envelope: Ok(self.envelope),
        }
    }
}

fn reply(plan: &Plan) -> &CommandReply {
    match plan {
        Plan::Reply(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn refused(plan: &Plan) -> (ReplyOutcome, Option<RejectionCode>) {
    let reply = reply(plan);
    (reply.outcome, reply.code)
}

#[test]
fn an_accepted_command_appends_events_that_extend_the_chain() {
    let given = given().stock_added(5, "first", None);
    let plan = given.when_one(add_stock(2, "second").incoming());
    let Plan::Append {
        aggregate_id,
        version,
        events,
    } = plan
    else {
        panic!("expected an append, got {plan:?}");
    };
    assert_eq!((aggregate_id.as_str(), version.get()), (SKU, 2));
    let [event] = events.as_slice() else {
        panic!("one event: {events:?}")
    };
    assert_eq!(event.envelope.version.get(), 2);
    assert_eq!(event.envelope.predecessor, given.last_event);
    assert_eq!(event.envelope.event_id, Uuid::from_u128(1));
    assert_eq!(event.envelope.occurred_at, now());
    assert_eq!(event.envelope.command_id, "second");
    assert_eq!(event.envelope.event_type, "StockAdded");
}

#[test]
fn the_next_command_of_a_batch_builds_on_the_one_before() {
    let given = given().stock_added(5, "first", None);
    let plans = given.when(&[
        add_stock(1, "second").incoming(),
        add_stock(1, "third").incoming(),
    ]);
    let chain: Vec<(u64, Option<Uuid>, Uuid)> = plans
        .iter()
        .flat_map(|plan| match plan {
            Plan::Append { events, .. } => events
                .iter()
                .map(|e| {
                    (
                        e.envelope.version.get(),
                        e.envelope.predecessor,
                        e.envelope.event_id,
                    )
                })
                .collect::<Vec<_>>(),
            other => panic!("expected appends, got {other:?}"),
        })
        .collect();
    assert_eq!(
        chain,
        [
            (2, given.last_event, Uuid::from_u128(1)),
            (3, Some(Uuid::from_u128(1)), Uuid::from_u128(2))
        ]
    );
}

#[test]
fn a_command_the_log_already_holds_is_answered_with_its_outcome_and_appends_nothing() {
    let given = given().stock_added(5, "first", Some("hash-a"));
    let plan = given.when_one(
        add_stock(5, "first")
            .with(|e| e.request_hash = Some("hash-a".into()))
            .incoming(),
    );
    let reply = reply(&plan);
    assert_eq!((reply.outcome, reply.version), (ReplyOutcome::Accepted, 1));
    assert_eq!(reply.positions.len(), 1);
    assert_eq!(reply.positions[0].offset, 0);
    assert_eq!(reply.event_types, ["StockAdded"]);
}

#[test]
fn a_command_the_log_holds_from_before_the_window_is_a_new_command() {
    // The default window is a day; the partition's clock has not moved since, but the writer
    // decides at `now`, and its event will be judged at a clock of at least `now`.
    let a_day_ago = now() - chrono::Duration::hours(24) - chrono::Duration::milliseconds(1);
    let given = given().stock_added_at(a_day_ago, 5, "first", Some("hash-a"));
    let plan = given.when_one(
        add_stock(5, "first")
            .with(|e| e.request_hash = Some("hash-a".into()))
            .incoming(),
    );
    let Plan::Append { version, .. } = plan else {
        panic!("expected an append, got {plan:?}");
    };
    assert_eq!(version.get(), 2);
}

#[test]
fn a_key_reused_with_another_request_is_refused() {
    let given = given().stock_added(5, "first", Some("hash-a"));
    let plan = given.when_one(
        add_stock(7, "first")
            .with(|e| e.request_hash = Some("hash-b".into()))
            .incoming(),
    );
    assert_eq!(
        refused(&plan),
        (
            ReplyOutcome::Rejected,
            Some(RejectionCode::IdempotencyKeyReused)
        )
    );
}

#[test]
fn a_second_copy_in_the_same_batch_gets_the_first_copys_answer() {
    let given = given();
    let plans = given.when(&[
        add_stock(1, "same").incoming(),
        add_stock(1, "same").incoming(),
    ]);
    assert!(matches!(plans[0], Plan::Append { .. }));
    assert!(matches!(plans[1], Plan::SameAs(0)));
}

#[test]
fn a_copy_past_its_deadline_leaves_a_later_copy_in_the_batch_to_be_decided() {
    // The first attempt expired in a backlog; its retry, whose requester still waits, is in
    // the same batch: it must not be told "expired" for a copy that was not its own.
    let given = given();
    let plans = given.when(&[
        add_stock(1, "same")
            .with(|e| e.deadline = Some(now() - chrono::Duration::milliseconds(1)))
            .incoming(),
        add_stock(1, "same").incoming(),
    ]);
    assert_eq!(
        refused(&plans[0]),
        (ReplyOutcome::Unavailable, Some(RejectionCode::Expired))
    );
    assert!(matches!(plans[1], Plan::Append { .. }), "{:?}", plans[1]);
}

#[test]
fn a_key_reused_with_another_request_in_the_same_batch_is_refused() {
    let given = given();
    let plans = given.when(&[
        add_stock(1, "same")
            .with(|e| e.request_hash = Some("hash-a".into()))
            .incoming(),
        add_stock(9, "same")
            .with(|e| e.request_hash = Some("hash-b".into()))
            .incoming(),
    ]);
    assert!(matches!(plans[0], Plan::Append { .. }));
    assert_eq!(
        refused(&plans[1]),
        (
            ReplyOutcome::Rejected,
            Some(RejectionCode::IdempotencyKeyReused)
        )
    );
}

#[test]
fn a_command_past_its_deadline_appends_nothing() {
    let given = given();
    let plan = given.when_one(
        add_stock(1, "late")
            .with(|e| e.deadline = Some(now() - chrono::Duration::milliseconds(1)))
            .incoming(),
    );
    assert_eq!(
        refused(&plan),
        (ReplyOutcome::Unavailable, Some(RejectionCode::Expired))
    );
}

#[test]
fn a_command_for_an_aggregate_of_another_partition_is_misrouted() {
    let other = (0..100)
        .map(|n| format!("sku-{n}"))
        .find(|sku| partition_for(sku.as_bytes(), PARTITIONS) != given().model.partition())
        .unwrap();
    let mut command = add_stock(1, "elsewhere").with(|e| e.aggregate_id = other.clone());
    command.command = InventoryCommand::AddStock {
        sku: Sku::try_from(other.as_str()).unwrap(),
        quantity: Quantity::try_from(1).unwrap(),
    };
    let plan = given().when_one(command.incoming());
    assert_eq!(
        refused(&plan),
        (ReplyOutcome::Rejected, Some(RejectionCode::Misrouted))
    );
}

#[test]
fn a_command_whose_key_names_another_aggregate_is_misrouted() {
    let plan = given().when_one(
        add_stock(1, "mismatch")
            .with(|e| e.aggregate_id = "pear".into())
            .incoming(),
    );
    assert_eq!(
        refused(&plan),
        (ReplyOutcome::Rejected, Some(RejectionCode::Misrouted))
    );
}

#[test]
fn an_actor_without_the_right_role_is_forbidden() {
    let plan = given().when_one(
        add_stock(1, "customer")
            .with(|e| {
                e.actor = Actor {
                    subject: "ada".into(),
                    role: "customer".into(),
                }
            })
            .incoming(),
    );
    assert_eq!(
        refused(&plan),
        (ReplyOutcome::Forbidden, Some(RejectionCode::Forbidden))
    );
}

#[test]
fn a_stale_if_match_is_a_conflict_at_the_current_version() {
    let given = given().stock_added(5, "first", None);
    let plan = given.when_one(
        add_stock(1, "stale")
            .with(|e| e.expected_version = Some(Version::NONE))
            .incoming(),
    );
    assert_eq!(
        refused(&plan),
        (ReplyOutcome::Conflict, Some(RejectionCode::VersionConflict))
    );
    assert_eq!(reply(&plan).version, 1);
}

#[test]
fn a_domain_rejection_is_answered_with_its_code() {
    let mut command = add_stock(1, "reserve");
    command.command = InventoryCommand::ReserveStock {
        sku: Sku::try_from(SKU).unwrap(),
        order_id: OrderId::try_from(Uuid::now_v7().to_string().as_str()).unwrap(),
        quantity: Quantity::try_from(1).unwrap(),
    };
    let plan = given().when_one(command.incoming());
    assert_eq!(
        refused(&plan),
        (ReplyOutcome::Rejected, Some(RejectionCode::NotFound))
    );
}

#[test]
fn a_record_without_a_readable_command_is_invalid() {
    let mut incoming = add_stock(1, "garbled").incoming();
    incoming.payload = Some(vec![0xC3, 0x01, 0, 1, 2]);
    let plan = given().when_one(incoming);
    assert_eq!(
        refused(&plan),
        (ReplyOutcome::Rejected, Some(RejectionCode::InvalidCommand))
    );
}

#[test]
fn an_event_the_log_order_rule_rejects_changes_nothing() {
    let mut given = given().stock_added(5, "first", None);
    let zombie = event(2, None, "zombie", None);
    let payload = schemas::encode(&InventoryEvent::StockAdded {
        sku: Sku::try_from(SKU).unwrap(),
        quantity: Quantity::try_from(1000).unwrap(),
    })
    .unwrap();
    let judged = given.model.judge(2, &zombie, Some(&payload), None);
    assert!(matches!(judged, Judged::Rejected(_)), "{judged:?}");
    assert_eq!(given.model.version_of(SKU), 1);
    assert!(given.model.recorded("zombie").is_none());
}

/// The commands both models are asked: a retry, a reused key, a new command, a stale and a
/// current `If-Match`.
pub(super) fn probes() -> Vec<IncomingCommand> {
    vec![
        add_stock(5, "first")
            .with(|e| e.request_hash = Some("hash-a".into()))
            .incoming(),
        add_stock(7, "first")
            .with(|e| e.request_hash = Some("hash-b".into()))
            .incoming(),
        add_stock(2, "third").incoming(),
        add_stock(1, "fourth")
            .with(|e| e.expected_version = Some(Version::new(1)))
            .incoming(),
        add_stock(1, "fifth")
            .with(|e| e.expected_version = Some(Version::new(2)))
            .incoming(),
    ]
}

/// A model restored from `records` (a snapshot's, in log order), then fed every record of
/// `source`'s log from the checkpoint on, as a writer taking over reads the events after it.
fn restored_from(source: &Given, records: Vec<(String, Option<Snapshot>)>) -> Given {
    let (mut model, events_end) = PartitionModel::<InventoryItem>::restore(
        source.model.partition(),
        PARTITIONS,
        Default::default(),
        records,
    )
    .unwrap();
    for (offset, envelope, payload, timestamp) in &source.log {
        if *offset >= events_end {
            assert_eq!(
                model.judge(*offset, envelope, Some(payload), Some(*timestamp)),
                Judged::Accepted
            );
        }
    }
    Given {
        model,
        next_offset: source.next_offset,
        last_event: source.last_event,
        version: source.version,
        log: Vec::new(),
    }
}

/// The snapshot records of `given`'s model now, committed.
pub(super) fn snapshot_of(given: &mut Given) -> Vec<(String, Option<Snapshot>)> {
    let taken = given.model.snapshot_records(given.next_offset);
    given.model.snapshot_committed(&taken);
    taken.records
}

#[test]
fn a_model_restored_from_its_snapshot_decides_as_the_model_that_replayed_everything() {
    // Two snapshots, one taken but aborted in between, and a tail after the last checkpoint.
    let mut replayed = given().stock_added(5, "first", Some("hash-a"));
    let mut records = snapshot_of(&mut replayed);
    replayed = replayed.stock_added(3, "second", None);
    let _aborted = replayed.model.snapshot_records(replayed.next_offset);
    replayed = replayed.stock_added(2, "second-b", None);
    records.extend(snapshot_of(&mut replayed));
    let replayed = replayed.stock_added(4, "tail", Some("hash-t"));
    let restored = restored_from(&replayed, records);
    for (probe, copy) in probes().into_iter().zip(probes()) {
        assert_eq!(
            format!("{:?}", restored.when_one(copy)),
            format!("{:?}", replayed.when_one(probe)),
        );
    }
    let tail_retry = || {
        add_stock(4, "tail")
            .with(|e| e.request_hash = Some("hash-t".into()))
            .incoming()
    };
    assert_eq!(
        format!("{:?}", restored.when_one(tail_retry())),
        format!("{:?}", replayed.when_one(tail_retry())),
        "a command replayed after the checkpoint is remembered too"
    );
}

#[test]
fn a_snapshot_built_in_parts_restores_the_model_that_replayed_everything() {
    let mut replayed = given()
        .stock_added(5, "first", Some("hash-a"))
        .stock_added(3, "second", None)
        .stock_added(2, "third", None);
    let plan = replayed.model.snapshot_plan(replayed.next_offset);
    let whole = replayed.model.planned_records(&plan, 0..plan.len());
    let mut parts = Vec::new();
    for start in (0..plan.len()).step_by(2) {
        parts.extend(
            replayed
                .model
                .planned_records(&plan, start..(start + 2).min(plan.len())),
        );
    }
    assert_eq!(format!("{parts:?}"), format!("{whole:?}"));
    assert_eq!(
        parts.len(),
        5,
        "one aggregate, three command uses, the checkpoint"
    );
    assert!(
        matches!(parts.last(), Some((_, Some(Snapshot::Checkpoint(_))))),
        "the checkpoint comes last, in the last part"
    );
    replayed.model.plan_committed(&plan);
    assert!(!replayed.model.has_unsnapshotted_changes());
    let replayed = replayed.stock_added(4, "tail", None);
    let restored = restored_from(&replayed, parts);
    for (probe, copy) in probes().into_iter().zip(probes()) {
        assert_eq!(
            format!("{:?}", restored.when_one(copy)),
            format!("{:?}", replayed.when_one(probe)),
        );
    }
}

#[test]
fn a_snapshot_without_a_checkpoint_or_of_another_format_or_kind_is_refused() {
    use schemas::wire::snapshots::{Checkpoint, CHECKPOINT_KEY};
    let mut source = given().stock_added(5, "first", None);
    let records = snapshot_of(&mut source);
    let restore = |records: Vec<(String, Option<Snapshot>)>| {
        PartitionModel::<InventoryItem>::restore(0, PARTITIONS, Default::default(), records)
            .map(|(_, end)| end)
    };
    let without_checkpoint: Vec<_> = records
        .iter()
        .filter(|(key, _)| key != CHECKPOINT_KEY)
        .cloned()
        .collect();
    assert_eq!(
        restore(without_checkpoint),
        Err(super::snapshot::RestoreError::NoCheckpoint)
    );
    let mut other_format = records.clone();
    other_format.push((
        CHECKPOINT_KEY.to_owned(),
        Some(Snapshot::Checkpoint(Checkpoint {
            format: 999,
            events_end: 1,
            clock: 0,
            window_ms: 86_400_000,
            aggregates: 1,
        })),
    ));
    assert_eq!(
        restore(other_format),
        Err(super::snapshot::RestoreError::Format { found: 999 })
    );
    let mut foreign = records;
    foreign.push((
        "c-1".to_owned(),
        Some(Snapshot::IdempotencyKey(
            schemas::wire::snapshots::Head {
                aggregate_id: "c-1".into(),
                version: 1,
                event_id: Uuid::from_u128(9),
                command_id: "x".into(),
                offset: 0,
                unreadable: false,
            },
            None,
        )),
    ));
    assert!(matches!(
        restore(foreign),
        Err(super::snapshot::RestoreError::ForeignRecord { .. })
    ));
}

#[test]
fn what_changes_after_a_snapshot_was_taken_stays_to_be_written() {
    let mut given = given().stock_added(5, "first", None);
    assert!(given.model.has_unsnapshotted_changes());
    let taken = given.model.snapshot_records(given.next_offset);
    given = given.stock_added(1, "second", None);
    given.model.snapshot_committed(&taken);
    assert!(
        given.model.has_unsnapshotted_changes(),
        "the event judged after the snapshot was taken is not in it"
    );
    let taken = given.model.snapshot_records(given.next_offset);
    given.model.snapshot_committed(&taken);
    assert!(!given.model.has_unsnapshotted_changes());
}

#[test]
fn a_snapshot_missing_an_aggregate_or_judged_with_another_window_is_refused() {
    use super::snapshot::RestoreError;
    let mut source = given().stock_added(5, "first", None);
    let records = snapshot_of(&mut source);
    let lost: Vec<_> = records
        .iter()
        .filter(|(key, _)| key != SKU)
        .cloned()
        .collect();
    let restore = |records, window| {
        PartitionModel::<InventoryItem>::restore(0, PARTITIONS, window, records).map(|(_, e)| e)
    };
    assert_eq!(
        restore(lost, Default::default()),
        Err(RestoreError::Incomplete {
            expected: 1,
            found: 0
        }),
        "a record the broker lost is noticed"
    );
    let hour = platform::log_order::CommandWindow::new(std::time::Duration::from_secs(3600));
    assert!(matches!(
        restore(records, hour),
        Err(RestoreError::Window { .. })
    ));
}

#[test]
fn a_snapshot_holding_an_unreadable_aggregate_is_refused_so_this_build_replays() {
    let mut given = given();
    let envelope = event(1, None, "first", None);
    assert!(matches!(
        given.model.judge(0, &envelope, Some(b"not avro"), Some(0)),
        Judged::Unreadable(_)
    ));
    given.next_offset = 2;
    let records = snapshot_of(&mut given);
    assert!(matches!(
        PartitionModel::<InventoryItem>::restore(0, PARTITIONS, Default::default(), records),
        Err(super::snapshot::RestoreError::Unreadable(_))
    ));
}

#[test]
fn a_command_the_window_forgot_before_any_snapshot_held_it_is_not_deleted() {
    let mut given = given_with_a_minute_window();
    given = given
        .stock_added_at(now() - chrono::Duration::hours(2), 1, "old", None)
        .stock_added(1, "new", None);
    let records = snapshot_of(&mut given);
    let keys: Vec<&str> = records.iter().map(|(key, _)| key.as_str()).collect();
    assert!(
        !keys.iter().any(|k| k.ends_with("/old")),
        "never written, nothing to delete: {keys:?}"
    );
    assert!(keys.iter().any(|k| k.ends_with("/new")), "{keys:?}");
}

#[test]
fn replaying_a_long_log_holds_a_window_of_command_ids_to_snapshot_not_every_one_read() {
    // A takeover replays the log before its first snapshot: what it holds to write must stay a
    // window's worth, or its memory grows with the log (it did: every command id read).
    let mut given = given_with_a_minute_window();
    let start = now() - chrono::Duration::hours(2);
    for minute in 0..100 {
        given = given.stock_added_at(
            start + chrono::Duration::minutes(minute),
            1,
            &format!("c-{minute}"),
            None,
        );
    }
    assert!(
        given.model.commands_to_snapshot() <= 2,
        "{} command ids held for a 60 s window",
        given.model.commands_to_snapshot()
    );
}

/// The records of what `given`'s model lets go of, keeping none.
fn spilled(given: &mut Given) -> Vec<(String, Snapshot)> {
    given.model.spill(0)
}

#[test]
fn an_aggregate_let_go_of_and_taken_back_decides_as_one_always_held() {
    let mut given = given()
        .stock_added(5, "first", Some("hash-a"))
        .stock_added(3, "second", None);
    snapshot_of(&mut given);
    let decisions = |given: &Given| -> Vec<String> {
        probes()
            .into_iter()
            .map(|probe| format!("{:?}", given.when_one(probe)))
            .collect()
    };
    let held = decisions(&given);
    let records = spilled(&mut given);
    assert_eq!(records.len(), 1);
    assert!(!given.model.holds(SKU));
    assert_eq!(given.model.resident(), 0);
    assert_eq!(given.model.chains(), 1, "the partition still has the chain");
    for (_, record) in records {
        given.model.take_back(record).unwrap();
    }
    assert!(given.model.holds(SKU));
    assert_eq!(decisions(&given), held);
    // And the next event read extends the chain it had.
    let given = given.stock_added(1, "third", None);
    assert_eq!(given.model.version_of(SKU), 3);
}

#[test]
fn only_an_aggregate_a_committed_snapshot_holds_as_it_is_leaves_memory() {
    let mut given = given().stock_added(5, "first", None);
    assert!(spilled(&mut given).is_empty(), "no snapshot holds it yet");
    let _aborted = given.model.snapshot_records(given.next_offset);
    assert!(
        spilled(&mut given).is_empty(),
        "that snapshot did not commit"
    );
    let taken = given.model.snapshot_records(given.next_offset);
    let mut given = given.stock_added(2, "after", None);
    given.model.snapshot_committed(&taken);
    assert!(
        spilled(&mut given).is_empty(),
        "it changed after the snapshot was taken"
    );
    snapshot_of(&mut given);
    assert_eq!(given.model.spill(1).len(), 0, "one is kept");
    assert_eq!(spilled(&mut given).len(), 1);
}

#[test]
fn the_checkpoint_counts_the_aggregates_out_of_memory_too() {
    let mut given = given().stock_added(5, "first", None);
    snapshot_of(&mut given);
    spilled(&mut given);
    assert_eq!(given.model.resident(), 0);
    let records = given.model.snapshot_records(given.next_offset).records;
    let checkpoint = records.iter().find_map(|(_, record)| match record {
        Some(Snapshot::Checkpoint(c)) => Some(c.aggregates),
        _ => None,
    });
    assert_eq!(checkpoint, Some(1));
}
