//! A started container, how it is started, and how a failed start is explained.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use testcontainers::bollard::models::PortBinding;
use testcontainers::bollard::query_parameters::ListContainersOptionsBuilder;
use testcontainers::core::ContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

/// How many of a failed container's last log lines an error shows.
const LOG_LINES: usize = 50;
/// How long one readiness probe may take before it counts as "not yet".
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a container could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "could not start a container from {image}: {source}\n(is the image there? without a \
         registry build it with scripts/lib/images/build and set ORDERSTREAM_KAFKA_IMAGE / \
         ORDERSTREAM_POSTGRES_IMAGE)"
    )]
    Start {
        image: String,
        #[source]
        source: testcontainers::TestcontainersError,
    },
    #[error("the {image} container {why}; its last log lines:\n{logs}")]
    NotReady {
        image: String,
        why: String,
        logs: String,
    },
}

/// A container serving on `address` (127.0.0.1:port on the host).
#[derive(Debug)]
pub struct RunningContainer {
    pub container: ContainerAsync<GenericImage>,
    pub address: String,
}

impl RunningContainer {
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// The last `n` lines of its stdout and stderr.
    pub async fn last_log_lines(&self, n: usize) -> String {
        last_log_lines(&self.container, n).await
    }

    /// Its stdout and stderr so far.
    pub async fn logs(&self) -> String {
        logs(&self.container).await
    }
}

/// Label of one start attempt, so that a container created by an attempt that then failed (as
/// testcontainers creates before it starts) can be found and removed.
const ATTEMPT_LABEL: &str = "org.orderstream.test-harness.attempt";

/// Starts the request `request_for(host_port)` makes, with its `container_port` published on
/// `host_port` of the host's loopback only, labelled as this process's, and returns it with
/// the port. Loopback, and a port chosen here: Podman's Docker API reports a port published
/// without a host IP with an empty one, which testcontainers cannot read back, and a broker
/// must be told the port it advertises before it starts. The image is pulled (if missing)
/// before a port is picked, and a port taken meanwhile by someone else is picked again.
pub(crate) async fn start(
    image: &str,
    request_for: impl Fn(u16) -> ContainerRequest<GenericImage>,
    container_port: u16,
) -> Result<(ContainerAsync<GenericImage>, u16), ContainerError> {
    let failed = |source| ContainerError::Start {
        image: image.to_owned(),
        source,
    };
    let present = match super::engine::client() {
        Ok(docker) => docker.inspect_image(image).await.is_ok(),
        Err(_) => false,
    };
    if !present {
        let _pulled = request_for(0).pull_image().await.map_err(failed)?;
    }
    let mut attempt = 1;
    loop {
        let host_port = crate::broker::free_port();
        let label = uuid::Uuid::new_v4().to_string();
        let request = request_for(host_port)
            .with_mapped_port(host_port, ContainerPort::Tcp(container_port))
            .with_label(super::orphans::OWNER_LABEL, super::orphans::owner())
            .with_label(ATTEMPT_LABEL, label.clone())
            .with_startup_timeout(Duration::from_secs(120))
            .with_host_config_modifier(|host_config| {
                for bindings in host_config
                    .port_bindings
                    .iter_mut()
                    .flat_map(|b| b.values_mut())
                {
                    for binding in bindings.iter_mut().flatten() {
                        *binding = PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: binding.host_port.take(),
                        };
                    }
                }
            });
        match request.start().await {
            Ok(container) => return Ok((container, host_port)),
            Err(source) => {
                remove_attempt(&label).await;
                let port_taken = source.to_string().contains("address already in use");
                if !port_taken || attempt == 3 {
                    return Err(failed(source));
                }
                attempt += 1;
            }
        }
    }
}

/// Removes what a failed start attempt left (created, maybe never started).
async fn remove_attempt(label: &str) {
    let Ok(docker) = super::engine::client() else {
        return;
    };
    let filters = HashMap::from([("label", vec![format!("{ATTEMPT_LABEL}={label}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for container in docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
    {
        if let Some(id) = container.id {
            let _ = super::engine::remove(&docker, &id).await;
        }
    }
}

/// Polls `ready` until it answers true, failing (and removing the container) with its last log
/// lines when it stops running or `within` passes.
pub(crate) async fn wait_until_ready(
    image: &str,
    container: ContainerAsync<GenericImage>,
    within: Duration,
    ready: impl AsyncFn(&ContainerAsync<GenericImage>) -> bool,
) -> Result<ContainerAsync<GenericImage>, ContainerError> {
    let deadline = Instant::now() + within;
    let why = loop {
        if tokio::time::timeout(PROBE_TIMEOUT, ready(&container))
            .await
            .unwrap_or(false)
        {
            return Ok(container);
        }
        if !container.is_running().await.unwrap_or(false) {
            let code = container.exit_code().await.ok().flatten();
            break format!("exited (code {code:?}) before it served");
        }
        if Instant::now() > deadline {
            break format!("did not serve within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let logs = last_log_lines(&container, LOG_LINES).await;
    if let Err(error) = container.rm().await {
        tracing::warn!(%error, "could not remove a container that failed to start");
    }
    Err(ContainerError::NotReady {
        image: image.to_owned(),
        why,
        logs,
    })
}

/// The last `n` lines of a container's stdout and stderr (stdout first).
async fn last_log_lines(container: &ContainerAsync<GenericImage>, n: usize) -> String {
    let text = logs(container).await;
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A container's stdout and stderr so far (stdout first).
pub(crate) async fn logs(container: &ContainerAsync<GenericImage>) -> String {
    let stdout = container.stdout_to_vec().await.unwrap_or_default();
    let stderr = container.stderr_to_vec().await.unwrap_or_default();
    format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    )
}
