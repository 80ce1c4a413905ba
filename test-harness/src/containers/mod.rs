//! Apache Kafka and PostgreSQL in containers, for a test process that was given neither.
//!
//! When `KAFKA_BROKERS` or `DATABASE_URL` is not set and a Docker-compatible engine answers
//! (`DOCKER_HOST`, or the default socket), [`shared`] starts what is missing with testcontainers,
//! once per test process, shared by every test of the process (each test still takes its own
//! topic prefix and database). Both start at once: the broker's JVM is the long pole.
//!
//! Why not testcontainers' own lifecycle alone: containers kept for the whole process live in a
//! static, and statics are never dropped, so they are removed by an exit hook instead
//! ([`registry`]). A process killed before its exit hook leaves them behind; every process that
//! starts containers first removes those of owners that are gone ([`orphans`]).
//!
//! # Layout
//!
//! - [`engine`]: where the engine is, and whether it answers.
//! - [`images`]: which images (settings, with the official images as defaults).
//! - [`kafka`], [`postgres`]: start one container and wait until it serves, or fail with its
//!   last log lines.
//! - [`registry`]: the containers this process owns, removed at exit.
//! - [`orphans`]: the owner label, and the sweep of containers whose owner is gone.

pub mod engine;
pub mod images;
pub mod kafka;
pub mod orphans;
pub mod postgres;
pub mod registry;
mod running;

use std::future::Future;
use std::sync::OnceLock;

pub use images::Images;
pub use running::{ContainerError, RunningContainer};

/// Where the containers of this process serve.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Bootstrap servers, when Kafka runs in a container.
    pub brokers: Option<String>,
    /// A superuser URL, when Postgres runs in a container.
    pub database_url: Option<String>,
}

/// Starts (once per process) a container for each of Kafka and Postgres the environment does
/// not name, and returns where they serve. Panics with the container's last log lines when one
/// does not start: a test cannot go on without it. A failed start is not retried by the next
/// test (each would wait minutes for the same failure): every later call panics with the same
/// error.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        let need_kafka = std::env::var_os("KAFKA_BROKERS").is_none();
        let need_postgres = std::env::var_os("DATABASE_URL").is_none();
        let images = Images::from_env();
        block_on(move || start_both(images, need_kafka, need_postgres))
    });
    match started {
        Ok(shared) => shared,
        Err(error) => panic!("{error}"),
    }
}

async fn start_both(
    images: Images,
    need_kafka: bool,
    need_postgres: bool,
) -> Result<Shared, String> {
    match orphans::remove_orphans().await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(
                count = removed.len(),
                "removed containers left by killed test processes"
            )
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "could not look for containers left by killed test processes")
        }
    }
    let kafka = async {
        match need_kafka {
            true => kafka::start(&images.kafka, &[]).await.map(Some),
            false => Ok(None),
        }
    };
    let postgres = async {
        match need_postgres {
            true => postgres::start(&images.postgres).await.map(Some),
            false => Ok(None),
        }
    };
    match tokio::join!(kafka, postgres) {
        (Ok(kafka), Ok(postgres)) => Ok(Shared {
            brokers: kafka.map(registry::keep),
            database_url: postgres.map(registry::keep),
        }),
        (kafka, postgres) => {
            // One started and the other did not: the test cannot run, so nothing is kept.
            let mut failures = Vec::new();
            for started in [kafka, postgres] {
                match started {
                    Ok(Some(running)) => {
                        if let Err(error) = running.container.rm().await {
                            tracing::warn!(%error, "could not remove a container");
                        }
                    }
                    Ok(None) => {}
                    Err(error) => failures.push(error.to_string()),
                }
            }
            Err(failures.join("\n\n"))
        }
    }
}

/// Runs the future `make` makes on the containers' own runtime, from any thread (also a test's
/// runtime thread, where a nested `block_on` would panic): the containers outlive every test's
/// runtime.
pub fn block_on<F, Fut>(make: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send,
    Fut: Future,
    Fut::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime().block_on(make()))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-containers")
            .enable_all()
            .build()
            .expect("a runtime for the test containers")
    })
}
