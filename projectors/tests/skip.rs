//! Guarantee 6's way out: `projectors dlq skip` gives up on a dead letter for good. The skip is
//! recorded in `operator_skips` (not as an anomaly) and releases the aggregate: what was parked
//! behind it applies, and so does what comes later. A record whose envelope cannot be read
//! (missing headers), which no redrive can ever apply, is released this way too, and a redrive
//! says so. A rebuild honours every skip: it ends with the live read model's rows, without
//! parking or dead-lettering anything again.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use domain::inventory::InventoryEvent;
use domain::values::{Quantity, Sku};
use domain::AggregateKind;
use platform::envelope::names;
use rdkafka::message::OwnedHeaders;
use support::*;

const KIND: AggregateKind = AggregateKind::InventoryItem;

fn add(sku: &str, n: i64) -> InventoryEvent {
    InventoryEvent::StockAdded {
        sku: Sku::try_from(sku).unwrap(),
        quantity: Quantity::try_from(n).unwrap(),
    }
}

/// `id`'s next event with an envelope that cannot be read (no event id, no timestamp...): it
/// holds its version in the writer's chain, so the event after it names it as predecessor.
async fn garbled(log: &mut EventLog, id: &str, n: i64) -> i64 {
    let event = add(id, n);
    let envelope = log.next_envelope(KIND, id, &event);
    let headers = header(
        header(OwnedHeaders::new(), names::AGGREGATE_ID, id),
        names::VERSION,
        &envelope.version.to_string(),
    );
    let payload = schemas::encode(&event).unwrap();
    log.raw(KIND, Some(id), Some(headers), &payload).await
}

async fn stock(world: &World, sku: &str) -> Option<(i64, i64)> {
    sqlx::query_as("SELECT on_hand, version FROM inventory WHERE sku = $1")
        .bind(sku)
        .fetch_optional(world.pool())
        .await
        .unwrap()
}

async fn count(world: &World, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(world.pool())
        .await
        .unwrap()
}

type InventoryRow = (String, i64, i64, i64, String, String);

async fn inventory_rows(world: &World) -> Vec<InventoryRow> {
    sqlx::query_as(
        "SELECT sku, on_hand, reserved, version, last_event_id::text, updated_at::text \
         FROM inventory ORDER BY sku",
    )
    .fetch_all(world.pool())
    .await
    .unwrap()
}

