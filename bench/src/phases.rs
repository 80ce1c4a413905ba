//! The run, phase by phase. Every phase uses its own topics or services, so any one of them can
//! run alone (`--only`), after the raw baselines that every figure is compared with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::AggregateKind;
use platform::config::KafkaSettings;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::http_load::{self, Api};
use crate::report::{CommandFigures, Figures, ProjectorFigures, ReadFigures};
use crate::round_trip::{self, Echo};
use crate::services::{Env, Service};
use crate::{kafka_load, pg_load, Plan};

/// Concurrent clients for throughput (commands, sagas, and the raw request/reply baseline): a
/// command waits on several broker round trips, so throughput needs many in flight.
const CLIENTS: usize = 256;
/// Items the pre-filled topics spread their events over (and the raw insert its rows).
const FILL_ITEMS: usize = 20_000;

fn step(what: &str) {
    println!("\x1b[1m[bench]\x1b[0m {what}");
}

/// What every phase shares: the infrastructure, a fresh database, the topic prefix, tokens.
pub(crate) struct Run {
    pub(crate) plan: Plan,
    admin_url: String,
    run_id: String,
    kafka: KafkaSettings,
    env: Env,
    pool: PgPool,
    auth: std::sync::Arc<platform::auth::Auth>,
    admin_token: String,
}

impl Run {
    pub(crate) async fn prepare(plan: Plan) -> anyhow::Result<Self> {
        let brokers = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS is not set")?;
        let admin_url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
        let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
        let bin_dir = std::env::current_exe()?
            .parent()
            .context("no binary directory")?
            .to_path_buf();
        let secret = format!("bench-{run_id}");
        let auth = platform::auth::Auth::new(&secret, 1_000_000);
        let admin_token = auth.sign("bench-admin", &["admin"], 3600)?;
        let kafka = KafkaSettings::local(&brokers, &format!("bench-{run_id}"), plan.partitions);
        let (database_url, pool) = fresh_database(&admin_url, &format!("bench_{run_id}")).await?;
        let env = Env {
            brokers,
            prefix: kafka.topic_prefix.clone(),
            database_url,
            secret,
            partitions: plan.partitions,
            bin_dir,
        };
        Ok(Self {
            plan,
            admin_url,
            run_id,
            kafka,
            env,
            pool,
            auth,
            admin_token,
        })
    }

    /// Raw produce and request/reply through the broker, and raw insert into Postgres, no
    /// service involved.
    pub(crate) async fn baselines(&self) -> anyhow::Result<Figures> {
        let raw_topic = format!("{}.raw", self.kafka.topic_prefix);
        platform::kafka::ensure_topics(
            &self.kafka,
            std::slice::from_ref(&raw_topic),
            self.plan.partitions,
        )
        .await?;
        step(&format!("raw produce: {} records", self.plan.raw_records));
        let (raw_produce_per_s, record_payload_bytes) =
            kafka_load::raw_produce(&self.kafka, &raw_topic, self.plan.raw_records).await?;
        let (envelope, payload) = kafka_load::order_placed()?;
        let record = (payload, envelope.to_headers());
        let mut round_trips = Vec::new();
        for echo in [
            Echo::Plain,
            Echo::Transactional,
            Echo::TransactionalPerPartition,
        ] {
            step(&format!(
                "raw request/reply ({echo:?} echo): {CLIENTS} clients for {:?}, then {}/s for {:?}",
                self.plan.throughput_for, self.plan.latency_rate, self.plan.latency_for
            ));
            round_trips.push(
                round_trip::measure(&self.kafka, echo, &self.plan, CLIENTS, record.clone()).await?,
            );
        }
        let [raw_round_trip, raw_transactional_round_trip, raw_per_partition_transactional_round_trip] =
            <[_; 3]>::try_from(round_trips)
                .map_err(|_| anyhow::anyhow!("three round trips were measured"))?;
        step(&format!("raw insert: {} rows", self.plan.raw_rows));
        let raw_insert_rows_per_s =
            pg_load::raw_insert(&self.pool, self.plan.raw_rows, FILL_ITEMS).await?;
        Ok(Figures {
            raw_produce_per_s,
            raw_round_trip,
            raw_transactional_round_trip,
            raw_per_partition_transactional_round_trip,
            record_payload_bytes,
            raw_insert_rows_per_s,
            ..Figures::default()
        })
    }

