//! The figures of one run: `target/bench/report.json` and the table on the terminal. A phase
//! left out with `--only` reports `null`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::load::{Latency, Percentiles};

/// What the command-side phase measured.
#[derive(Debug, Default)]
pub(crate) struct CommandFigures {
    /// command-api's CPU time while it idles after its start, percent of one core.
    pub(crate) idle_cpu_percent: Option<f64>,
    pub(crate) per_s: f64,
    pub(crate) failures: usize,
    pub(crate) latency: Latency,
}

/// What one raw request/reply baseline measured: throughput under the command phase's clients
/// and latency at the command latency measure's rate.
#[derive(Debug, Default)]
pub(crate) struct RoundTripFigures {
    pub(crate) per_s: f64,
    /// Requests of the throughput run not answered within 10 s.
    pub(crate) failures: usize,
    pub(crate) latency: Option<Latency>,
}

/// What the read-side and saga phase measured.
#[derive(Debug, Default)]
pub(crate) struct ReadFigures {
    pub(crate) visibility: Option<Percentiles>,
    pub(crate) sagas_per_s: f64,
    pub(crate) sagas_approved: i64,
}

/// What the projector phase measured.
#[derive(Debug, Default)]
pub(crate) struct ProjectorFigures {
    pub(crate) events_per_s: f64,
    pub(crate) rebuild_events_per_s: f64,
    /// A command-api taking over the rebuild's log (the same events).
    pub(crate) takeover: crate::takeover::TakeoverFigures,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) raw_produce_per_s: f64,
    pub(crate) raw_round_trip: RoundTripFigures,
    /// The round trip through Kafka's own exactly-once processing (`round_trip::Echo`).
    pub(crate) raw_transactional_round_trip: RoundTripFigures,
    /// The same with a transaction stream per partition, as our writers run them.
    pub(crate) raw_per_partition_transactional_round_trip: RoundTripFigures,
    pub(crate) record_payload_bytes: usize,
    pub(crate) raw_insert_rows_per_s: f64,
    pub(crate) commands: Option<CommandFigures>,
    pub(crate) reads: Option<ReadFigures>,
    pub(crate) projectors: Option<ProjectorFigures>,
    pub(crate) rss_mib: BTreeMap<String, f64>,
    pub(crate) orchestrator: Option<crate::orchestrator::OrchestratorFigures>,
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ratio(a: f64, b: f64) -> f64 {
    (a / b * 1000.0).round() / 1000.0
}

fn latency(l: Option<&Latency>) -> Value {
    l.map_or(Value::Null, |l| {
        json!({"p50": pct(l.percentiles)["p50"], "p99": pct(l.percentiles)["p99"],
               "offered_per_s": l.offered_per_s, "completed_per_s": round(l.completed_per_s),
               "p99_by_second": l.p99_by_second.iter().map(|ms| ms.map(round)).collect::<Vec<_>>()})
    })
}

fn pct(p: Option<Percentiles>) -> Value {
    p.map_or(
        Value::Null,
        |p| json!({"p50": round(p.p50), "p99": round(p.p99)}),
    )
}

