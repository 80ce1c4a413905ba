//! A dedicated Nisshi broker process for tests that must kill, restart or front the broker.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A broker this test owns. Killed when dropped.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    pub port: u16,
    advertised_port: u16,
    storage: String,
    log: PathBuf,
}

impl BrokerProcess {
    /// Starts a broker on a free loopback port with `storage` (e.g. `memory://nisshi/` or a
    /// `postgres://` URL).
    pub async fn start(storage: &str) -> Self {
        let port = free_port();
        Self::start_advertising(storage, port, port).await
    }

    /// Starts a broker listening on `port` that tells clients to connect to `advertised_port`
    /// (where a [`crate::FaultProxy`] forwards to it).
    pub async fn start_advertising(storage: &str, port: u16, advertised_port: u16) -> Self {
        let log =
            std::env::temp_dir().join(format!("orderstream-{}-broker.log", crate::unique_name()));
        let mut broker = Self {
            child: None,
            port,
            advertised_port,
            storage: storage.to_owned(),
            log,
        };
        broker.spawn().await;
        broker
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the broker gets no chance to flush anything it has not already made durable.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log file");
        let child = Command::new(crate::env::nisshi_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
            .args([
                "broker",
                "--kafka-listener-url",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--kafka-advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", self.advertised_port),
                "--storage-engine",
                &self.storage,
                "--group-initial-rebalance-delay",
                "100ms",
            ])
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the Nisshi broker");
        self.child = Some(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("broker on port {} did not start; log:\n{tail}", self.port);
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
