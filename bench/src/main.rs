//! `bench [--quick] [--only PHASE] [--latency-rate N] [--log-events N] [--partitions N]`: measures
//! the system against raw
//! baselines taken in the same run, on the same broker and database, and writes
//! `target/bench/report.json`.
//! `scripts/bench` starts the infrastructure and builds the release binaries this runs.
//!
//! # Layout
//!
//! - `phases`: the run, phase by phase (baselines, command side, read side and sagas,
//!   projectors, rebuild and takeover).
//! - `services`: the release binaries as processes; readiness; peak RSS.
//! - `kafka_load`: raw produce baseline; pre-filled event topics.
//! - `load`: closed-loop throughput and open-loop latency at a fixed rate, whatever is sent.
//! - `round_trip`: raw request/reply baselines (the broker's ceiling for a command's shape),
//!   plain and through Kafka's exactly-once processing.
//! - `transactional_echo`: Kafka's exactly-once processing, one transaction stream for all
//!   partitions or one per partition.
//! - `pg_load`: raw batched insert baseline.
//! - `http_load`: command throughput and latency, visibility, sagas.
//! - `takeover`: a command-api taking over a grown log, by replay and from its snapshot.
//! - `orchestrator`: the saga orchestrator taking over a grown log of approved orders, by
//!   replay and from the order and saga writers' snapshots.
//! - `report`: the figures, `report.json` and the table.

#![allow(clippy::print_stdout)] // a report on the terminal is the point

mod http_load;
mod kafka_load;
mod load;
mod orchestrator;
mod pg_load;
mod phases;
mod report;
mod round_trip;
mod services;
mod takeover;
mod transactional_echo;

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "orderstream benchmarks (run through scripts/bench)"
)]
struct Cli {
    /// A run under 5 minutes with smaller volumes (stated in the report).
    #[arg(long)]
    quick: bool,
    /// Only this phase (plus the raw baselines), for working on one part; the others report
    /// null.
    #[arg(long, value_enum)]
    only: Option<Phase>,
    /// The offered rate of the command latency measure, commands per second (default 1,000,
    /// the target's rate); a lower rate shows the latency of an unloaded path.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    latency_rate: u32,
    /// How many events the rebuild and the takeover run on (default 1,000,000; 200,000 with
    /// `--quick`): the memory targets are stated at 1,000,000 and 5,000,000.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    log_events: Option<u64>,
    /// Partitions of every topic of the run (default 6). Each partition's writer runs its own
    /// transactions, so fewer partitions put more commands in each (docs/benchmarks.md).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
}

/// The parts of a run that can be run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Command throughput and latency through command-api.
    Commands,
    /// Visibility through query-api, and order sagas.
    Reads,
    /// Projector catch-up and rebuild from pre-filled topics, and command-api taking over.
    Projectors,
    /// The saga orchestrator taking over a grown log of approved orders.
    Orchestrator,
}

/// Volumes of one run.
#[derive(Debug)]
struct Plan {
    raw_records: usize,
    raw_rows: usize,
    throughput_for: Duration,
    latency_for: Duration,
    /// Commands per second offered in the latency measure.
    latency_rate: u32,
    /// Offered at the latency rate before `latency_for`, not measured: a command-api just
    /// started opens its producers' transactions, connections and metadata with the first
    /// commands of each partition (the first second's p50 was 30-500 ms, its p99 about 800 ms).
    latency_warm_up: Duration,
    /// How long command-api's CPU time is sampled while it idles after its start.
    idle_for: Duration,
    /// Partitions of every topic of the run.
    partitions: i32,
    visibility_samples: usize,
    sagas: usize,
    projector_events: usize,
    rebuild_events: usize,
}

impl Plan {
    fn new(quick: bool, latency_rate: u32, partitions: i32) -> Self {
        if quick {
            Self {
                raw_records: 100_000,
                raw_rows: 100_000,
                throughput_for: Duration::from_secs(10),
                latency_for: Duration::from_secs(10),
                latency_rate,
                latency_warm_up: Duration::from_secs(2),
                idle_for: Duration::from_secs(3),
                partitions,
                visibility_samples: 200,
                sagas: 1000,
                projector_events: 100_000,
                rebuild_events: 200_000,
            }
        } else {
            Self {
                raw_records: 500_000,
                raw_rows: 300_000,
                throughput_for: Duration::from_secs(30),
                latency_for: Duration::from_secs(30),
                latency_rate,
                latency_warm_up: Duration::from_secs(5),
                idle_for: Duration::from_secs(10),
                partitions,
                visibility_samples: 1000,
                sagas: 5000,
                projector_events: 300_000,
                rebuild_events: 1_000_000,
            }
        }
    }

    fn volumes(&self) -> serde_json::Value {
        serde_json::json!({
            "raw_records": self.raw_records, "raw_rows": self.raw_rows,
            "throughput_seconds": self.throughput_for.as_secs(),
            "latency_seconds": self.latency_for.as_secs(),
            "latency_warm_up_seconds": self.latency_warm_up.as_secs(),
            "idle_seconds": self.idle_for.as_secs(),
            "visibility_samples": self.visibility_samples, "sagas": self.sagas,
            "projector_events": self.projector_events, "rebuild_events": self.rebuild_events,
            "partitions": self.partitions,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut plan = Plan::new(cli.quick, cli.latency_rate, cli.partitions);
    if let Some(events) = cli.log_events {
        plan.rebuild_events = usize::try_from(events)?.max(plan.projector_events);
    }
    let wanted = |phase: Phase| cli.only.is_none_or(|only| only == phase);
    let run = phases::Run::prepare(plan).await?;
    let mut figures = run.baselines().await?;
    if wanted(Phase::Commands) {
        figures.commands = Some(run.command_side(&mut figures.rss_mib).await?);
    }
    if wanted(Phase::Reads) {
        figures.reads = Some(run.read_side(&mut figures.rss_mib).await?);
    }
    if wanted(Phase::Projectors) {
        figures.projectors = Some(run.projector_side(&mut figures.rss_mib).await?);
    }
    if wanted(Phase::Orchestrator) {
        figures.orchestrator = Some(run.orchestrator_side(&mut figures.rss_mib).await?);
    }
    let mode = match (cli.quick, cli.only) {
        (quick, None) => (if quick { "quick" } else { "default" }).to_owned(),
        (quick, Some(only)) => {
            format!("{}, only {only:?}", if quick { "quick" } else { "default" })
        }
    };
    let report = figures.to_json(&mode, run.plan.volumes(), run.environment().await);
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    report::print_table(&report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn a_latency_rate_of_zero_is_refused_with_a_clear_error() {
        let refused = Cli::try_parse_from(["bench", "--latency-rate", "0"]).err();
        let message = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("--latency-rate"), "{message}");
        assert!(Cli::try_parse_from(["bench", "--latency-rate", "100"]).is_ok());
    }

    #[test]
    fn a_partition_count_outside_1_to_64_is_refused_with_a_clear_error() {
        for bad in ["0", "65", "six"] {
            let refused = Cli::try_parse_from(["bench", "--partitions", bad]).err();
            let message = refused.map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("--partitions"), "{bad}: {message}");
        }
        let cli = Cli::try_parse_from(["bench", "--partitions", "2"]).unwrap();
        assert_eq!(cli.partitions, 2);
        assert_eq!(Cli::try_parse_from(["bench"]).unwrap().partitions, 6);
    }
}
