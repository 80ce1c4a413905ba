//! The services under test, as the release binaries `scripts/bench` built: started with the
//! bench's settings, waited for, and measured (peak resident memory from /proc).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// Settings every service gets.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) brokers: String,
    pub(crate) prefix: String,
    pub(crate) database_url: String,
    pub(crate) secret: String,
    pub(crate) partitions: i32,
    pub(crate) bin_dir: std::path::PathBuf,
}

/// A running service process.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: &'static str,
    pub(crate) addr: String,
    child: Child,
}

impl Service {
    pub(crate) async fn start(
        env: &Env,
        name: &'static str,
        addr_var: &str,
        port: u16,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(env.bin_dir.join(name));
        command
            .env("KAFKA_BROKERS", &env.brokers)
            .env("KAFKA_TOPIC_PREFIX", &env.prefix)
            .env("KAFKA_PARTITIONS", env.partitions.to_string())
            .env("DATABASE_URL", &env.database_url)
            .env("AUTH_JWT_SECRET", &env.secret)
            .env("RATE_LIMIT_PER_SECOND", "10000000")
            .env("RUST_LOG", "warn")
            .env(addr_var, &addr)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let service = Self { name, addr, child };
        service.wait_ready().await?;
        Ok(service)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        for _ in 0..600 {
            let ready = client
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{} did not become ready", self.name)
    }

    /// The CPU time the process spends during the next `window`, in percent of one core.
    pub(crate) async fn cpu_percent_over(&self, window: Duration) -> Option<f64> {
        let pid = self.child.id()?;
        let before = cpu_ticks_of(pid)?;
        tokio::time::sleep(window).await;
        let after = cpu_ticks_of(pid)?;
        // /proc counts in clock ticks, 100 a second on Linux.
        Some((after - before) as f64 / window.as_secs_f64())
    }

    /// Peak resident set size so far (VmHWM), in MiB.
    pub(crate) fn peak_rss_mib(&self) -> Option<f64> {
        peak_rss_mib_of(self.child.id()?)
    }

    /// SIGTERM, then wait for the exit.
    pub(crate) async fn stop(mut self, rss: &mut BTreeMap<String, f64>) {
        if let Some(mib) = self.peak_rss_mib() {
            let entry = rss.entry(self.name.to_owned()).or_insert(0.0);
            *entry = entry.max(mib);
        }
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// User and system CPU time of a running process so far, in clock ticks (`/proc/<pid>/stat`
/// fields 14 and 15, counted after the parenthesised command name, which may hold spaces).
fn cpu_ticks_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Peak resident memory (VmHWM) of a running process, MiB.
pub(crate) fn peak_rss_mib_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Stops `service`, recording its peak RSS under `label` (not under its name: one binary
/// measured in several roles).
pub(crate) async fn record_peak(service: Service, label: &str, rss: &mut BTreeMap<String, f64>) {
    let mut peaks = BTreeMap::new();
    let name = service.name;
    service.stop(&mut peaks).await;
    if let Some(peak) = peaks.get(name) {
        rss.insert(label.to_owned(), *peak);
    }
}
