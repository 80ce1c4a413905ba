//! Long work on the services' tokio runtime without holding its threads from the other tasks
//! (decision 0014). A service runs every partition worker and its HTTP server on one runtime with
//! as many threads as cores; a task that does not return to the scheduler for seconds keeps the
//! tasks queued on its thread (HTTP requests, other partitions) and every timer waiting.

use std::sync::LazyLock;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

/// Hands the thread back to tokio now and then; a task that reads records calls it after
/// each one it handled. librdkafka's `recv` is ready at once while records are queued, so a
/// task reading a backlog (a takeover's replay) would otherwise never return to the scheduler:
/// the other tasks queued on its thread would wait, and so would every timer, which tokio fires
/// only when a thread looks up from its tasks (an orchestrator's 200 ms tick ran every 1-2 s
/// while it replayed, so it paced its two topics seldom). Each call takes a unit of the task's
/// cooperative budget, and a task whose budget is spent yields here.
///
/// Call it after a record is handled (in a `select!` arm's body, not in a branch's future; not
/// inside a timeout around `recv`): a record received by a future dropped while it yields would
/// be lost (librdkafka's position is already past it).
pub async fn take_turn() {
    tokio::task::coop::consume_budget().await;
}

/// Runs `work`, seconds of decoding and file reads at a takeover (checking a copied snapshot,
/// taking its aggregates on), without holding a runtime thread from the other tasks: on a
/// multi-threaded runtime the thread's queued tasks move to another thread first
/// (`block_in_place`); elsewhere (a current-thread runtime in a test or tool) it just runs.
/// For work that needs the caller's `&mut` state, where `spawn_blocking` would need it moved.
///
/// At most one such work per core runs at once in the process (as many as ran when they held
/// runtime threads): a process taking over dozens of partitions would otherwise decode all
/// their snapshots at once, each on a thread of its own, with a peak of memory to match.
pub async fn blocking<R>(work: impl FnOnce() -> R) -> R {
    let _turn = BLOCKING_TURNS.acquire().await;
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Runs `work`, up to tens of milliseconds of work on a local file (a writer's or the
/// orchestrator's `platform::spill` file: its expiry pass, or waiting for a batch written
/// behind), without holding a runtime thread from the other tasks, as [`blocking`] does but
/// from synchronous code and without waiting for a turn: it is short, and must not queue behind
/// a takeover's seconds of decoding. The calling task itself waits for it.
pub fn off_the_runtime<R>(work: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// One turn per core for [`blocking`] work (a closed semaphore is never made: an error from
/// `acquire` is impossible, and the work then runs anyway).
static BLOCKING_TURNS: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
});
