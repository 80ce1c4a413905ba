//! HTTP load through the services: closed-loop throughput, open-loop latency at a fixed
//! offered rate, read-your-write visibility, and order sagas end to end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load::{self, percentiles, Latency, Percentiles};

#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) client: reqwest::Client,
    pub(crate) commands: String,
    pub(crate) queries: String,
    pub(crate) admin: String,
}

impl Api {
    /// POST with the admin token; the status and body.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: &Value,
        token: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .client
            .post(format!("http://{}{path}", self.commands))
            .bearer_auth(token)
            .json(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Set-up POSTs: retried with one Idempotency-Key until they are done (a slow broker can
    /// turn the answer into 202 "queued", which is not a failure).
    pub(crate) async fn post_until_done(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        for _ in 0..60 {
            let response = self
                .client
                .post(format!("http://{}{path}", self.commands))
                .bearer_auth(&self.admin)
                .header("Idempotency-Key", &key)
                .json(body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            match status {
                200 | 201 => return Ok(answer),
                202 => tokio::time::sleep(Duration::from_millis(500)).await,
                _ => anyhow::bail!("{path}: {status} {answer}"),
            }
        }
        anyhow::bail!("{path}: still queued after a minute")
    }

    async fn add_stock(&self, sku: &str) -> anyhow::Result<(u16, Value)> {
        self.post(
            &format!("/v1/inventory/{sku}/stock"),
            &json!({"quantity": 1}),
            &self.admin,
        )
        .await
    }
}

/// Commands accepted per second with `clients` concurrent clients for `duration`, and the
/// commands not accepted.
pub(crate) async fn commands_per_s(
    api: &Api,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(f64, usize)> {
    let api = api.clone();
    load::closed_loop(clients, duration, move |client, n| {
        let api = api.clone();
        async move {
            let sku = format!("tput-{client:03}-{:02}", n % 32);
            matches!(api.add_stock(&sku).await, Ok((200, _)))
        }
    })
    .await
}

/// Open loop: one command every `1/rate` s for `warm_up + duration`, whatever the answers do;
/// the latencies of the commands sent after `warm_up` that were accepted.
pub(crate) async fn latency_at(
    api: &Api,
    rate: u32,
    warm_up: Duration,
    duration: Duration,
) -> anyhow::Result<Latency> {
    load::open_loop(rate, warm_up, duration, |n| {
        let api = api.clone();
        async move {
            let sku = format!("lat-{:04}", n % 2000);
            matches!(api.add_stock(&sku).await, Ok((200, _)))
        }
    })
    .await
}

/// From a command's acknowledgement to query-api returning the change (no consistency token:
/// how long a reader that does not wait sees the old value).
pub(crate) async fn visibility(api: &Api, samples: usize) -> anyhow::Result<Option<Percentiles>> {
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let sku = format!("vis-{i:05}");
        let (status, body) = api.add_stock(&sku).await?;
        let acknowledged = Instant::now();
        if status != 200 {
            continue;
        }
        let version = body["version"].as_i64().unwrap_or(1);
        loop {
            let response = api
                .client
                .get(format!("http://{}/v1/inventory/{sku}", api.queries))
                .bearer_auth(&api.admin)
                .send()
                .await?;
            if response.status().is_success() {
                let view: Value = response.json().await?;
                if view["version"].as_i64().unwrap_or(0) >= version {
                    break;
                }
            }
            if acknowledged.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("a change did not become visible in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(acknowledged.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(percentiles(latencies))
}

/// Customers the saga phase spreads its orders over: a shop's orders come from many customers,
/// and one customer's credit is one aggregate whose commands are decided one after another.
const SAGA_CUSTOMERS: usize = 64;

/// Places `orders` one-line orders from `clients` concurrent clients (each a customer of its
/// own, with its own token) and waits until every saga finished; sagas per second from the
/// first order to the last approval.
pub(crate) async fn sagas_per_s(
    api: &Api,
    pool: &sqlx::PgPool,
    auth: &platform::auth::Auth,
    orders: usize,
    clients: usize,
) -> anyhow::Result<(f64, i64)> {
    let mut tokens = Vec::with_capacity(SAGA_CUSTOMERS);
    for n in 0..SAGA_CUSTOMERS {
        let customer = format!("bench-customer-{n:02}");
        // The largest credit limit the API takes (`MAX_AMOUNT_MINOR`): never the bottleneck.
        api.post_until_done(
            "/v1/customers",
            &json!({"customer_id": customer, "name": "Bench",
                    "credit_limit": {"amount_minor": 10_000_000_000i64, "currency": "USD"}}),
        )
        .await?;
        api.post_until_done(
            &format!("/v1/inventory/saga-{n:02}/stock"),
            &json!({"quantity": 1_000_000}),
        )
        .await?;
        tokens.push((customer.clone(), auth.sign(&customer, &["customer"], 3600)?));
    }
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (api, next) = (api.clone(), next.clone());
        let (customer, token) = tokens[client % SAGA_CUSTOMERS].clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders {
                    return;
                }
                let body = json!({"customer_id": customer, "lines": [{"sku": format!("saga-{:02}", i % SAGA_CUSTOMERS),
                    "quantity": 1, "unit_price": {"amount_minor": 100, "currency": "USD"}}]});
                let _ = api.post("/v1/orders", &body, &token).await;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let target = i64::try_from(orders)?;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
            .fetch_one(pool)
            .await?;
        if done >= target {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("sagas did not finish in 10 minutes ({done} of {orders})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let approved: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'APPROVED'")
        .fetch_one(pool)
        .await?;
    Ok((orders as f64 / elapsed, approved))
}
