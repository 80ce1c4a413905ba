//! Guarantee 11 (answers the log never contradicts), checked the way Jepsen checks a database:
//! several command-api processes take concurrent commands on a few aggregates while a nemesis
//! forces rebalances (a process joins, one is SIGKILLed, one is frozen with SIGSTOP for longer
//! than the session timeout and thawed, one leaves with SIGTERM) and holds produce requests and
//! their answers back at the moments of handover. Every answer is recorded; at the end the final log
//! is folded the way every reader folds it, and the history is checked against it.
//!
//! `CHECKER_SECONDS` sets how long the load runs (default 40); a soak is the same test with a
//! larger number, e.g. `CHECKER_SECONDS=900 cargo test -p scenario-tests --test answers_checker`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::AggregateKind;
use platform::auth::Auth;
use platform::envelope::EventEnvelope;
use platform::log_end::LogEnds;
use platform::log_order::{LogOrder, Verdict};
use rdkafka::message::Message;
use reqwest::StatusCode;
use serde_json::json;
use support::process::{command_api_env, ServiceProcess, COMMAND_API};
use test_harness::broker::{free_port, BrokerProcess};
use test_harness::proxy::FaultProxy;
use test_harness::TestKafka;

const PARTITIONS: i32 = 3;
const SKUS: [&str; 2] = ["chk-a", "chk-b"];
const CLIENTS: usize = 32;
const SECRET: &str = "checker-secret";

/// What a client was told about one command.
#[derive(Debug, Clone)]
enum Answer {
    /// 2xx with the version the command's event got.
    Applied(u64),
    /// 409, 422 or a 503 that says nothing was appended: must never count.
    Refused(StatusCode),
    /// 202, a 503 "outcome unknown", a dropped connection, a timeout: may or may not count.
    Unknown,
}

#[derive(Debug, Clone)]
struct Operation {
    sku: &'static str,
    key: String,
    answer: Answer,
}

/// Sends the load's commands.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    admin: String,
}

impl Client {
    async fn post_stock(&self, api: SocketAddr, sku: &str, key: &str) -> Answer {
        let sent = self
            .http
            .post(format!("http://{api}/v1/inventory/{sku}/stock"))
            .bearer_auth(&self.admin)
            .header("idempotency-key", key)
            .json(&json!({"quantity": 1}))
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        let Ok(response) = sent else {
            return Answer::Unknown;
        };
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let outcome_unknown = body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("outcome-unknown"));
        match status {
            StatusCode::OK => Answer::Applied(body["version"].as_u64().expect("version")),
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => Answer::Refused(status),
            StatusCode::SERVICE_UNAVAILABLE if outcome_unknown => Answer::Unknown,
            StatusCode::SERVICE_UNAVAILABLE => Answer::Refused(status),
            StatusCode::ACCEPTED | StatusCode::TOO_MANY_REQUESTS => Answer::Unknown,
            other => panic!("{sku}/{key}: unexpected {other}: {body}"),
        }
    }
}

/// Where the command-api processes listen right now (the nemesis changes it).
type Addresses = Arc<std::sync::RwLock<Vec<SocketAddr>>>;

fn publish(addresses: &Addresses, apis: &[ServiceProcess]) {
    *addresses.write().unwrap() = apis.iter().map(|a| a.addr).collect();
}