    /// Topics and a database of a phase's own: the in-memory broker slows down as its logs
    /// grow, and an earlier phase's load is not this phase's to carry.
    async fn own_phase(&self, name: &str) -> anyhow::Result<(Env, PgPool)> {
        let (database_url, pool) =
            fresh_database(&self.admin_url, &format!("bench_{}_{name}", self.run_id)).await?;
        let env = Env {
            prefix: format!("bench-{}-{name}", self.run_id),
            database_url,
            ..self.env.clone()
        };
        Ok((env, pool))
    }

    fn api(&self, commands: &Service) -> anyhow::Result<Api> {
        Ok(Api {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
            commands: commands.addr.clone(),
            queries: "127.0.0.1:18181".into(),
            admin: self.admin_token.clone(),
        })
    }

    /// command-api alone: closed-loop throughput, then latency at a fixed offered rate. Each
    /// measure gets topics and a command-api of its own: the in-memory broker's fetches slow down
    /// as a partition's log grows, so latency measured on the throughput run's logs would
    /// measure that run's leftovers.
    pub(crate) async fn command_side(
        &self,
        rss: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<CommandFigures> {
        let command_api =
            Service::start(&self.env, "command-api", "COMMAND_API_ADDR", 18180, &[]).await?;
        let api = self.api(&command_api)?;
        step(&format!("command-api idle for {:?}", self.plan.idle_for));
        let idle_cpu_percent = command_api.cpu_percent_over(self.plan.idle_for).await;
        step(&format!(
            "commands: {CLIENTS} clients for {:?}",
            self.plan.throughput_for
        ));
        let (per_s, failures) =
            http_load::commands_per_s(&api, CLIENTS, self.plan.throughput_for).await?;
        command_api.stop(rss).await;

        let (env, _pool) = &self.own_phase("latency").await?;
        let command_api =
            Service::start(env, "command-api", "COMMAND_API_ADDR", 18180, &[]).await?;
        let api = self.api(&command_api)?;
        step(&format!(
            "command latency at {}/s for {:?}",
            self.plan.latency_rate, self.plan.latency_for
        ));
        let latency = http_load::latency_at(
            &api,
            self.plan.latency_rate,
            self.plan.latency_warm_up,
            self.plan.latency_for,
        )
        .await?;
        command_api.stop(rss).await;
        Ok(CommandFigures {
            idle_cpu_percent,
            per_s,
            failures,
            latency,
        })
    }

    /// All four services: visibility of a change through query-api, then order sagas.
    pub(crate) async fn read_side(
        &self,
        rss: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<ReadFigures> {
        let (env, pool) = &self.own_phase("reads").await?;
        let command_api =
            Service::start(env, "command-api", "COMMAND_API_ADDR", 18180, &[]).await?;
        let projectors = Service::start(env, "projectors", "PROJECTORS_ADDR", 18182, &[]).await?;
        let query_api = Service::start(env, "query-api", "QUERY_API_ADDR", 18181, &[]).await?;
        let api = self.api(&command_api)?;
        step(&format!(
            "visibility: {} samples",
            self.plan.visibility_samples
        ));
        let visibility = http_load::visibility(&api, self.plan.visibility_samples).await?;
        let orchestrator = Service::start(
            env,
            "saga-orchestrator",
            "SAGA_ORCHESTRATOR_ADDR",
            18183,
            &[],
        )
        .await?;
        step(&format!(
            "sagas: {} orders, {CLIENTS} clients",
            self.plan.sagas
        ));
        let (sagas_per_s, sagas_approved) =
            http_load::sagas_per_s(&api, pool, &self.auth, self.plan.sagas, CLIENTS).await?;
        for service in [orchestrator, query_api, projectors, command_api] {
            service.stop(rss).await;
        }
        Ok(ReadFigures {
            visibility,
            sagas_per_s,
            sagas_approved,
        })
    }

    /// Projectors catching up on a pre-filled topic, then a rebuild of the whole topic.
    pub(crate) async fn projector_side(
        &self,
        rss: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<ProjectorFigures> {
        let plan = &self.plan;
        let (env, pool) = self.own_phase("fill").await?;
        let kafka = KafkaSettings {
            topic_prefix: env.prefix.clone(),
            ..self.kafka.clone()
        };
        let topics = platform::topics::Topics::new(kafka.topic_prefix.clone());
        let inventory_topic = topics.events(AggregateKind::InventoryItem);
        platform::kafka::ensure_topics(&kafka, &topics.all_events(), plan.partitions).await?;
        step(&format!(
            "pre-filling {} inventory events",
            plan.projector_events
        ));
        let span =
            kafka_load::LogSpan::ending_now(plan.rebuild_events, kafka_load::EVENTS_PER_MONTH);
        kafka_load::prefill_inventory(&kafka, plan.projector_events, FILL_ITEMS, span).await?;
        step("projectors catching up");
        let started = Instant::now();
        let projectors = Service::start(&env, "projectors", "PROJECTORS_ADDR", 18184, &[]).await?;
        wait_applied(&pool, &inventory_topic, plan.projector_events).await?;
        let events_per_s = plan.projector_events as f64 / started.elapsed().as_secs_f64();
        projectors.stop(rss).await;

        let more = plan.rebuild_events.saturating_sub(plan.projector_events);
        step(&format!(
            "pre-filling {more} more events for the rebuild ({} in all)",
            plan.rebuild_events
        ));
        kafka_load::prefill_inventory_more(&kafka, plan.projector_events, more, FILL_ITEMS, span)
            .await?;
        step("projectors rebuild inventory");
        let started = Instant::now();
        let mut rebuild = tokio::process::Command::new(env.bin_dir.join("projectors"))
            .args(["rebuild", "inventory"])
            .env("KAFKA_BROKERS", &env.brokers)
            .env("KAFKA_TOPIC_PREFIX", &kafka.topic_prefix)
            .env("DATABASE_URL", &env.database_url)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        // The process is gone once it exits: read its peak while it runs.
        let mut peak_mib = 0.0_f64;
        let status = loop {
            if let Some(pid) = rebuild.id() {
                peak_mib = peak_mib.max(crate::services::peak_rss_mib_of(pid).unwrap_or(0.0));
            }
            tokio::select! {
                status = rebuild.wait() => break status?,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        rss.insert("projectors rebuild".to_owned(), peak_mib);
        anyhow::ensure!(status.success(), "rebuild failed");
        let rebuild_events_per_s = plan.rebuild_events as f64 / started.elapsed().as_secs_f64();
        step(&format!(
            "command-api taking over {} inventory events: by replay, then from its snapshot",
            plan.rebuild_events
        ));
        let takeover = crate::takeover::measure(&env, rss, |service| self.api(service)).await?;
        Ok(ProjectorFigures {
            events_per_s,
            rebuild_events_per_s,
            takeover,
        })
    }

    /// The saga orchestrator taking over a log of `rebuild_events` order and saga events.
    pub(crate) async fn orchestrator_side(
        &self,
        rss: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<crate::orchestrator::OrchestratorFigures> {
        let (env, _pool) = self.own_phase("sagas").await?;
        let kafka = KafkaSettings {
            topic_prefix: env.prefix.clone(),
            ..self.kafka.clone()
        };
        step(&format!(
            "saga-orchestrator taking over {} order and saga events: by replay, then from the writers' snapshots",
            self.plan.rebuild_events
        ));
        crate::orchestrator::measure(&env, &kafka, self.plan.rebuild_events, rss).await
    }

    /// What the run ran on.
    pub(crate) async fn environment(&self) -> Value {
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let postgres = sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&self.pool)
            .await
            .unwrap_or_default();
        json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            // scripts/bench names the broker it started; a user's own broker is "unknown".
            "broker": std::env::var("BENCH_BROKER").unwrap_or_else(|_| "unknown".into()),
            "postgres": postgres,
            "partitions": self.plan.partitions,
            "git_commit": commit,
        })
    }
}

/// Creates (or recreates) a database; its URL and a small pool on it.
async fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<(String, PgPool)> {
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
    let url = format!("{base}/{name}");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    Ok((url, pool))
}

/// Waits until the inventory projection applied `events` events of `topic`.
async fn wait_applied(pool: &PgPool, topic: &str, events: usize) -> anyhow::Result<()> {
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
