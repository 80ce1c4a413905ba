//! Guarantee 5: exactly-once effect. A projector process is killed with SIGKILL at random points
//! while thousands of events stream in, and restarted each time; in the end the read models equal
//! a fold of the whole log (computed here with the domain's own aggregates): nothing missing,
//! nothing counted twice.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::workload::{assert_read_models_equal, stream_events, Rng};
use support::*;
use tokio::process::{Child, Command};

fn spawn_projector(world: &World) -> Child {
    Command::new(env!("CARGO_BIN_EXE_projectors"))
        .arg("run")
        .env("DATABASE_URL", &world.db.url)
        .env("KAFKA_BROKERS", &world.kafka.settings.brokers)
        .env("KAFKA_TOPIC_PREFIX", &world.kafka.settings.topic_prefix)
        .env("KAFKA_PARTITIONS", PARTITIONS.to_string())
        .env("PROJECTORS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_at_random_points_ends_equal_to_a_fold_of_the_log() {
    let mut world = World::new().await;
    let log = std::mem::replace(&mut world.log, EventLog::detached(&world.kafka));
    let writer = tokio::spawn(stream_events(log, 4000));

    let mut rng = Rng(0x0dd_ba11);
    let mut kills = 0;
    while !writer.is_finished() || kills < 6 {
        let mut projector = spawn_projector(&world);
        tokio::time::sleep(Duration::from_millis(300 + rng.next(1200))).await;
        projector.kill().await.unwrap(); // SIGKILL
        kills += 1;
    }
    let (_, truth) = writer.await.unwrap();
    let mut projector = spawn_projector(&world);
    world.caught_up().await;
    projector.kill().await.unwrap();

    let orders = assert_read_models_equal(world.pool(), &truth).await;
    let anomalies: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_anomalies")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(
        anomalies, 0,
        "a replayed event would have shown up as an inert loser"
    );
    println!(
        "{kills} kills, {orders} orders, {} customers, {} items",
        truth.customers.len(),
        truth.items.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projector_processes_sharing_partitions_through_rebalances_and_kills_end_equal_to_the_fold(
) {
    // Partitions move between two live processes while either may be killed mid-batch: the
    // offsets lock and the stored offsets keep every batch applied exactly once.
    let mut world = World::new().await;
    let log = std::mem::replace(&mut world.log, EventLog::detached(&world.kafka));
    let writer = tokio::spawn(stream_events(log, 3000));
    let mut rng = Rng(0xfeed_beef);
    let mut pair = [spawn_projector(&world), spawn_projector(&world)];
    let mut kills = 0;
    while !writer.is_finished() || kills < 6 {
        tokio::time::sleep(Duration::from_millis(400 + rng.next(900))).await;
        let victim = rng.next(2) as usize;
        pair[victim].kill().await.unwrap(); // SIGKILL; the survivor takes its partitions
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.next(600))).await;
        pair[victim] = spawn_projector(&world); // and gives some back
    }
    let (_, truth) = writer.await.unwrap();
    world.caught_up().await;
    for mut projector in pair {
        projector.kill().await.unwrap();
    }
    let orders = assert_read_models_equal(world.pool(), &truth).await;
    let anomalies: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_anomalies")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(
        anomalies, 0,
        "no event was applied twice (it would show up as an inert loser)"
    );
    println!("{kills} kills across two processes, {orders} orders");
}
