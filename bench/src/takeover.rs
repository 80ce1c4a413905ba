//! Takeover: how long a command-api that starts on a grown log takes to answer a command on
//! every partition, first replaying every event (no snapshot yet: the events were pre-filled
//! by the raw producer), then restoring from the snapshot that first takeover wrote.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::try_join_all;
use serde_json::json;

use crate::http_load::Api;
use crate::services::{Env, Service};

/// What the takeover phase measured.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TakeoverFigures {
    /// Process start to a command answered on every partition, replaying every event.
    pub(crate) replay_ms: f64,
    /// The same, restoring from the snapshot the first takeover wrote.
    pub(crate) snapshot_ms: f64,
    /// An inventory writer's own takeover (fencing, restore, replay), on average over the
    /// partitions, as `writer_takeover_seconds` reports it, replaying every event: no process
    /// start, no group join.
    pub(crate) replay_writer_ms: Option<f64>,
    /// The same, from the snapshot.
    pub(crate) snapshot_writer_ms: Option<f64>,
}

/// One inventory item on each of the `partitions` partitions, among the pre-filled ones.
fn one_sku_per_partition(partitions: i32) -> Vec<String> {
    let mut found: BTreeMap<i32, String> = BTreeMap::new();
    for n in 0.. {
        let sku = format!("bench-sku-{n:06}");
        let partition = platform::partitioner::partition_for(sku.as_bytes(), partitions);
        found.entry(partition).or_insert(sku);
        if found.len() == usize::try_from(partitions).unwrap_or(0) {
            break;
        }
    }
    found.into_values().collect()
}

/// Starts command-api (inventory and idempotency-key writers only, answering 202 after 1 s) on
/// `env` and waits until a command on every partition is answered 200; the time that took, the
/// inventory writers' own mean takeover, and the service (still running).
async fn take_over(
    env: &Env,
    api_for: impl Fn(&Service) -> anyhow::Result<Api>,
) -> anyhow::Result<(Duration, Option<f64>, Service)> {
    let started = Instant::now();
    let service = Service::start(
        env,
        "command-api",
        "COMMAND_API_ADDR",
        18180,
        &[
            (
                "COMMAND_WRITER_KINDS",
                "inventory,idempotency-keys".to_owned(),
            ),
            ("COMMAND_WAIT_MS", "1000".to_owned()),
        ],
    )
    .await?;
    let api = api_for(&service)?;
    let skus = one_sku_per_partition(env.partitions);
    try_join_all(skus.iter().map(|sku| answered(&api, sku))).await?;
    let elapsed = started.elapsed();
    let writer_ms = mean_writer_takeover_ms(&api).await;
    Ok((elapsed, writer_ms, service))
}

/// The inventory writers' mean `writer_takeover_seconds`, in ms, from `/metrics`.
async fn mean_writer_takeover_ms(api: &Api) -> Option<f64> {
    let text = api
        .client
        .get(format!("http://{}/metrics", api.commands))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains("aggregate=\"inventory\""))
            .find_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let (sum, count) = (
        value("writer_takeover_seconds_sum{")?,
        value("writer_takeover_seconds_count{")?,
    );
    (count > 0.0).then(|| sum / count * 1000.0)
}

/// Adds one unit of `sku` with one Idempotency-Key, asking again every 20 ms while the answer
/// is 202 (the writer is still taking over) or 503.
async fn answered(api: &Api, sku: &str) -> anyhow::Result<()> {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let response = api
            .client
            .post(format!("http://{}/v1/inventory/{sku}/stock", api.commands))
            .bearer_auth(&api.admin)
            .header("Idempotency-Key", &key)
            .json(&json!({"quantity": 1}))
            .send()
            .await;
        match response.map(|r| r.status().as_u16()) {
            Ok(200) => return Ok(()),
            Ok(202 | 503) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(status) => anyhow::bail!("{sku}: {status}"),
        }
    }
    anyhow::bail!("{sku}: no answer within 10 minutes")
}

/// Both takeovers, one after the other, on the log of `env`; each command-api's peak RSS is
/// recorded on its own: a takeover by replay is the fallback, the one from the snapshot is what
/// a deployment does.
pub(crate) async fn measure(
    env: &Env,
    rss: &mut BTreeMap<String, f64>,
    api_for: impl Fn(&Service) -> anyhow::Result<Api> + Copy,
) -> anyhow::Result<TakeoverFigures> {
    let (replay, replay_writer_ms, service) = take_over(env, api_for)
        .await
        .context("takeover by replay")?;
    crate::services::record_peak(service, "command-api (takeover, replay)", rss).await;
    let (snapshot, snapshot_writer_ms, service) = take_over(env, api_for)
        .await
        .context("takeover from the snapshot")?;
    crate::services::record_peak(service, "command-api (takeover, snapshot)", rss).await;
    Ok(TakeoverFigures {
        replay_ms: replay.as_secs_f64() * 1000.0,
        snapshot_ms: snapshot.as_secs_f64() * 1000.0,
        replay_writer_ms,
        snapshot_writer_ms,
    })
}
