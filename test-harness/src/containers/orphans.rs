//! Containers left by test processes that were killed before their exit hook ran.
//!
//! Every container the harness starts carries [`OWNER_LABEL`]: the host, the process id and the
//! process's start time (so a reused pid is not mistaken for the owner). A container whose
//! owner on this host is gone is removed by the next process that starts containers.

use std::collections::HashMap;

use testcontainers::bollard::query_parameters::ListContainersOptionsBuilder;

pub const OWNER_LABEL: &str = "org.orderstream.test-harness.owner";

/// Written where a process's start time cannot be read (no /proc): such containers are never
/// judged orphans, by anyone.
const UNKNOWN_START: &str = "unknown";

/// `host/pid/start-time` of this process.
pub fn owner() -> String {
    owner_of(std::process::id())
        .unwrap_or_else(|| format!("{}/{}/{UNKNOWN_START}", host(), std::process::id()))
}

/// Removes the containers whose owner is a process of this host that is gone; returns their
/// ids.
pub async fn remove_orphans() -> Result<Vec<String>, testcontainers::bollard::errors::Error> {
    if owner_of(std::process::id()).is_none() {
        // No /proc here: whether an owner is alive cannot be told.
        return Ok(Vec::new());
    }
    let docker = super::engine::client()?;
    let filters = HashMap::from([("label", vec![OWNER_LABEL])]);
    let listed = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut removed = Vec::new();
    for container in listed {
        let (Some(id), Some(labels)) = (container.id, container.labels) else {
            continue;
        };
        let Some(owner) = labels.get(OWNER_LABEL) else {
            continue;
        };
        if !is_orphan(owner, &host(), owner_of) {
            continue;
        }
        if super::engine::remove(&docker, &id).await.is_ok() {
            tracing::info!(%id, %owner, "removed a container left by a killed test process");
            removed.push(id);
        }
    }
    Ok(removed)
}

/// Whether a container owned by `owner` (`host/pid/start-time`) has lost its owner: it was
/// started on `this_host` and that process is gone (`current_owner` of its pid differs).
/// Containers of other hosts are never judged.
pub fn is_orphan(
    owner: &str,
    this_host: &str,
    current_owner: impl Fn(u32) -> Option<String>,
) -> bool {
    let mut parts = owner.rsplitn(3, '/');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != this_host || start == UNKNOWN_START {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    current_owner(pid).as_deref() != Some(owner)
}

/// `host/pid/start-time` of a running process, from /proc; `None` when it is not running.
fn owner_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 22 (start time) is the 20th after the name.
    let start = after_name.split_whitespace().nth(19)?;
    Some(format!("{}/{pid}/{start}", host()))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_is_orphaned_when_its_owner_is_gone_or_replaced() {
        let alive = |pid: u32| (pid == 7).then(|| "box/7/1234".to_owned());
        assert!(!is_orphan("box/7/1234", "box", alive), "owner alive");
        assert!(is_orphan("box/8/99", "box", alive), "owner gone");
        assert!(
            is_orphan("box/7/1000", "box", alive),
            "pid reused by another process"
        );
        assert!(!is_orphan("other/8/99", "box", alive), "another host's");
        assert!(!is_orphan("garbage", "box", alive));
        assert!(
            !is_orphan("box/8/unknown", "box", alive),
            "owner's start time unknown"
        );
    }

    #[test]
    fn this_process_owns_what_it_labels() {
        let me = owner();
        assert!(!is_orphan(&me, &host(), owner_of));
    }
}
