//! Guarantee 7: blue/green rebuild. While commands keep arriving and the live projection keeps
//! serving, a rebuild replays every topic from offset 0 into fresh tables, catches up, switches
//! the views atomically and drops the old tables; the result equals a fold of the whole log.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use projectors::projections::{customers::Customers, inventory::Inventory, orders::Orders};
use projectors::rebuild::{rebuild, Progress, RebuildReport};
use support::workload::{assert_read_models_equal, stream_events};
use support::*;
use tokio_util::sync::CancellationToken;

/// Records what the rebuild reported.
#[derive(Default)]
struct Recorder {
    updates: AtomicI64,
}

impl Progress for Recorder {
    fn update(&self, applied: i64, head: i64, _: f64) {
        assert!(applied >= 0 && head >= 0);
        self.updates.fetch_add(1, Ordering::SeqCst);
    }
    fn finish(&self, report: &RebuildReport) {
        assert!(report.events > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_commands_keep_arriving_ends_equal_to_the_live_read_models() {
    let mut world = World::new().await;
    let live = run_projectors(&world);

    let log = std::mem::replace(&mut world.log, EventLog::detached(&world.kafka));
    let writer = tokio::spawn(stream_events(log, 3000));
    // The rebuild must begin with every topic holding events and more still arriving: the
    // writer registers customers and stocks items before it places any order, so the first
    // order the live projection shows means all three topics have events. (A fixed sleep was
    // too short on a loaded machine: the inventory rebuild found its topic empty.)
    let mut orders_seen = 0_i64;
    for _ in 0..600 {
        orders_seen = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(world.pool())
            .await
            .unwrap();
        if orders_seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        orders_seen > 0,
        "no order reached the live read model in a minute"
    );

    let recorder = Recorder::default();
    let stop = CancellationToken::new();
    let reports = [
        rebuild::<Inventory>(world.pool(), &world.kafka.settings, &recorder, &stop)
            .await
            .unwrap(),
        rebuild::<Customers>(world.pool(), &world.kafka.settings, &recorder, &stop)
            .await
            .unwrap(),
        rebuild::<Orders>(world.pool(), &world.kafka.settings, &recorder, &stop)
            .await
            .unwrap(),
    ];
    assert!(
        reports.iter().all(|r| r.generation == 2 && r.events > 0),
        "{reports:?}"
    );
    assert!(
        recorder.updates.load(Ordering::SeqCst) > 0,
        "progress was reported"
    );

    let (_, truth) = writer.await.unwrap();
    world.caught_up().await;
    let orders = assert_read_models_equal(world.pool(), &truth).await;
    assert!(orders > 0);
    for name in ["customers", "inventory", "orders"] {
        let generation: i32 = sqlx::query_scalar(
            "SELECT generation FROM projection_generations WHERE projection = $1",
        )
        .bind(name)
        .fetch_one(world.pool())
        .await
        .unwrap();
        assert_eq!(generation, 2);
        let old: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{name}_g1"))
            .fetch_one(world.pool())
            .await
            .unwrap();
        assert_eq!(old, None, "the old generation's table was dropped");
    }
    // The live projection publishes what operators watch.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = platform::telemetry::metrics_handle().render();
        if metrics.contains("kafka_consumer_lag") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in [
        "projector_events_applied_total",
        "projector_batch_size",
        "kafka_consumer_lag",
        "projection_checkpoint",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    live.cancel();
    println!("{reports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_switches_when_some_partitions_have_no_events() {
    use domain::inventory::InventoryEvent;
    use domain::values::{Quantity, Sku};
    use domain::AggregateKind;
    use platform::partitioner::partition_for;
    let world = World::new().await;
    // Appended in transactions, as partition writers append: a commit marker follows every
    // event, so partition 0 ends with one and the rebuild's stored offset stays below its head.
    // Every event on partition 0; partition 1 holds only an aborted transaction (offsets, no
    // event, so no offset row either); partition 2 holds nothing.
    let mut log = EventLog::transactional(&world.kafka).await;
    let on = |partition: i32| {
        (0..200)
            .map(|i| format!("sku-{i}"))
            .filter(move |s| partition_for(s.as_bytes(), PARTITIONS) == partition)
    };
    let added = |sku: &str| InventoryEvent::StockAdded {
        sku: Sku::try_from(sku).unwrap(),
        quantity: Quantity::try_from(2).unwrap(),
    };
    let skus: Vec<String> = on(0).take(3).collect();
    for sku in &skus {
        log.append(AggregateKind::InventoryItem, sku, added(sku))
            .await;
    }
    let aborted = on(1).next().unwrap();
    log.append_aborted(AggregateKind::InventoryItem, &aborted, added(&aborted))
        .await;
    // The last commit's markers are written just after it returned: until then the rebuild's
    // heads (the last stable offsets) would leave that event out.
    world.settle().await;
    let stop = CancellationToken::new();
    let recorder = Recorder::default();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        rebuild::<Inventory>(world.pool(), &world.kafka.settings, &recorder, &stop),
    )
    .await
    .expect("the rebuild switched over within a minute")
    .unwrap();
    assert_eq!(
        (report.generation, report.events),
        (2, 3),
        "events are counted, not read off offsets: {report:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(rows, 3, "the aborted event was never applied");
}
