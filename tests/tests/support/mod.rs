//! The stack a scenario runs against, and given/when/then helpers over HTTP.
//!
//! ```ignore
//! let stack = Stack::start().await;
//! stack.given_customer("ada", usd(10_000)).await;        // given
//! stack.given_stock("apple", 5).await;
//! let order = stack.place_order("ada", &[line("apple", 2, 150)]).await;   // when
//! stack.then_order(&order).is(APPROVED).await;           // then
//! ```

#![allow(dead_code, unreachable_pub)]

pub mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use domain::AggregateKind;
use platform::auth::Auth;
use platform::envelope::EventEnvelope;
use platform::log_end::LogEnds;
use process::ServiceProcess;
use rdkafka::message::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use test_harness::{TestDatabase, TestKafka};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "scenario-test-secret";
/// The partitions of every topic of a stack.
pub const PARTITIONS: i32 = 3;
/// How long a scenario waits for the saga to settle before it fails with what it saw.
const SETTLE: Duration = Duration::from_secs(60);

pub const APPROVED: &str = "APPROVED";
pub const REJECTED: &str = "REJECTED";
pub const CANCELLED: &str = "CANCELLED";
pub const PENDING: &str = "PENDING";

/// One order line: sku, quantity, unit price in cents (USD).
#[derive(Debug, Clone)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
}

pub fn line(sku: &str, quantity: i64, unit_price: i64) -> Line {
    Line {
        sku: sku.into(),
        quantity,
        unit_price,
    }
}

/// How a stack is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// `SAGA_STEP_TIMEOUT_MS` of the orchestrator. Long by default, so a busy test machine
    /// never times a step out by accident.
    pub step_timeout: Duration,
    /// Whether the inventory's writers run with the rest (a test may take them away).
    pub inventory_writers: bool,
    /// Run the orchestrator in this process (so its spans reach this process's exporter)
    /// instead of as a process a test can SIGKILL.
    pub orchestrator_in_process: bool,
    /// Extra environment for the orchestrator process.
    pub orchestrator_env: Vec<(String, String)>,
    /// Run command-api, query-api and projectors as processes too (each exactly as its binary
    /// runs), so a test can scrape each one's `/metrics` or stop it with SIGTERM.
    pub all_processes: bool,
    /// `IDEMPOTENCY_WINDOW_SECONDS` of every service (the default's 24 h unless set).
    pub command_window: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(30),
            inventory_writers: true,
            orchestrator_in_process: false,
            orchestrator_env: Vec::new(),
            all_processes: false,
            command_window: None,
        }
    }
}

/// command-api, projectors and query-api in this process (or as processes, see
/// [`Options::all_processes`]); the orchestrator as a process.
pub struct Stack {
    pub kafka: TestKafka,
    pub db: TestDatabase,
    commands: SocketAddr,
    queries: SocketAddr,
    client: reqwest::Client,
    auth: std::sync::Arc<Auth>,
    admin: String,
    stop: CancellationToken,
    inventory: Option<CancellationToken>,
    /// The orchestrator's process (`None` when it runs in this process).
    pub orchestrator: Option<ServiceProcess>,
    /// The other services' processes, with [`Options::all_processes`].
    pub command_api: Option<ServiceProcess>,
    pub query_api: Option<ServiceProcess>,
    pub projectors: Option<ServiceProcess>,
    options: Options,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn command_settings(kafka: &TestKafka, kinds: Vec<AggregateKind>) -> command_api::config::Settings {
    command_api::config::Settings {
        circuit_breaker: platform::resilience::BreakerPolicy::default(),
        addr: "127.0.0.1:0".parse().unwrap(),
        kafka: kafka.settings.clone(),
        jwt_secret: SECRET.into(),
        command_wait: Duration::from_secs(10),
        rate_limit_per_second: 10_000,
        writer_group: format!("{}.command-writers", kafka.settings.topic_prefix),
        writer_kinds: kinds,
        // Every aggregate a snapshot holds leaves memory: the tests run the writers' disk path
        // (decision 0012) on every aggregate, not only past a production-sized threshold.
        writer_memory: command_api::processor::WriterMemory {
            state_dir: std::env::temp_dir().join("orderstream-writer-state"),
            resident_aggregates: 0,
        },
    }
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let mut kafka = TestKafka::new();
        kafka.settings.partitions = PARTITIONS;
        if let Some(window) = options.command_window {
            kafka.settings.command_window = platform::log_order::CommandWindow::new(window);
        }
        let db = TestDatabase::create(Some(&projectors::startup::MIGRATOR)).await;
        let auth = Auth::new(SECRET, 1_000_000);
        let admin = auth.sign("operator", &["admin"], 3600).unwrap();
        let mut stack = Self {
            kafka,
            db,
            commands: SocketAddr::from(([127, 0, 0, 1], 0)),
            queries: SocketAddr::from(([127, 0, 0, 1], 0)),
            client: reqwest::Client::new(),
            auth,
            admin,
            stop: CancellationToken::new(),
            inventory: None,
            orchestrator: None,
            command_api: None,
            query_api: None,
            projectors: None,
            options: options.clone(),
        };
        if options.all_processes {
            stack.start_processes().await;
        } else {
            stack.start_in_process().await;
        }
        if options.orchestrator_in_process {
            stack.start_orchestrator_in_process().await;
        } else {
            stack.start_orchestrator().await;
        }
        stack.wait_ready().await;
        stack
    }

