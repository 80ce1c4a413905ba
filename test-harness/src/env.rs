//! Finds the infrastructure, or explains how to start it.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const HOW: &str = "either set it to running infrastructure (`scripts/up`, then `set -a; . \
                   ./.env.local` in this shell; or `scripts/test`, which runs the suite), or \
                   give the harness a Docker-compatible engine (Docker, or Podman's API \
                   service) through DOCKER_HOST or /var/run/docker.sock, and it starts Kafka \
                   and PostgreSQL containers itself";

/// `KAFKA_BROKERS` if set (checked to accept connections), else a broker in a container.
pub fn kafka_brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(brokers) => {
            let first = brokers.split(',').next().unwrap_or_default().to_owned();
            assert_reachable("Kafka broker (KAFKA_BROKERS)", &first);
            brokers
        }
        Err(_) => from_containers("KAFKA_BROKERS", |shared| shared.brokers.clone()),
    }
}

/// `DATABASE_URL` (a superuser URL) if set (checked to accept connections), else Postgres in a
/// container.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            assert_reachable("PostgreSQL (DATABASE_URL)", &host_port(&url));
            url
        }
        Err(_) => from_containers("DATABASE_URL", |shared| shared.database_url.clone()),
    }
}

fn from_containers(
    variable: &str,
    pick: impl Fn(&crate::containers::Shared) -> Option<String>,
) -> String {
    if !crate::containers::engine::reachable() {
        let engine = crate::containers::engine::address()
            .map_or("no engine is configured".to_owned(), |a| {
                format!("no engine answers at {a}")
            });
        panic!("{variable} is not set and {engine}: {HOW}");
    }
    pick(crate::containers::shared())
        .unwrap_or_else(|| panic!("{variable} was not set when the containers were started"))
}

fn host_port(url: &str) -> String {
    let after_scheme = url.split("://").nth(1).unwrap_or(url);
    let after_user = after_scheme.rsplit('@').next().unwrap_or(after_scheme);
    after_user
        .split(['/', '?'])
        .next()
        .unwrap_or(after_user)
        .to_owned()
}

fn assert_reachable(what: &str, address: &str) {
    if let Err(error) = address.to_socket_addrs() {
        panic!("{what} address {address:?} is invalid ({error}): {HOW}");
    }
    assert!(
        accepts_connections(address),
        "{what} at {address} is not reachable: {HOW}"
    );
}

/// Whether something accepts TCP connections at `host:port` (within 2 s per address).
pub(crate) fn accepts_connections(address: &str) -> bool {
    address.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn finds_host_and_port_in_database_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5433/db?x=1"),
            "127.0.0.1:5433"
        );
        assert_eq!(host_port("postgres://u:p@localhost:5432"), "localhost:5432");
    }
}
