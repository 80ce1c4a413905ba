//! The Docker-compatible engine testcontainers talks to.

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Where an engine would be: `DOCKER_HOST`, else Docker's default socket if it exists.
pub fn address() -> Option<String> {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return Some(host);
    }
    let default = "/var/run/docker.sock";
    Path::new(default)
        .exists()
        .then(|| format!("unix://{default}"))
}

/// Whether an engine accepts connections at [`address`].
pub fn reachable() -> bool {
    address().is_some_and(|address| answers(&address))
}

fn answers(address: &str) -> bool {
    if let Some(path) = address.strip_prefix("unix://") {
        return UnixStream::connect(path).is_ok();
    }
    let host_port = address
        .strip_prefix("tcp://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    host_port
        .parse()
        .is_ok_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}
