//! `bench [--quick]`: measures the system against raw baselines taken in the same run, on the
//! same broker and database, and writes `target/bench/report.json`. `scripts/bench` starts the
//! infrastructure and builds the release binaries this runs.
//!
//! # Layout
//!
//! - `services`: the release binaries as processes; readiness; peak RSS.
//! - `kafka_load`: raw produce baseline; pre-filled event topics.
//! - `pg_load`: raw batched insert baseline.
//! - `http_load`: command throughput, latency at a fixed rate, visibility, sagas.

#![allow(clippy::print_stdout)] // a report on the terminal is the point

mod http_load;
mod kafka_load;
mod pg_load;
mod services;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use domain::AggregateKind;
use platform::config::KafkaSettings;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;

use crate::http_load::{Api, Percentiles};
use crate::services::{Env, Service};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "orderstream benchmarks (run through scripts/bench)"
)]
struct Cli {
    /// A run under 5 minutes with smaller volumes (stated in the report).
    #[arg(long)]
    quick: bool,
}

/// Volumes of one run.
struct Plan {
    raw_records: usize,
    raw_rows: usize,
    throughput_for: Duration,
    latency_for: Duration,
    latency_rate: u32,
    visibility_samples: usize,
    sagas: usize,
    projector_events: usize,
    rebuild_events: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                raw_records: 100_000,
                raw_rows: 100_000,
                throughput_for: Duration::from_secs(10),
                latency_for: Duration::from_secs(10),
                latency_rate: 1000,
                visibility_samples: 200,
                sagas: 1000,
                projector_events: 100_000,
                rebuild_events: 200_000,
            }
        } else {
            Self {
                raw_records: 500_000,
                raw_rows: 500_000,
                throughput_for: Duration::from_secs(30),
                latency_for: Duration::from_secs(30),
                latency_rate: 1000,
                visibility_samples: 1000,
                sagas: 5000,
                projector_events: 300_000,
                rebuild_events: 1_000_000,
            }
        }
    }
}