impl Figures {
    /// The report's JSON; `volumes` and `env` describe the run.
    pub(crate) fn to_json(&self, mode: &str, volumes: Value, env: Value) -> Value {
        let commands = self.commands.as_ref();
        let reads = self.reads.as_ref();
        let projectors = self.projectors.as_ref();
        let mut report = json!({
            "mode": mode,
            "raw_produce_per_s": round(self.raw_produce_per_s),
            "commands_per_s": commands.map(|c| round(c.per_s)),
            "command_api_idle_cpu_percent": commands.and_then(|c| c.idle_cpu_percent).map(round),
            "command_latency_ms": latency(commands.map(|c| &c.latency)),
            "raw_insert_rows_per_s": round(self.raw_insert_rows_per_s),
            "projector_events_per_s": projectors.map(|p| round(p.events_per_s)),
            "rebuild_events_per_s": projectors.map(|p| round(p.rebuild_events_per_s)),
            "takeover_ms": projectors.map(|p| json!({
                "replay": round(p.takeover.replay_ms), "snapshot": round(p.takeover.snapshot_ms),
                "replay_writer": p.takeover.replay_writer_ms.map(round),
                "snapshot_writer": p.takeover.snapshot_writer_ms.map(round)})),
            "orchestrator_takeover_ms": self.orchestrator.map(|o| json!({
                "replay": round(o.replay_ms), "snapshot": round(o.snapshot_ms),
                "orders": o.orders,
                "events": o.orders * crate::orchestrator::EVENTS_PER_ORDER})),
            "visibility_latency_ms": reads.map(|r| pct(r.visibility)),
            "sagas_per_s": reads.map(|r| round(r.sagas_per_s)),
            "rss_mib": self.rss_mib.iter().map(|(k, v)| (k.clone(), round(*v))).collect::<BTreeMap<_, _>>(),
            "ratios": {
                "commands_per_s / raw_produce_per_s":
                    commands.map(|c| ratio(c.per_s, self.raw_produce_per_s)),
                "projector_events_per_s / raw_insert_rows_per_s":
                    projectors.map(|p| ratio(p.events_per_s, self.raw_insert_rows_per_s)),
                // Not a target, a reading aid: the rebuild has no baseline of its own, and the
                // raw insert moves with the machine's load as the rebuild does.
                "rebuild_events_per_s / raw_insert_rows_per_s":
                    projectors.map(|p| ratio(p.rebuild_events_per_s, self.raw_insert_rows_per_s)),
                "takeover_ms snapshot / replay":
                    projectors.map(|p| ratio(p.takeover.snapshot_ms, p.takeover.replay_ms)),
            },
            "volumes": merge(volumes, json!({
                "record_payload_bytes": self.record_payload_bytes,
                "command_failures": commands.map(|c| c.failures),
                "sagas_approved": reads.map(|r| r.sagas_approved),
            })),
            "env": env,
        });
        let plain = self.raw_round_trip.per_s;
        for ((name, _), figures) in ROUND_TRIPS.iter().zip(self.round_trips()) {
            report[format!("{name}_per_s").as_str()] = json!(round(figures.per_s));
            report[format!("{name}_latency_ms").as_str()] = latency(figures.latency.as_ref());
            report["volumes"][format!("{name}_failures").as_str()] = json!(figures.failures);
            report["ratios"][format!("commands_per_s / {name}_per_s").as_str()] =
                json!(commands.map(|c| ratio(c.per_s, figures.per_s)));
            if *name != ROUND_TRIPS[0].0 {
                // What the transaction costs the broker's round trip, none of our code in it.
                report["ratios"][format!("{name}_per_s / raw_round_trip_per_s").as_str()] =
                    json!(ratio(figures.per_s, plain));
            }
        }
        report
    }

    /// The raw round trips, in the order of [`ROUND_TRIPS`].
    fn round_trips(&self) -> [&RoundTripFigures; 3] {
        [
            &self.raw_round_trip,
            &self.raw_transactional_round_trip,
            &self.raw_per_partition_transactional_round_trip,
        ]
    }
}

/// The raw round trips' names in the report (their figures are `<name>_per_s`,
/// `<name>_latency_ms`, `<name>_failures` and the ratios to them) and what the table says of
/// each; the plain one first, the one the others are compared with.
const ROUND_TRIPS: [(&str, &str); 3] = [
    (
        "raw_round_trip",
        "baseline (request -> echo -> reply, 256 clients)",
    ),
    (
        "raw_transactional_round_trip",
        "baseline (Kafka exactly-once: a transaction per batch)",
    ),
    (
        "raw_per_partition_transactional_round_trip",
        "baseline (the same, a transaction stream per partition)",
    ),
];

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// How a latency figure was measured, for the table.
fn at_rate(latency: &Value) -> String {
    format!(
        "p50/p99 at {}/s offered after a warm-up, {}/s completed",
        latency["offered_per_s"], latency["completed_per_s"]
    )
}