fn signal(api: &ServiceProcess, signal: &str) {
    let pid = api.pid().expect("running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn seconds() -> u64 {
    std::env::var("CHECKER_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_answer_is_contradicted_by_the_log_through_joins_kills_freezes_and_slow_acks() {
    let (broker_port, proxy_port) = (free_port(), free_port());
    let broker = BrokerProcess::start_advertising(broker_port, proxy_port).await;
    let proxy = FaultProxy::start(proxy_port, broker.brokers()).await;
    let mut kafka = TestKafka::at(&format!("127.0.0.1:{proxy_port}"));
    kafka.settings.partitions = PARTITIONS;
    let env = command_api_env(&kafka, SECRET);
    let mut apis = vec![];
    for _ in 0..3 {
        apis.push(ServiceProcess::start(COMMAND_API, env.clone()).await);
    }
    let admin = Auth::new(SECRET, 1_000_000)
        .sign("admin", &["admin"], 3600)
        .unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        admin,
    };
    let addresses: Addresses = Arc::default();
    publish(&addresses, &apis);
    // The three processes may still be sharing out the partitions: a seed answered 202 or
    // "outcome unknown" is sent again with its key until its answer is definite.
    for sku in SKUS {
        let mut answer = Answer::Unknown;
        for _ in 0..10 {
            answer = client
                .post_stock(apis[0].addr, sku, &format!("{sku}-seed"))
                .await;
            if !matches!(answer, Answer::Unknown) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(matches!(answer, Answer::Applied(1)), "{sku}: {answer:?}");
    }

    let history: Arc<Mutex<Vec<Operation>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n_client| {
            let (client, addresses) = (client.clone(), addresses.clone());
            let (history, stop) = (history.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let sku = SKUS[(n_client + n) % SKUS.len()];
                    let key = format!("c{n_client}-{n}");
                    let api = {
                        let addresses = addresses.read().unwrap();
                        addresses[(n_client + n) % addresses.len()]
                    };
                    // A frozen or restarting process stalls or refuses: that is the point.
                    let answer = client.post_stock(api, sku, &key).await;
                    history.lock().unwrap().push(Operation { sku, key, answer });
                }
            })
        })
        .collect();

    // The nemesis: one fault every few seconds, each a handover, acks held back around it.
    let started = Instant::now();
    let mut round = 0usize;
    while started.elapsed() < Duration::from_secs(seconds()) {
        round += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Appends reach the broker late (a former owner's land after the new owner has read
        // the partition) and their acknowledgements come back late.
        proxy.delay_produce_requests(Duration::from_millis(300));
        proxy.delay_produce_responses(Duration::from_millis(300));
        match round % 4 {
            // A process joins (everyone rebalances), then leaves again with SIGTERM.
            1 => {
                apis.push(ServiceProcess::start(COMMAND_API, env.clone()).await);
                publish(&addresses, &apis);
                tokio::time::sleep(Duration::from_secs(3)).await;
                let mut leaving = apis.pop().unwrap();
                publish(&addresses, &apis);
                leaving.terminate();
                let _ = leaving.exit_within(Duration::from_secs(30)).await;
            }
            // SIGKILL mid-transaction; restarted at once.
            2 => {
                apis[0].kill().await;
                apis[0].restart().await;
                publish(&addresses, &apis);
            }
            // Frozen past the session timeout (10 s): the group moves on, and the thawed
            // process finds itself fenced.
            3 => {
                signal(&apis[1], "STOP");
                tokio::time::sleep(Duration::from_secs(13)).await;
                signal(&apis[1], "CONT");
            }
            _ => {
                apis[2].terminate();
                let _ = apis[2].exit_within(Duration::from_secs(30)).await;
                apis[2].restart().await;
                publish(&addresses, &apis);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.stop_delaying();
    }
    stop.store(true, Ordering::SeqCst);
    for running in clients {
        running.await.unwrap();
    }

    // Unknown outcomes are retried with the same key until they have an answer: the key makes
    // the retry safe, so each must now count exactly once.
    let mut history = history.lock().unwrap().clone();
    let unknown_before = history
        .iter()
        .filter(|o| matches!(o.answer, Answer::Unknown))
        .count();
    println!("checker: {unknown_before} outcomes unknown before their retry");
    for operation in history.iter_mut() {
        for _ in 0..10 {
            if !matches!(operation.answer, Answer::Unknown) {
                break;
            }
            operation.answer = client
                .post_stock(apis[0].addr, operation.sku, &operation.key)
                .await;
        }
    }
    // Every writer counts what the log-order rule rejects; on the transactional path nothing.
    for api in &apis {
        let rejected: f64 = api
            .metrics()
            .await
            .lines()
            .filter(|line| line.starts_with("log_order_rejections_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            rejected < 0.5,
            "log_order_rejections_total of a writer: {rejected}"
        );
    }
    let (chains, rejections) = fold_the_log(&kafka).await;
    check(&history, &chains, rejections);
}

/// The accepted chain of every aggregate (command id -> version, in log order) and how many
/// records the log-order rule rejected, read `read_committed` as every reader reads, once no
/// transaction is open.
async fn fold_the_log(kafka: &TestKafka) -> (HashMap<String, Vec<(String, u64)>>, usize) {
    let topic = kafka.topics().events(AggregateKind::InventoryItem);
    let settings = kafka.settings.clone();
    let records = tokio::task::spawn_blocking(move || {
        let ends = LogEnds::new(&settings).unwrap();
        let extents = ends.settled(&topic, Duration::from_secs(30)).unwrap();
        ends.read_to_end(&topic, &extents, Duration::from_secs(30))
            .unwrap()
    })
    .await
    .unwrap();
    let mut logs: HashMap<i32, LogOrder> = HashMap::new();
    let mut chains: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let mut rejections = 0;
    for message in &records {
        let envelope =
            EventEnvelope::from_headers(message.headers().map(|h| h.as_borrowed())).unwrap();
        let log = logs.entry(message.partition()).or_default();
        match log.judge(&envelope, message.offset(), message.timestamp().to_millis()) {
            Verdict::Accepted => chains
                .entry(envelope.aggregate_id.clone())
                .or_default()
                .push((envelope.command_id.clone(), envelope.version.get())),
            Verdict::Loser(_) => rejections += 1,
        }
    }
    (chains, rejections)
}

fn check(history: &[Operation], chains: &HashMap<String, Vec<(String, u64)>>, rejections: usize) {
    let mut counted: HashMap<String, Vec<u64>> = HashMap::new();
    for (sku, chain) in chains {
        let versions: Vec<u64> = chain.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            versions,
            (1..=chain.len() as u64).collect::<Vec<_>>(),
            "{sku}: versions are gap-free"
        );
        for (command, version) in chain {
            counted.entry(command.clone()).or_default().push(*version);
        }
    }
    let twice: Vec<_> = counted.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "commands that count twice: {twice:?}");
    let mut violations = vec![];
    let (mut applied, mut refused, mut unknown) = (0, 0, 0);
    for operation in history {
        let id = command_id(operation.sku, &operation.key);
        let in_log = counted.get(&id).map(|v| v[0]);
        match &operation.answer {
            Answer::Applied(version) => {
                applied += 1;
                if in_log != Some(*version) {
                    violations.push(format!("{operation:?} answered {version}, log: {in_log:?}"));
                }
            }
            Answer::Refused(status) => {
                refused += 1;
                if in_log.is_some() {
                    violations.push(format!("{operation:?} answered {status}, yet it counts"));
                }
            }
            Answer::Unknown => unknown += 1,
        }
    }
    println!(
        "checker: {} operations, {applied} applied, {refused} refused, {unknown} still unknown, {rejections} log-order rejections",
        history.len()
    );
    assert!(
        violations.is_empty(),
        "answers the log contradicts: {violations:#?}"
    );
    assert!(applied > 100, "the load made progress: {applied} applied");
    assert_eq!(
        rejections, 0,
        "fenced writers leave nothing for the log-order rule to reject"
    );
}

/// The command id the API derives for admin's request with `key`.
fn command_id(sku: &str, key: &str) -> String {
    let caller = platform::auth::Caller {
        subject: "admin".into(),
        roles: vec!["admin".into()],
    };
    command_api::routes::command_id(
        &caller,
        &format!("POST /v1/inventory/{sku}/stock"),
        Some(key),
    )
}