fn pct(p: Option<Percentiles>) -> Value {
    p.map_or(
        Value::Null,
        |p| json!({"p50": round(p.p50), "p99": round(p.p99)}),
    )
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ratio(a: f64, b: f64) -> f64 {
    (a / b * 1000.0).round() / 1000.0
}

fn step(what: &str) {
    println!("\x1b[1m[bench]\x1b[0m {what}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let plan = Plan::new(cli.quick);
    let brokers = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS is not set")?;
    let admin_url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let run = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no binary directory")?
        .to_path_buf();
    let partitions = 6;
    let secret = format!("bench-{run}");
    let auth = platform::auth::Auth::new(&secret, 1_000_000);
    let admin_token = auth.sign("bench-admin", &["admin"], 3600)?;
    let customer_token = auth.sign("bench-customer", &["customer"], 3600)?;
    let mut rss = BTreeMap::new();
    let mut report = serde_json::Map::new();

    // 1. Raw baselines.
    let kafka = KafkaSettings {
        brokers: brokers.clone(),
        topic_prefix: format!("bench-{run}"),
        partitions,
    };
    let raw_topic = format!("{}.raw", kafka.topic_prefix);
    platform::kafka::ensure_topics(&kafka, std::slice::from_ref(&raw_topic), partitions).await?;
    step(&format!("raw produce: {} records", plan.raw_records));
    let (raw_produce, record_size) =
        kafka_load::raw_produce(&kafka, &raw_topic, plan.raw_records).await?;
    let database_url = fresh_database(&admin_url, &format!("bench_{run}")).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&database_url)
        .await?;
    step(&format!("raw insert: {} rows", plan.raw_rows));
    let raw_insert = pg_load::raw_insert(&pool, plan.raw_rows).await?;

    // 2. The command side, alone.
    let env = Env {
        brokers: brokers.clone(),
        prefix: kafka.topic_prefix.clone(),
        database_url: database_url.clone(),
        secret: secret.clone(),
        partitions,
        bin_dir: bin_dir.clone(),
    };
    let command_api = Service::start(&env, "command-api", "COMMAND_API_ADDR", 18180, &[]).await?;
    let api = Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        commands: command_api.addr.clone(),
        queries: "127.0.0.1:18181".into(),
        admin: admin_token,
    };
    step(&format!(
        "commands: 64 clients for {:?}",
        plan.throughput_for
    ));
    let (commands_per_s, command_failures) =
        http_load::commands_per_s(&api, 64, plan.throughput_for).await?;
    step(&format!(
        "command latency at {}/s for {:?}",
        plan.latency_rate, plan.latency_for
    ));
    let (latency, completed_rate) =
        http_load::latency_at(&api, plan.latency_rate, plan.latency_for).await?;

    // 3. The read side and the saga, all four services.
    let projectors = Service::start(&env, "projectors", "PROJECTORS_ADDR", 18182, &[]).await?;
    let query_api = Service::start(&env, "query-api", "QUERY_API_ADDR", 18181, &[]).await?;
    step(&format!("visibility: {} samples", plan.visibility_samples));
    let visibility = http_load::visibility(&api, plan.visibility_samples).await?;
    let orchestrator = Service::start(
        &env,
        "saga-orchestrator",
        "SAGA_ORCHESTRATOR_ADDR",
        18183,
        &[],
    )
    .await?;
    step(&format!("sagas: {} orders, 64 clients", plan.sagas));
    let (sagas_per_s, approved) =
        http_load::sagas_per_s(&api, &pool, &customer_token, plan.sagas, 64).await?;
    for service in [orchestrator, query_api, projectors, command_api] {
        service.stop(&mut rss).await;
    }

    // 4. Projectors from a pre-filled topic, then a rebuild of the whole topic.
    let kafka_fill = KafkaSettings {
        topic_prefix: format!("bench-{run}-fill"),
        ..kafka.clone()
    };
    let fill_topics = platform::topics::Topics::new(kafka_fill.topic_prefix.clone());
    let inventory_topic = fill_topics.events(AggregateKind::InventoryItem);
    platform::kafka::ensure_topics(&kafka_fill, &fill_topics.all_events(), partitions).await?;
    step(&format!(
        "pre-filling {} inventory events",
        plan.projector_events
    ));
    kafka_load::prefill_inventory(&kafka_fill, plan.projector_events, 20_000).await?;
    let fill_db = fresh_database(&admin_url, &format!("bench_{run}_fill")).await?;
    let fill_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&fill_db)
        .await?;
    let fill_env = Env {
        prefix: kafka_fill.topic_prefix.clone(),
        database_url: fill_db.clone(),
        ..env.clone()
    };
    step("projectors catching up");
    let started = Instant::now();
    let projectors = Service::start(&fill_env, "projectors", "PROJECTORS_ADDR", 18184, &[]).await?;
    wait_applied(&fill_pool, &inventory_topic, plan.projector_events).await?;
    let projector_events_per_s = plan.projector_events as f64 / started.elapsed().as_secs_f64();
    projectors.stop(&mut rss).await;

    let more = plan.rebuild_events.saturating_sub(plan.projector_events);
    step(&format!(
        "pre-filling {more} more events for the rebuild ({} in all)",
        plan.rebuild_events
    ));
    kafka_load::prefill_inventory_more(&kafka_fill, plan.projector_events, more, 20_000).await?;
    step("projectors rebuild inventory");
    let started = Instant::now();
    let status = tokio::process::Command::new(bin_dir.join("projectors"))
        .args(["rebuild", "inventory"])
        .env("KAFKA_BROKERS", &brokers)
        .env("KAFKA_TOPIC_PREFIX", &kafka_fill.topic_prefix)
        .env("DATABASE_URL", &fill_db)
        .env("RUST_LOG", "warn")
        .status()
        .await?;
    anyhow::ensure!(status.success(), "rebuild failed");
    let rebuild_events_per_s = plan.rebuild_events as f64 / started.elapsed().as_secs_f64();

    // 5. The report.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    report.insert(
        "mode".into(),
        json!(if cli.quick { "quick" } else { "default" }),
    );
    report.insert("raw_produce_per_s".into(), json!(round(raw_produce)));
    report.insert("commands_per_s".into(), json!(round(commands_per_s)));
    report.insert(
        "command_latency_ms".into(),
        json!({
        "p50": pct(latency)["p50"], "p99": pct(latency)["p99"],
        "offered_per_s": plan.latency_rate, "completed_per_s": round(completed_rate)}),
    );
    report.insert("raw_insert_rows_per_s".into(), json!(round(raw_insert)));
    report.insert(
        "projector_events_per_s".into(),
        json!(round(projector_events_per_s)),
    );
    report.insert(
        "rebuild_events_per_s".into(),
        json!(round(rebuild_events_per_s)),
    );
    report.insert("visibility_latency_ms".into(), pct(visibility));
    report.insert("sagas_per_s".into(), json!(round(sagas_per_s)));
    report.insert(
        "rss_mib".into(),
        json!(rss
            .iter()
            .map(|(k, v)| (k.clone(), round(*v)))
            .collect::<BTreeMap<_, _>>()),
    );
    report.insert("ratios".into(), json!({
        "commands_per_s / raw_produce_per_s": ratio(commands_per_s, raw_produce),
        "projector_events_per_s / raw_insert_rows_per_s": ratio(projector_events_per_s, raw_insert),
    }));
    report.insert("volumes".into(), json!({
        "raw_records": plan.raw_records, "record_payload_bytes": record_size, "raw_rows": plan.raw_rows,
        "throughput_seconds": plan.throughput_for.as_secs(), "latency_seconds": plan.latency_for.as_secs(),
        "visibility_samples": plan.visibility_samples, "sagas": plan.sagas, "sagas_approved": approved,
        "projector_events": plan.projector_events, "rebuild_events": plan.rebuild_events,
        "command_failures": command_failures}));
    report.insert("env".into(), json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "broker": "Nisshi 0.8.1", "storage": std::env::var("BENCH_STORAGE").unwrap_or_else(|_| "memory://".into()),
        "postgres": sqlx::query_scalar::<_, String>("SHOW server_version").fetch_one(&pool).await.unwrap_or_default(),
        "partitions": partitions, "git_commit": commit}));
    let report = Value::Object(report);
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    print_table(&report);
    Ok(())
}