/// The report as a table on the terminal.
pub(crate) fn print_table(report: &Value) {
    let r = |k: &str| report[k].clone();
    let pair = |v: Value| format!("{}/{}", v["p50"], v["p99"]);
    println!();
    println!("{:<52} {:>14}   baseline / target", "measure", "value");
    let mut rows = vec![(
        "raw_produce_per_s".to_owned(),
        r("raw_produce_per_s").to_string(),
        "baseline (rdkafka, acks=all, idempotent)".to_owned(),
    )];
    for (i, (name, what)) in ROUND_TRIPS.iter().enumerate() {
        let throughput = format!("{name}_per_s");
        let compared =
            report["ratios"][format!("{throughput} / raw_round_trip_per_s").as_str()].clone();
        let note = if i == 0 {
            (*what).to_owned()
        } else {
            format!("{what}, {compared} x round trip")
        };
        rows.push((throughput.clone(), r(&throughput).to_string(), note));
        let latency = format!("{name}_latency_ms");
        rows.push((latency.clone(), pair(r(&latency)), at_rate(&r(&latency))));
    }
    rows.extend([
        (
            "commands_per_s".to_owned(),
            r("commands_per_s").to_string(),
            format!(
                "ratio {} to raw produce (target >= 0.5 and >= 3000/s), {} to round trip (target >= 0.7), {} / {} to the transactional ones",
                report["ratios"]["commands_per_s / raw_produce_per_s"],
                report["ratios"]["commands_per_s / raw_round_trip_per_s"],
                report["ratios"]["commands_per_s / raw_transactional_round_trip_per_s"],
                report["ratios"]["commands_per_s / raw_per_partition_transactional_round_trip_per_s"]
            ),
        ),
        (
            "command_api_idle_cpu_percent".to_owned(),
            r("command_api_idle_cpu_percent").to_string(),
            "of one core, idle after its start (no target)".to_owned(),
        ),
        (
            "command_latency_ms".to_owned(),
            pair(r("command_latency_ms")),
            format!("{} (target p99 <= 25)", at_rate(&r("command_latency_ms"))),
        ),
        (
            "raw_insert_rows_per_s".to_owned(),
            r("raw_insert_rows_per_s").to_string(),
            "baseline (batched UNNEST upsert, durable commit)".to_owned(),
        ),
        (
            "projector_events_per_s".to_owned(),
            r("projector_events_per_s").to_string(),
            format!(
                "ratio {} (target >= 0.7 and >= 30000/s)",
                report["ratios"]["projector_events_per_s / raw_insert_rows_per_s"]
            ),
        ),
        (
            "rebuild_events_per_s".to_owned(),
            r("rebuild_events_per_s").to_string(),
            format!(
                "over {} events (target >= 100000/s), {} x raw insert",
                report["volumes"]["rebuild_events"],
                report["ratios"]["rebuild_events_per_s / raw_insert_rows_per_s"]
            ),
        ),
        (
            "takeover_ms".to_owned(),
            format!(
                "{}/{}",
                r("takeover_ms")["replay"],
                r("takeover_ms")["snapshot"]
            ),
            format!(
                "replay/snapshot, {} events over {} partitions (target: snapshot <= 2000); a writer's own {}/{}",
                report["volumes"]["rebuild_events"],
                report["volumes"]["partitions"],
                r("takeover_ms")["replay_writer"],
                r("takeover_ms")["snapshot_writer"]
            ),
        ),
        (
            "orchestrator_takeover_ms".to_owned(),
            format!(
                "{}/{}",
                r("orchestrator_takeover_ms")["replay"],
                r("orchestrator_takeover_ms")["snapshot"]
            ),
            format!(
                "replay/snapshot, {} approved orders ({} events), until every saga is counted",
                r("orchestrator_takeover_ms")["orders"],
                r("orchestrator_takeover_ms")["events"]
            ),
        ),
        (
            "visibility_latency_ms".to_owned(),
            pair(r("visibility_latency_ms")),
            "p50/p99 (target p99 <= 50)".to_owned(),
        ),
        (
            "sagas_per_s".to_owned(),
            r("sagas_per_s").to_string(),
            format!("{} orders (target >= 500/s)", report["volumes"]["sagas"]),
        ),
    ]);
    for (name, value, note) in rows {
        println!("{name:<52} {value:>14}   {note}");
    }
    if let Some(rss) = report["rss_mib"].as_object() {
        for (service, mib) in rss {
            println!(
                "{:<52} {:>14}   peak RSS MiB (target <= 150)",
                format!("rss {service}"),
                mib.to_string()
            );
        }
    }
    println!("\nwritten to target/bench/report.json");
}

#[cfg(test)]
mod tests {
    use super::{CommandFigures, Figures, RoundTripFigures};

    #[test]
    fn every_round_trip_has_its_figures_and_ratios_under_its_own_name() {
        let figures = Figures {
            raw_round_trip: RoundTripFigures {
                per_s: 100.0,
                ..RoundTripFigures::default()
            },
            raw_transactional_round_trip: RoundTripFigures {
                per_s: 50.0,
                failures: 2,
                ..RoundTripFigures::default()
            },
            raw_per_partition_transactional_round_trip: RoundTripFigures {
                per_s: 40.0,
                ..RoundTripFigures::default()
            },
            commands: Some(CommandFigures {
                per_s: 10.0,
                ..CommandFigures::default()
            }),
            ..Figures::default()
        };
        let report = figures.to_json("test", serde_json::json!({}), serde_json::json!({}));
        assert_eq!(report["raw_transactional_round_trip_per_s"], 50.0);
        assert!(report["raw_round_trip_latency_ms"].is_null());
        assert_eq!(
            report["volumes"]["raw_transactional_round_trip_failures"],
            2
        );
        let ratios = &report["ratios"];
        assert_eq!(ratios["commands_per_s / raw_round_trip_per_s"], 0.1);
        assert_eq!(
            ratios["commands_per_s / raw_per_partition_transactional_round_trip_per_s"],
            0.25
        );
        assert_eq!(
            ratios["raw_transactional_round_trip_per_s / raw_round_trip_per_s"],
            0.5
        );
        assert!(ratios
            .get("raw_round_trip_per_s / raw_round_trip_per_s")
            .is_none());
    }
}
