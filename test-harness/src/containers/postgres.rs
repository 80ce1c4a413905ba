//! A PostgreSQL container with the settings of scripts' throwaway test cluster.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use testcontainers::{GenericImage, ImageExt};

use super::images::name_and_tag;
use super::running::{self, ContainerError, RunningContainer};

const PORT: u16 = 5432;

/// Starts Postgres from `image` (trust auth for the `postgres` superuser, durability off as in
/// scripts' `start_postgres NAME PORT fast`) and waits until it accepts a connection.
///
/// Readiness is a real connection, not a log line: the official image logs "ready to accept
/// connections" twice (once for its init-only server), an image built here once.
pub async fn start(image: &str) -> Result<RunningContainer, ContainerError> {
    let (name, tag) = name_and_tag(image);
    let request_for = |_| {
        GenericImage::new(name, tag)
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            .with_cmd([
                "postgres",
                "-c",
                "max_connections=400",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
    };
    let (container, host_port) = running::start(image, request_for, PORT).await?;
    let url = format!("postgres://postgres@127.0.0.1:{host_port}/postgres");
    let container =
        running::wait_until_ready(image, container, Duration::from_secs(60), async |_| {
            PgConnection::connect(&url).await.is_ok()
        })
        .await?;
    Ok(RunningContainer {
        container,
        address: url,
    })
}
