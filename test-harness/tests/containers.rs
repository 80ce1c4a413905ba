//! The harness's containers (issue #18): shared per test process, separate between processes,
//! removed when the process ends (also after a failed test, and by the next run after a kill),
//! and a failed start explained by the container's own last log lines.
//!
//! Needs a Docker-compatible engine (`DOCKER_HOST`) and the images `ORDERSTREAM_KAFKA_IMAGE` /
//! `ORDERSTREAM_POSTGRES_IMAGE` name (scripts/test runs these with Podman and local images).
//! The `child_*` tests are the other test processes the tests start (ignored when run alone).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use test_harness::containers::{self, orphans, registry, ContainerError, Images};
use test_harness::{TestDatabase, TestKafka};
use testcontainers::bollard::Docker;

const IDS: &str = "CONTAINERS ";
/// One test at a time: another test's child sweeps orphans when it starts, and must not sweep
/// the killed child's containers before the test has seen them left behind.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const MARK: &str = "WROTE AND READ ";

/// Runs one child test of this binary in a process of its own, with no infrastructure named.
fn child(test: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            test,
        ])
        .env_remove("KAFKA_BROKERS")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// What follows `marker` on each line that has it (libtest may print "test name ... " first).
fn after_marker(output: &str, marker: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split_once(marker).map(|(_, rest)| rest.to_owned()))
        .collect()
}

async fn exists(docker: &Docker, id: &str) -> bool {
    docker.inspect_container(id, None).await.is_ok()
}

#[tokio::test]
async fn two_test_processes_get_their_own_containers_and_both_are_removed_when_they_end_even_after_a_failed_test(
) {
    let _serial = SERIAL.lock().await;
    let passing = child("child_uses_the_shared_containers", &[])
        .spawn()
        .expect("child");
    let failing = child(
        "child_uses_the_shared_containers",
        &[("HARNESS_CHILD_FAILS", "1")],
    )
    .spawn()
    .expect("child");
    let (passing, failing) = tokio::task::spawn_blocking(move || {
        (passing.wait_with_output(), failing.wait_with_output())
    })
    .await
    .expect("join");
    let (passing, failing) = (passing.expect("output"), failing.expect("output"));
    let passing_out = String::from_utf8_lossy(&passing.stdout).into_owned();
    let failing_out = String::from_utf8_lossy(&failing.stdout).into_owned();
    assert!(
        passing.status.success(),
        "{passing_out}\n{}",
        String::from_utf8_lossy(&passing.stderr)
    );
    assert!(!failing.status.success(), "the failing child must fail");
    assert!(
        String::from_utf8_lossy(&failing.stderr).contains("fails on purpose")
            || failing_out.contains("fails on purpose"),
        "it failed for another reason:\n{failing_out}\n{}",
        String::from_utf8_lossy(&failing.stderr)
    );

    let wrote: Vec<String> = [&passing_out, &failing_out]
        .iter()
        .flat_map(|out| after_marker(out, MARK))
        .collect();
    assert_eq!(wrote.len(), 2, "both used their broker and database");
    assert_ne!(
        wrote[0], wrote[1],
        "each process has its own broker: {wrote:?}"
    );

    let ids: Vec<String> = [&passing_out, &failing_out]
        .iter()
        .flat_map(|out| after_marker(out, IDS))
        .flat_map(|line| line.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        ids.len(),
        4,
        "a Kafka and a Postgres container each: {ids:?}"
    );
    let docker = Docker::connect_with_defaults().expect("engine");
    for id in &ids {
        assert!(
            !exists(&docker, id).await,
            "container {id} outlived its process"
        );
    }
}

#[tokio::test]
async fn a_killed_test_process_leaves_no_container_past_the_next_run() {
    let _serial = SERIAL.lock().await;
    let mut hanging = child(
        "child_uses_the_shared_containers",
        &[("HARNESS_CHILD_HANGS", "1")],
    )
    .stderr(Stdio::null())
    .spawn()
    .expect("child");
    let stdout = hanging.stdout.take().expect("stdout");
    let ids = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split_once(IDS).map(|(_, ids)| ids.to_owned()))
    })
    .await
    .expect("join")
    .expect("the child printed its containers");
    hanging.kill().expect("SIGKILL");
    hanging.wait().expect("reaped");

    let docker = Docker::connect_with_defaults().expect("engine");
    let ids: Vec<&str> = ids.split(' ').collect();
    for id in &ids {
        assert!(exists(&docker, id).await, "a SIGKILL runs no exit hook");
    }
    // What the next test process does before it starts containers of its own.
    let removed = orphans::remove_orphans().await.expect("sweep");
    for id in &ids {
        assert!(
            removed.contains(&id.to_string()),
            "{id} not swept: {removed:?}"
        );
        assert!(!exists(&docker, id).await, "{id} still there");
    }
}

#[tokio::test]
async fn a_container_that_fails_to_start_is_reported_with_its_last_log_lines() {
    let _serial = SERIAL.lock().await;
    let image = Images::from_env().kafka;
    let failed = containers::block_on(move || async move {
        containers::kafka::start(&image, &[("process.roles", "gardener")]).await
    });
    let error = failed.expect_err("a broker with a nonsense role does not start");
    let text = error.to_string();
    assert!(matches!(error, ContainerError::NotReady { .. }), "{text}");
    assert!(text.contains("exited"), "{text}");
    assert!(
        text.contains("gardener"),
        "the broker's own complaint is among the log lines:\n{text}"
    );
}

#[tokio::test]
async fn without_infrastructure_or_an_engine_the_error_names_both_ways_to_provide_them() {
    let output = child(
        "child_uses_the_shared_containers",
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    )
    .output()
    .expect("child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("KAFKA_BROKERS is not set")
            && text.contains("no engine answers at unix:///nonexistent/docker.sock")
            && text.contains("scripts/up")
            && text.contains("DOCKER_HOST"),
        "{text}"
    );
}

/// The other test process: uses the containers the harness starts for it, prints what it used.
#[tokio::test]
#[ignore = "run by the tests above as a process of its own"]
async fn child_uses_the_shared_containers() {
    let kafka = TestKafka::new();
    let db = TestDatabase::create(None).await;
    println!("{IDS}{}", registry::kept_ids().join(" "));

    let topic = kafka.create_topic("ping", 1).await;
    let producer = kafka.producer();
    producer
        .send(
            FutureRecord::<str, str>::to(&topic).payload("ping"),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    let consumer = kafka.consumer(&kafka.group("ping"), &[]);
    consumer.subscribe(&[&topic]).expect("subscribe");
    let record = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("consume");
    assert_eq!(record.payload(), Some(&b"ping"[..]));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&db.pool)
        .await
        .expect("query");
    assert_eq!(one, 1);
    println!("{MARK}{}", kafka.settings.brokers);

    if std::env::var_os("HARNESS_CHILD_HANGS").is_some() {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    assert!(
        std::env::var_os("HARNESS_CHILD_FAILS").is_none(),
        "this child fails on purpose, after using its containers"
    );
}