/// Creates (or recreates) a database and returns its URL.
async fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("DATABASE_URL has no database")?;
    Ok(format!("{base}/{name}"))
}

/// Waits until the inventory projection applied `events` events of `topic`.
async fn wait_applied(pool: &sqlx::PgPool, topic: &str, events: usize) -> anyhow::Result<()> {
    let target = i64::try_from(events)?;
    let started = Instant::now();
    loop {
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT sum(next_offset)::int8 FROM projection_offsets WHERE topic = $1",
        )
        .bind(topic)
        .fetch_one(pool)
        .await
        .unwrap_or(None);
        if applied.unwrap_or(0) >= target {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "projectors did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print_table(report: &Value) {
    let r = |k: &str| report[k].clone();
    println!();
    println!("{:<28} {:>14}   baseline / target", "measure", "value");
    let rows = [
        (
            "raw_produce_per_s",
            format!("{}", r("raw_produce_per_s")),
            "baseline (rdkafka, acks=all, idempotent)".to_owned(),
        ),
        (
            "commands_per_s",
            format!("{}", r("commands_per_s")),
            format!(
                "ratio {} (target >= 0.5 and >= 3000/s)",
                report["ratios"]["commands_per_s / raw_produce_per_s"]
            ),
        ),
        (
            "command_latency_ms",
            format!(
                "{}/{}",
                r("command_latency_ms")["p50"],
                r("command_latency_ms")["p99"]
            ),
            format!(
                "p50/p99 at {}/s offered, {}/s completed (target p99 <= 25)",
                r("command_latency_ms")["offered_per_s"],
                r("command_latency_ms")["completed_per_s"]
            ),
        ),
        (
            "raw_insert_rows_per_s",
            format!("{}", r("raw_insert_rows_per_s")),
            "baseline (batched UNNEST upsert)".to_owned(),
        ),
        (
            "projector_events_per_s",
            format!("{}", r("projector_events_per_s")),
            format!(
                "ratio {} (target >= 0.7 and >= 30000/s)",
                report["ratios"]["projector_events_per_s / raw_insert_rows_per_s"]
            ),
        ),
        (
            "rebuild_events_per_s",
            format!("{}", r("rebuild_events_per_s")),
            format!(
                "over {} events (target >= 100000/s)",
                report["volumes"]["rebuild_events"]
            ),
        ),
        (
            "visibility_latency_ms",
            format!(
                "{}/{}",
                r("visibility_latency_ms")["p50"],
                r("visibility_latency_ms")["p99"]
            ),
            "p50/p99 (target p99 <= 50)".to_owned(),
        ),
        (
            "sagas_per_s",
            format!("{}", r("sagas_per_s")),
            format!("{} orders (target >= 500/s)", report["volumes"]["sagas"]),
        ),
    ];
    for (name, value, note) in rows {
        println!("{name:<28} {value:>14}   {note}");
    }
    if let Some(rss) = report["rss_mib"].as_object() {
        for (service, mib) in rss {
            println!(
                "{:<28} {:>14}   peak RSS MiB (target <= 150)",
                format!("rss {service}"),
                mib.to_string()
            );
        }
    }
    println!("\nwritten to target/bench/report.json");
}
