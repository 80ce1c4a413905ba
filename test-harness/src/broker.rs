//! A dedicated Apache Kafka process for tests that must kill, restart or front the broker.
//!
//! Started through `scripts/lib/kafka-node`, the same definition of a local broker that
//! `scripts/test` and `scripts/up` use, so these tests exercise the real broker configured as
//! the rest of the suite sees it. Its data lives on disk under `/var/tmp` (or
//! `TEST_BROKER_DIR`), never on tmpfs: a restarted broker must find every record it
//! acknowledged, as a production broker would after a process crash.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A broker this test owns. Killed, and its data removed, when dropped (kept when the test
/// panicked, for a post-mortem).
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    pub port: u16,
    advertised_port: u16,
    dir: PathBuf,
}

impl BrokerProcess {
    /// Starts a broker on a free loopback port.
    pub async fn start() -> Self {
        let port = free_port();
        Self::start_advertising(port, port).await
    }

    /// Starts a broker listening on `port` that tells clients to connect to `advertised_port`
    /// (where a [`crate::FaultProxy`] forwards to it). The broker's own traffic to itself
    /// (transaction markers) uses a separate listener, so the proxy only sits between clients
    /// and the broker.
    pub async fn start_advertising(port: u16, advertised_port: u16) -> Self {
        let root = std::env::var_os("TEST_BROKER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = root.join(format!("orderstream-broker-{}", crate::unique_name()));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let mut broker = Self {
            child: None,
            port,
            advertised_port,
            dir,
        };
        broker.spawn().await;
        broker
    }

    /// Where its data and logs (`logs/server.log`) are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the broker gets no chance to flush or close anything.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Kills the broker and starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .expect("broker output file");
        let child = Command::new(kafka_node_script())
            .arg(&self.dir)
            .arg(self.port.to_string())
            .arg(self.advertised_port.to_string())
            .env("KAFKA_HEAP", "384m")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("output handle")))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn scripts/lib/kafka-node");
        self.child = Some(child);
        // A JVM broker formats its storage and elects itself first: allow a minute on a loaded
        // 2-core machine. Its client port opens only once it serves.
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "Kafka on port {} exited ({status}); its logs:\n{}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "Kafka on port {} did not start within 60 s; its logs:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// The last lines of the broker's output and server log.
    pub fn log_tail(&self) -> String {
        ["stdout.log", "logs/server.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                format!("--- {name}\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        // A failed test keeps the broker's data and logs for a post-mortem.
        if std::thread::panicking() {
            eprintln!("broker data and logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `scripts/lib/kafka-node` in this repository.
fn kafka_node_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/kafka-node")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