    /// command-api (customers, orders, sagas, idempotency keys; inventory separately),
    /// query-api and projectors as tasks of this process.
    async fn start_in_process(&mut self) {
        let kinds = vec![
            AggregateKind::Customer,
            AggregateKind::Order,
            AggregateKind::OrderSaga,
            AggregateKind::IdempotencyKey,
        ];
        let command_app =
            command_api::startup::Application::build(command_settings(&self.kafka, kinds))
                .await
                .unwrap();
        self.commands = command_app.local_addr().unwrap();
        let signal = self.stop.clone();
        tokio::spawn(async move {
            let _ = command_app
                .run_until(async move { signal.cancelled().await })
                .await;
        });
        let query_app = query_api::startup::Application::build(query_api::startup::Settings {
            circuit_breaker: platform::resilience::BreakerPolicy::default(),
            addr: "127.0.0.1:0".parse().unwrap(),
            database_url: self.db.url.clone(),
            jwt_secret: SECRET.into(),
            topic_prefix: self.kafka.settings.topic_prefix.clone(),
            rate_limit_per_second: 10_000,
            saga_stuck_after: self.options.step_timeout * 3,
        })
        .await
        .unwrap();
        self.queries = query_app.local_addr().unwrap();
        let signal = self.stop.clone();
        tokio::spawn(async move {
            let _ = query_app
                .run_until(async move { signal.cancelled().await })
                .await;
        });
        let projector_settings = projectors::startup::Settings {
            database_url: self.db.url.clone(),
            kafka: self.kafka.settings.clone(),
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: projectors::runner::BatchLimits::default(),
        };
        let projectors_app = projectors::startup::Application::build(projector_settings)
            .await
            .unwrap();
        let signal = self.stop.child_token();
        tokio::spawn(async move {
            let _ = projectors_app
                .run_until(async move { signal.cancelled().await })
                .await;
        });
        if self.options.inventory_writers {
            self.start_inventory_writers().await;
        }
    }

