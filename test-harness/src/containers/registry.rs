//! The containers this process keeps for its whole life, removed when it exits.
//!
//! They live in a static, and statics are never dropped, so removal is an exit hook: libc's
//! `atexit` runs when the test binary returns from `main` or calls `exit` (libtest does both,
//! also after failed tests; a panicking test does not end the process). Ctrl-C is handled by
//! testcontainers' watchdog; a SIGKILL by the next process's sweep ([`super::orphans`]).

use std::sync::{Mutex, Once};
use std::time::Duration;

use futures::future::join_all;
use testcontainers::{ContainerAsync, GenericImage};

use super::RunningContainer;

static KEPT: Mutex<Vec<ContainerAsync<GenericImage>>> = Mutex::new(Vec::new());

/// Keeps `container` until the process exits and returns its address.
pub fn keep(running: RunningContainer) -> String {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: `remove_kept` is an `extern "C" fn()` that does not unwind (it catches any
        // panic); registering it has no other precondition.
        #[allow(unsafe_code)]
        let refused = unsafe { libc::atexit(remove_kept) } != 0;
        if refused {
            tracing::warn!("atexit refused the hook: this process's containers outlive it until the next run's sweep");
        }
    });
    let RunningContainer { container, address } = running;
    KEPT.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(container);
    address
}

/// The ids of the containers this process keeps.
pub fn kept_ids() -> Vec<String> {
    KEPT.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|container| container.id().to_owned())
        .collect()
}

/// Removes every kept container (at most 20 s in all: an exit must not hang on the engine).
extern "C" fn remove_kept() {
    let _ = std::panic::catch_unwind(|| {
        let kept: Vec<_> =
            std::mem::take(&mut *KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        if kept.is_empty() {
            return;
        }
        // By id, within the time limit: a `ContainerAsync` dropped by a timed-out removal would
        // remove itself again, without a limit.
        let ids: Vec<String> = kept.iter().map(|c| c.id().to_owned()).collect();
        kept.into_iter().for_each(std::mem::forget);
        super::block_on(move || async move {
            let Ok(docker) = super::engine::client() else {
                return;
            };
            let removals = ids.iter().map(|id| super::engine::remove(&docker, id));
            let _ = tokio::time::timeout(Duration::from_secs(20), join_all(removals)).await;
        });
    });
}
