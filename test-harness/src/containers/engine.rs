//! The Docker-compatible engine testcontainers talks to, found the way testcontainers finds it.

use std::os::unix::net::UnixStream;
use std::path::Path;

use testcontainers::bollard::query_parameters::RemoveContainerOptionsBuilder;
use testcontainers::bollard::Docker;

/// Where an engine would be: `DOCKER_HOST`, else the first socket that exists of Docker's
/// default, `$XDG_RUNTIME_DIR/.docker/run`, `~/.docker/run` and `~/.docker/desktop` (rootless
/// Docker, Docker Desktop), as testcontainers looks for them.
pub fn address() -> Option<String> {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return Some(host);
    }
    let mut candidates = vec!["/var/run/docker.sock".to_owned()];
    for (variable, under) in [
        ("XDG_RUNTIME_DIR", ".docker/run/docker.sock"),
        ("HOME", ".docker/run/docker.sock"),
        ("HOME", ".docker/desktop/docker.sock"),
    ] {
        if let Some(dir) = std::env::var_os(variable) {
            candidates.push(Path::new(&dir).join(under).display().to_string());
        }
    }
    candidates
        .into_iter()
        .find(|path| Path::new(path).exists())
        .map(|path| format!("unix://{path}"))
}

/// Whether an engine accepts connections at [`address`].
pub fn reachable() -> bool {
    address().is_some_and(|address| answers(&address))
}

/// A client of the engine at [`address`] (the one testcontainers uses).
pub fn client() -> Result<Docker, testcontainers::bollard::errors::Error> {
    match address() {
        Some(address) => Docker::connect_with_host(&address),
        None => Docker::connect_with_defaults(),
    }
}

/// Removes a container (stopping it first) and its anonymous volumes.
pub(crate) async fn remove(
    docker: &Docker,
    id: &str,
) -> Result<(), testcontainers::bollard::errors::Error> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    docker.remove_container(id, Some(options)).await
}

fn answers(address: &str) -> bool {
    if let Some(path) = address.strip_prefix("unix://") {
        return UnixStream::connect(path).is_ok();
    }
    let host_port = address
        .strip_prefix("tcp://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    crate::env::accepts_connections(host_port)
}