    /// The environment every service process gets (12-factor: the same names everywhere).
    pub fn service_env(&self) -> Vec<(String, String)> {
        vec![
            ("KAFKA_BROKERS".into(), self.kafka.settings.brokers.clone()),
            (
                "KAFKA_TOPIC_PREFIX".into(),
                self.kafka.settings.topic_prefix.clone(),
            ),
            ("KAFKA_PARTITIONS".into(), PARTITIONS.to_string()),
            ("DATABASE_URL".into(), self.db.url.clone()),
            ("AUTH_JWT_SECRET".into(), SECRET.into()),
            ("RATE_LIMIT_PER_SECOND".into(), "10000".into()),
            (
                "SAGA_STEP_TIMEOUT_MS".into(),
                self.options.step_timeout.as_millis().to_string(),
            ),
            (
                "SAGA_STUCK_AFTER_MS".into(),
                (self.options.step_timeout * 3).as_millis().to_string(),
            ),
            (
                "IDEMPOTENCY_WINDOW_SECONDS".into(),
                self.kafka
                    .settings
                    .command_window
                    .duration()
                    .as_secs()
                    .to_string(),
            ),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }

    /// command-api (every aggregate's writers), query-api and projectors as processes.
    async fn start_processes(&mut self) {
        let env = self.service_env();
        // command-api first: it creates the topics the others read.
        let command_api = ServiceProcess::start(process::COMMAND_API, env.clone()).await;
        let query_api = ServiceProcess::start(process::QUERY_API, env.clone()).await;
        let projectors = ServiceProcess::start(process::PROJECTORS, env).await;
        self.commands = command_api.addr;
        self.queries = query_api.addr;
        self.command_api = Some(command_api);
        self.query_api = Some(query_api);
        self.projectors = Some(projectors);
    }

    /// The inventory's partition writers, as their own command-api instance (so a test can
    /// take the inventory away and bring it back).
    pub async fn start_inventory_writers(&mut self) {
        let token = self.stop.child_token();
        let app = command_api::startup::Application::build(command_settings(
            &self.kafka,
            vec![AggregateKind::InventoryItem],
        ))
        .await
        .unwrap();
        let signal = token.clone();
        tokio::spawn(async move {
            let _ = app.run_until(async move { signal.cancelled().await }).await;
        });
        self.inventory = Some(token);
    }

    /// Stops the inventory's writers: stock commands wait on their topic, unanswered.
    pub async fn stop_inventory_writers(&mut self) {
        if let Some(token) = self.inventory.take() {
            token.cancel();
        }
        // Let the group hand the partitions back before the scenario goes on.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    /// Starts the orchestrator process (again, on the same port, after a kill).
    pub async fn start_orchestrator(&mut self) {
        match &mut self.orchestrator {
            Some(orchestrator) => orchestrator.restart().await,
            None => {
                let mut env = self.service_env();
                env.extend(self.options.orchestrator_env.iter().cloned());
                self.orchestrator = Some(ServiceProcess::start(process::ORCHESTRATOR, env).await);
            }
        }
    }

    /// The orchestrator as a task of this process, stopped with the stack.
    async fn start_orchestrator_in_process(&mut self) {
        let settings = saga_orchestrator::config::Settings {
            circuit_breaker: platform::resilience::BreakerPolicy::default(),
            kafka: self.kafka.settings.clone(),
            addr: "127.0.0.1:0".parse().unwrap(),
            step_timeout: self.options.step_timeout,
            stuck_after: self.options.step_timeout * 3,
            group: format!("{}.saga-orchestrator", self.kafka.settings.topic_prefix),
            state_dir: std::env::temp_dir().join("orderstream-saga-state"),
        };
        let app = saga_orchestrator::startup::Application::build(settings)
            .await
            .unwrap();
        let signal = self.stop.child_token();
        tokio::spawn(async move {
            let _ = app.run_until(async move { signal.cancelled().await }).await;
        });
    }

    /// SIGKILL: no goodbye, no last commit.
    pub async fn kill_orchestrator(&mut self) {
        if let Some(orchestrator) = &mut self.orchestrator {
            orchestrator.kill().await;
        }
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            let command = self
                .client
                .get(format!("http://{}/readyz", self.commands))
                .send()
                .await;
            let query = self
                .client
                .get(format!("http://{}/readyz", self.queries))
                .send()
                .await;
            if command.is_ok_and(|r| r.status() == StatusCode::OK)
                && query.is_ok_and(|r| r.status() == StatusCode::OK)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("stack not ready");
    }

    /// For requests the helpers do not cover: the client, an admin token, the APIs' URLs.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    pub fn command_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.commands)
    }

    pub fn query_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.queries)
    }

    pub fn token_for_customer(&self, customer_id: &str) -> String {
        self.auth.sign(customer_id, &["customer"], 3600).unwrap()
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.post_with(path, token, body, &[]).await
    }

    async fn post_with(
        &self,
        path: &str,
        token: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("http://{}{path}", self.commands))
            .bearer_auth(token)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// GET on query-api as admin: the status and the body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("http://{}{path}", self.queries))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// GET on query-api with any token (or none): status, content type, body.
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (StatusCode, String, Value) {
        let mut request = self.client.get(format!("http://{}{path}", self.queries));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            response.status(),
            content_type,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    // ---- given ----

    pub async fn given_customer(&self, customer_id: &str, credit_limit_cents: i64) {
        let (status, body) = self
            .post(
                "/v1/customers",
                &self.admin,
                json!({"customer_id": customer_id, "name": customer_id,
                       "credit_limit": {"amount_minor": credit_limit_cents, "currency": "USD"}}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "register {customer_id}: {body}"
        );
    }

    pub async fn given_stock(&self, sku: &str, quantity: i64) {
        let (status, body) = self
            .post(
                &format!("/v1/inventory/{sku}/stock"),
                &self.admin,
                json!({"quantity": quantity}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "stock {sku}: {body}");
    }

    /// A record on the orders topic whose envelope is fine but whose body is not Avro: every
    /// consumer of orders must dead-letter it and go on. Returns its key (a fresh order id).
    pub async fn given_poison_order_event(&self) -> String {
        use platform::envelope::Trace;
        use rdkafka::producer::FutureRecord;
        let id = uuid::Uuid::now_v7().to_string();
        let envelope = EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            event_type: "OrderPlaced".into(),
            aggregate_kind: AggregateKind::Order,
            aggregate_id: id.clone(),
            version: domain::Version::new(1),
            predecessor: None,
            command_id: "poison".into(),
            request_hash: None,
            occurred_at: chrono::Utc::now(),
            trace: Trace {
                correlation_id: "poison".into(),
                causation_id: "poison".into(),
                traceparent: None,
            },
        };
        let topic = self.kafka.topics().events(AggregateKind::Order);
        self.kafka
            .producer()
            .send(
                FutureRecord::to(&topic)
                    .key(id.as_str())
                    .payload("not avro at all")
                    .headers(envelope.to_headers()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        id
    }

    // ---- when ----

    /// Places an order as the customer; returns its id (the saga runs on).
    pub async fn place_order(&self, customer_id: &str, lines: &[Line]) -> String {
        self.place_order_with(customer_id, lines, &[]).await
    }

    /// Places an order with extra request headers (a `traceparent`, say).
    pub async fn place_order_with(
        &self,
        customer_id: &str,
        lines: &[Line],
        headers: &[(&str, &str)],
    ) -> String {
        let lines: Vec<Value> = lines
            .iter()
            .map(|l| {
                json!({"sku": l.sku, "quantity": l.quantity,
                       "unit_price": {"amount_minor": l.unit_price, "currency": "USD"}})
            })
            .collect();
        let token = self.token_for_customer(customer_id);
        let (status, body) = self
            .post_with(
                "/v1/orders",
                &token,
                json!({"customer_id": customer_id, "lines": lines}),
                headers,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "place order: {body}");
        body["order_id"].as_str().unwrap().to_owned()
    }

    /// Asks for the order's cancellation, as an admin; returns the HTTP status.
    pub async fn cancel(&self, order_id: &str) -> StatusCode {
        let (status, _) = self
            .post(
                &format!("/v1/orders/{order_id}/cancel"),
                &self.admin,
                json!({"reason": "changed my mind"}),
            )
            .await;
        status
    }

    // ---- then ----

    pub async fn order(&self, order_id: &str) -> Value {
        self.get(&format!("/v1/orders/{order_id}")).await.1
    }

    pub async fn saga(&self, order_id: &str) -> Value {
        self.get(&format!("/v1/orders/{order_id}/saga")).await.1
    }

    /// Waits until the order and its saga both show `status` (the saga's terminal state has the
    /// same name), and returns the order view. Fails with both views if they never do.
    pub async fn settled(&self, order_id: &str, status: &str) -> Value {
        self.eventually(order_id, |order, saga| {
            order["status"] == status && saga["state"] == status
        })
        .await
        .0
    }

    /// Waits until `done(order view, saga view)` holds; returns both views.
    pub async fn eventually(
        &self,
        order_id: &str,
        done: impl Fn(&Value, &Value) -> bool,
    ) -> (Value, Value) {
        let started = Instant::now();
        loop {
            let (order, saga) = (self.order(order_id).await, self.saga(order_id).await);
            if done(&order, &saga) {
                return (order, saga);
            }
            if started.elapsed() > SETTLE {
                panic!(
                    "order {order_id} did not get there in {SETTLE:?}\norder: {order:#}\nsaga: {saga:#}"
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// (on_hand, reserved, available) of a SKU, once the read model shows `reserved` settled
    /// at `expect_reserved`.
    pub async fn stock_of(&self, sku: &str, expect_reserved: i64) -> (i64, i64, i64) {
        let started = Instant::now();
        loop {
            let (status, item) = self.get(&format!("/v1/inventory/{sku}")).await;
            if status == StatusCode::OK && item["reserved"] == expect_reserved
                || started.elapsed() > SETTLE
            {
                return (
                    item["on_hand"].as_i64().unwrap_or(-1),
                    item["reserved"].as_i64().unwrap_or(-1),
                    item["available"].as_i64().unwrap_or(-1),
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Credit reserved for a customer (cents), once the read model shows `expect` (or the
    /// wait runs out and the caller's assertion reports what it shows).
    pub async fn credit_reserved(&self, customer_id: &str, expect: i64) -> i64 {
        let started = Instant::now();
        loop {
            let (_, customer) = self.get(&format!("/v1/customers/{customer_id}")).await;
            let reserved = customer["credit_reserved"]["amount_minor"]
                .as_i64()
                .unwrap_or(-1);
            if reserved == expect || started.elapsed() > SETTLE {
                return reserved;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The event types one aggregate's stream holds, in order, read straight from its topic
    /// (with the log-order rule, as every reader applies it): the proof that a step acted once.
    pub async fn events_of(&self, kind: AggregateKind, aggregate_id: &str) -> Vec<String> {
        self.accepted_events(kind, aggregate_id)
            .await
            .into_iter()
            .map(|envelope| envelope.event_type)
            .collect()
    }

    /// The envelopes of the aggregate's events that count (log order), oldest first. Reads its
    /// partition once no transaction is open on it, until the reader's position reaches the
    /// end: the offset after the last event stays short of the end when a commit marker or
    /// aborted records come last.
    pub async fn accepted_events(
        &self,
        kind: AggregateKind,
        aggregate_id: &str,
    ) -> Vec<EventEnvelope> {
        let topic = self.kafka.topics().events(kind);
        let partition = platform::partitioner::partition_for(aggregate_id.as_bytes(), PARTITIONS);
        let ends = LogEnds::new(&self.kafka.settings).unwrap();
        let records = tokio::task::spawn_blocking(move || {
            let extents: Vec<_> = ends
                .settled(&topic, Duration::from_secs(15))
                .unwrap()
                .into_iter()
                .filter(|e| e.partition == partition)
                .collect();
            assert_eq!(extents.len(), 1, "partition {partition} of {topic}");
            ends.read_to_end(&topic, &extents, Duration::from_secs(10))
                .unwrap()
        })
        .await
        .unwrap();
        let mut judge = platform::log_order::LogOrder::default();
        let mut accepted_events = vec![];
        for message in records {
            let envelope =
                EventEnvelope::from_headers(message.headers().map(|h| h.as_borrowed())).unwrap();
            let accepted =
                judge.judge(&envelope, message.offset(), message.timestamp().to_millis())
                    == platform::log_order::Verdict::Accepted;
            if accepted && envelope.aggregate_id == aggregate_id {
                accepted_events.push(envelope);
            }
        }
        accepted_events
    }

    /// The orchestrator's process.
    pub fn orchestrator(&self) -> &ServiceProcess {
        self.orchestrator
            .as_ref()
            .expect("the orchestrator runs as a process")
    }

    /// The orchestrator's Prometheus text.
    pub async fn orchestrator_metrics(&self) -> String {
        for _ in 0..100 {
            if let Ok(response) = self
                .client
                .get(self.orchestrator().url("/metrics"))
                .send()
                .await
            {
                return response.text().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the orchestrator serves no metrics");
    }

    /// The orchestrator's metrics once `ready` holds for them (gauges move on a short tick).
    pub async fn orchestrator_metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.orchestrator_metrics().await;
            if ready(&text) || started.elapsed() > Duration::from_secs(10) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The saga's steps as `name=status` strings, in order.
    pub fn steps(saga: &Value) -> Vec<String> {
        saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}={}",
                    s["name"].as_str().unwrap(),
                    s["status"].as_str().unwrap()
                )
            })
            .collect()
    }
}

/// The sum of a metric's samples whose labels contain every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counts how often `event_type` occurs.
pub fn count(events: &[String], event_type: &str) -> usize {
    events.iter().filter(|e| *e == event_type).count()
}