async fn forbid_stock_over_a_hundred(world: &World) {
    sqlx::query(
        "ALTER TABLE inventory_g1 ADD CONSTRAINT stock_below_a_hundred CHECK (on_hand <= 100)",
    )
    .execute(world.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skipped_dead_letter_is_recorded_for_good_and_its_aggregate_flows_on() {
    let mut world = World::new().await;
    forbid_stock_over_a_hundred(&world).await;
    let live = run_projectors(&world);
    world.log.append(KIND, "apple", add("apple", 10)).await;
    let poison = world.log.append(KIND, "apple", add("apple", 200)).await;
    world.log.append(KIND, "apple", add("apple", 5)).await;
    // A first event can be skipped too: the next one starts the aggregate's row.
    let first = world.log.append(KIND, "melon", add("melon", 500)).await;
    world.log.append(KIND, "melon", add("melon", 5)).await;
    world.caught_up().await;
    assert_eq!(stock(&world, "apple").await, Some((10, 1)));
    assert_eq!(stock(&world, "melon").await, None);

    let topic = world.kafka.topics().events(KIND);
    let (ok, skipped) = skip_dead_letter(&world, &topic, "apple", poison);
    assert!(
        ok && skipped.contains("skipped; 1 parked events applied"),
        "{skipped}"
    );
    assert_eq!(
        stock(&world, "apple").await,
        Some((15, 3)),
        "the skipped event's effect is absent, the parked one applied past its version"
    );
    let (ok, skipped) = skip_dead_letter(&world, &topic, "melon", first);
    assert!(
        ok && skipped.contains("skipped; 1 parked events applied"),
        "{skipped}"
    );
    assert_eq!(stock(&world, "melon").await, Some((5, 2)));

    let recorded = count(
        &world,
        "SELECT count(*) FROM operator_skips WHERE projection = 'inventory' \
         AND reason LIKE '%stock_below_a_hundred%' AND event_id IS NOT NULL",
    )
    .await;
    assert_eq!(recorded, 2, "each skip is recorded with what was skipped");
    assert_eq!(
        count(&world, "SELECT count(*) FROM projection_anomalies").await,
        0,
        "a skip is no anomaly"
    );
    let (ok, again) = skip_dead_letter(&world, &topic, "apple", poison);
    assert!(ok && again.contains("already skipped"), "{again}");

    world.log.append(KIND, "apple", add("apple", 1)).await;
    world.log.append(KIND, "melon", add("melon", 1)).await;
    world.caught_up().await;
    assert_eq!(
        stock(&world, "apple").await,
        Some((16, 4)),
        "it flows again"
    );
    assert_eq!(stock(&world, "melon").await, Some((6, 3)));
    assert_eq!(
        count(&world, "SELECT count(*) FROM parked_aggregates").await,
        0
    );
    live.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_envelope_parks_its_aggregate_until_skipped_then_later_events_apply() {
    let mut world = World::new().await;
    let live = run_projectors(&world);
    // pear: a stray record with no headers at all between two events that chain directly.
    world.log.append(KIND, "pear", add("pear", 7)).await;
    let stray = world.log.raw(KIND, Some("pear"), None, b"garbage").await;
    world.log.append(KIND, "pear", add("pear", 3)).await;
    // plum: an event whose headers were mangled; the event after it names it as predecessor.
    world.log.append(KIND, "plum", add("plum", 4)).await;
    let mangled = garbled(&mut world.log, "plum", 50).await;
    world.log.append(KIND, "plum", add("plum", 6)).await;
    world.caught_up().await;
    assert_eq!(stock(&world, "pear").await, Some((7, 1)));
    assert_eq!(stock(&world, "plum").await, Some((4, 1)));
    assert_eq!(
        count(&world, "SELECT count(*) FROM parked_aggregates").await,
        2
    );

    let topic = world.kafka.topics().events(KIND);
    let redriven = cli(&world, &["dlq", "redrive", &topic]);
    for sku in ["pear", "plum"] {
        let line = redriven
            .lines()
            .find(|l| l.starts_with(&format!("inventory {sku}:")))
            .unwrap_or_else(|| panic!("{redriven}"));
        assert!(
            line.contains("can never apply")
                && line.contains("invalid envelope")
                && line.contains(&format!("projectors dlq skip {topic}.dlq --partition")),
            "a redrive names the way out: {line}"
        );
    }
    assert_eq!(
        stock(&world, "pear").await,
        Some((7, 1)),
        "a redrive changes nothing"
    );
    assert_eq!(
        count(&world, "SELECT count(*) FROM parked_aggregates").await,
        2
    );

    let (ok, skipped) = skip_dead_letter(&world, &topic, "pear", stray);
    assert!(
        ok && skipped.contains("skipped; 1 parked events applied"),
        "{skipped}"
    );
    assert_eq!(stock(&world, "pear").await, Some((10, 2)));
    let (ok, skipped) = skip_dead_letter(&world, &topic, "plum", mangled);
    assert!(
        ok && skipped.contains("skipped; 1 parked events applied"),
        "{skipped}"
    );
    assert_eq!(
        stock(&world, "plum").await,
        Some((10, 3)),
        "the event after the unreadable one extends the chain over it"
    );
    let (ok, again) = skip_dead_letter(&world, &topic, "plum", mangled);
    assert!(ok && again.contains("already skipped"), "{again}");
    let recorded = count(
        &world,
        "SELECT count(*) FROM operator_skips WHERE reason LIKE 'invalid envelope%' \
         AND event_id IS NULL AND version = 2",
    )
    .await;
    assert_eq!(recorded, 2, "recorded with the version each one stood for");

    world.log.append(KIND, "pear", add("pear", 1)).await;
    world.log.append(KIND, "plum", add("plum", 1)).await;
    world.caught_up().await;
    assert_eq!(stock(&world, "pear").await, Some((11, 3)));
    assert_eq!(stock(&world, "plum").await, Some((11, 4)));
    assert_eq!(
        count(&world, "SELECT count(*) FROM parked_aggregates").await,
        0
    );
    assert_eq!(
        count(&world, "SELECT count(*) FROM projection_anomalies").await,
        0,
        "no version gap, no anomaly"
    );
    live.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_after_skips_ends_equal_to_the_live_read_model() {
    let mut world = World::new().await;
    forbid_stock_over_a_hundred(&world).await;
    let live = run_projectors(&world);
    world.log.append(KIND, "apple", add("apple", 10)).await;
    let apple = world.log.append(KIND, "apple", add("apple", 200)).await;
    world.log.append(KIND, "apple", add("apple", 5)).await;
    let melon = world.log.append(KIND, "melon", add("melon", 500)).await;
    world.log.append(KIND, "melon", add("melon", 5)).await;
    world.log.append(KIND, "plum", add("plum", 4)).await;
    let plum = garbled(&mut world.log, "plum", 50).await;
    world.log.append(KIND, "plum", add("plum", 6)).await;
    let pear = world.log.raw(KIND, Some("pear"), None, b"garbage").await;
    world.log.append(KIND, "pear", add("pear", 3)).await;
    world.log.append(KIND, "kiwi", add("kiwi", 1)).await;
    world.log.append(KIND, "kiwi", add("kiwi", 2)).await;
    world.caught_up().await;
    let topic = world.kafka.topics().events(KIND);
    for (sku, offset) in [
        ("apple", apple),
        ("melon", melon),
        ("plum", plum),
        ("pear", pear),
    ] {
        let (ok, skipped) = skip_dead_letter(&world, &topic, sku, offset);
        assert!(ok && skipped.contains("skipped;"), "{sku}: {skipped}");
    }
    world.log.append(KIND, "apple", add("apple", 1)).await;
    world.caught_up().await;
    let live_rows = inventory_rows(&world).await;
    assert_eq!(live_rows.len(), 5, "{live_rows:?}");
    let dead_letters = dead_letter_count(&world);

    let (ok, rebuilt) =
        cli_within(&world, &["rebuild", "inventory"], Duration::from_secs(120)).await;
    assert!(ok && rebuilt.contains("into generation 2"), "{rebuilt}");
    assert_eq!(
        inventory_rows(&world).await,
        live_rows,
        "the rebuilt generation has the live rows: skipped records skipped, nothing more"
    );
    assert_eq!(
        count(
            &world,
            "SELECT count(*) FROM parked_aggregates WHERE projection = 'inventory@g2'"
        )
        .await,
        0,
        "nothing parked again"
    );
    assert_eq!(
        count(
            &world,
            "SELECT count(*) FROM projection_anomalies WHERE projection = 'inventory@g2'"
        )
        .await,
        0,
        "no skip replayed as an anomaly"
    );
    assert_eq!(
        dead_letter_count(&world),
        dead_letters,
        "no skipped record dead-lettered again"
    );

    // The live projection goes on over the new generation.
    world.log.append(KIND, "plum", add("plum", 1)).await;
    world.caught_up().await;
    assert_eq!(stock(&world, "plum").await, Some((11, 4)));
    live.cancel();
}
