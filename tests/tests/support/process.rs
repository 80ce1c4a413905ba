//! A service running as its own process, exactly as its binary runs: started with its
//! environment, found healthy on its port, stopped with SIGTERM (graceful) or SIGKILL.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use reqwest::StatusCode;
use test_harness::TestKafka;
use tokio::process::{Child, Command};

/// The environment of a command-api process writing every aggregate kind on `kafka`'s
/// namespace (its partition count included), signing with `secret`, with no rate limit to
/// speak of and an 8 s command wait.
pub fn command_api_env(kafka: &TestKafka, secret: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BROKERS".into(), kafka.settings.brokers.clone()),
        (
            "KAFKA_TOPIC_PREFIX".into(),
            kafka.settings.topic_prefix.clone(),
        ),
        (
            "KAFKA_PARTITIONS".into(),
            kafka.settings.partitions.to_string(),
        ),
        ("AUTH_JWT_SECRET".into(), secret.into()),
        ("RATE_LIMIT_PER_SECOND".into(), "100000".into()),
        ("COMMAND_WAIT_MS".into(), "8000".into()),
        ("RUST_LOG".into(), "warn".into()),
    ]
}

/// Which binary, and the variable that tells it where to listen.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    pub name: &'static str,
    pub path: &'static str,
    pub addr_var: &'static str,
}

pub const COMMAND_API: Binary = Binary {
    name: "command-api",
    path: env!("CARGO_BIN_EXE_command-api-under-test"),
    addr_var: "COMMAND_API_ADDR",
};
pub const QUERY_API: Binary = Binary {
    name: "query-api",
    path: env!("CARGO_BIN_EXE_query-api-under-test"),
    addr_var: "QUERY_API_ADDR",
};
pub const PROJECTORS: Binary = Binary {
    name: "projectors",
    path: env!("CARGO_BIN_EXE_projectors-under-test"),
    addr_var: "PROJECTORS_ADDR",
};
pub const ORCHESTRATOR: Binary = Binary {
    name: "saga-orchestrator",
    path: env!("CARGO_BIN_EXE_orchestrator-under-test"),
    addr_var: "SAGA_ORCHESTRATOR_ADDR",
};

/// One running (or stopped) service process.
pub struct ServiceProcess {
    binary: Binary,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Where it serves HTTP (kept across restarts).
    pub addr: SocketAddr,
    client: reqwest::Client,
}

impl ServiceProcess {
    /// Starts the binary and waits for `/healthz`. The port was free a moment ago; if another
    /// process took it meanwhile, the service exits and another port is tried.
    pub async fn start(binary: Binary, env: Vec<(String, String)>) -> Self {
        let mut service = Self {
            binary,
            env,
            child: None,
            addr: free_addr(),
            client: reqwest::Client::new(),
        };
        service.restart().await;
        service
    }

    /// Starts it again (after a stop or a kill), on the same port when possible.
    pub async fn restart(&mut self) {
        for _ in 0..5 {
            let mut child = Command::new(self.binary.path)
                .envs(self.env.iter().cloned())
                .env(self.binary.addr_var, self.addr.to_string())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            for _ in 0..600 {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let health = self.client.get(self.url("/healthz")).send().await;
                if health.is_ok_and(|r| r.status() == StatusCode::OK) {
                    self.child = Some(child);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill().await;
            self.addr = free_addr();
        }
        panic!("{} did not start", self.binary.name);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{} /metrics",
            self.binary.name
        );
        response.text().await.unwrap()
    }

    /// Its metrics once `ready` holds for them (gauges and lag move on their own ticks).
    pub async fn metrics_when(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        for _ in 0..300 {
            text = self.metrics().await;
            if ready(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{}: {what} never showed in:\n{text}", self.binary.name);
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends SIGTERM (what an orchestrator such as Kubernetes sends before it kills).
    pub fn terminate(&self) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the service runs");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Waits for the process to exit; `None` if it did not within `limit` (then it is killed).
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("the service runs");
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => Some(status.unwrap()),
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        }
    }

    /// SIGKILL: no goodbye, no last commit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], test_harness::broker::free_port()))
}
