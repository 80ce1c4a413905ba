//! Given a partition whose command uses left memory (decision 0015), when a command or an event
//! of one comes, then the same as if they had stayed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use domain::inventory::InventoryEvent;
use domain::values::{Quantity, Sku};
use platform::log_order::LoserReason;
use schemas::wire::snapshots::Snapshot;

use super::tests::{event, given, given_with_a_minute_window, now, probes, snapshot_of, Given};
use super::{Judged, LeavingUse};

/// What each probe is decided as.
fn decisions(given: &Given) -> Vec<String> {
    probes()
        .into_iter()
        .map(|probe| format!("{:?}", given.when_one(probe)))
        .collect()
}

/// The uses that left memory, by command id.
fn by_command(leaving: Vec<LeavingUse>) -> HashMap<String, Snapshot> {
    leaving
        .into_iter()
        .map(|used| {
            let id = used.key.trim_start_matches("~command/").to_owned();
            (id, used.record)
        })
        .collect()
}

#[test]
fn a_command_use_let_go_of_and_taken_back_decides_and_judges_as_one_always_held() {
    let mut given = given()
        .stock_added(5, "first", Some("hash-a"))
        .stock_added(3, "second", None);
    snapshot_of(&mut given);
    let held = decisions(&given);
    let mut kept = by_command(given.model.spill_commands());
    assert_eq!(kept.len(), 2);
    assert!(!given.model.holds_command("first"));
    assert_eq!(given.model.resident_command_uses(), 0);
    // The writer gives back the use of each command it decides (the probes' ids).
    for probe in ["first", "third", "fourth", "fifth"] {
        if let Some(record) = kept.remove(probe) {
            given.model.take_back_command(record).unwrap();
        }
    }
    assert!(given.model.holds_command("first"));
    assert_eq!(decisions(&given), held);

    // And an event of a command whose use was given back is judged a repeat, as before (the
    // head is the second command's: the first's cannot continue).
    let repeat = event(3, given.last_event, "first", None);
    let payload = schemas::encode(&InventoryEvent::StockAdded {
        sku: Sku::try_from("apple").unwrap(),
        quantity: Quantity::try_from(1).unwrap(),
    })
    .unwrap();
    assert_eq!(
        given.model.judge(
            given.next_offset,
            &repeat,
            Some(&payload),
            Some(now().timestamp_millis())
        ),
        Judged::Rejected(LoserReason::RepeatedCommand)
    );
}

#[test]
fn only_a_command_use_a_committed_restore_point_holds_leaves_memory() {
    let mut given = given().stock_added(5, "first", None);
    assert!(
        given.model.spill_commands().is_empty(),
        "no snapshot holds it"
    );
    let _aborted = given.model.snapshot_records(given.next_offset);
    assert!(
        given.model.spill_commands().is_empty(),
        "that snapshot did not commit"
    );
    let plan = given.model.aggregates_plan();
    given.model.plan_committed(&plan);
    assert!(
        given.model.spill_commands().is_empty(),
        "a snapshot of the aggregates alone does not write command uses"
    );
    snapshot_of(&mut given);
    let leaving = given.model.spill_commands();
    assert_eq!(leaving.len(), 1);
    assert_eq!(leaving[0].key, "~command/first");
    assert_eq!(leaving[0].used_at, now().timestamp_millis());
    assert_eq!(given.model.resident_command_uses(), 0);
}

#[test]
fn a_use_the_file_forgot_is_deleted_by_the_next_snapshot() {
    let two_minutes_ago = now() - chrono::Duration::minutes(2);
    let mut given = given_with_a_minute_window().stock_added_at(two_minutes_ago, 1, "old", None);
    snapshot_of(&mut given);
    let leaving = given.model.spill_commands();
    assert_eq!(leaving.len(), 1);
    let mut given = given.stock_added(1, "new", None);
    assert!(
        given.model.oldest_remembered_use() > leaving[0].used_at,
        "the window has passed the use"
    );
    given
        .model
        .forgotten_in_file(leaving.into_iter().map(|used| used.key));
    let records = snapshot_of(&mut given);
    let commands: Vec<(&str, bool)> = records
        .iter()
        .filter(|(key, _)| key.starts_with("~command/"))
        .map(|(key, record)| (key.as_str(), record.is_some()))
        .collect();
    assert!(commands.contains(&("~command/old", false)), "{commands:?}");
    assert!(commands.contains(&("~command/new", true)), "{commands:?}");
}

#[test]
fn a_use_the_window_forgot_while_its_snapshot_was_in_flight_is_deleted_by_the_next() {
    // A batch takes its snapshot before it is planned, and its own events, judged before the
    // commit, can move the clock past a use that snapshot writes.
    let two_minutes_ago = now() - chrono::Duration::minutes(2);
    let given = given_with_a_minute_window().stock_added_at(two_minutes_ago, 1, "old", None);
    let mut given = given;
    let taken = given.model.snapshot_records(given.next_offset);
    assert!(taken
        .records
        .iter()
        .any(|(key, r)| key == "~command/old" && r.is_some()));
    let mut given = given.stock_added(1, "new", None);
    given.model.snapshot_committed(&taken);
    let next = snapshot_of(&mut given);
    assert!(
        next.iter()
            .any(|(key, r)| key == "~command/old" && r.is_none()),
        "{next:?}"
    );
}
