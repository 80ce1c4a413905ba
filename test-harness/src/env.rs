//! Finds the infrastructure, or explains how to start it.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const HOW: &str = "start the local infrastructure with `scripts/test` (runs the suite), or \
                   `scripts/up` and then `set -a; . ./.env.local` in this shell";

/// `KAFKA_BROKERS`, checked to accept connections.
pub fn kafka_brokers() -> String {
    let brokers = std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| panic!("KAFKA_BROKERS is not set: {HOW}"));
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    assert_reachable("Kafka broker (KAFKA_BROKERS)", &first);
    brokers
}

/// `DATABASE_URL` (a superuser URL on the test cluster), checked to accept connections.
pub fn database_url() -> String {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| panic!("DATABASE_URL is not set: {HOW}"));
    assert_reachable("PostgreSQL (DATABASE_URL)", &host_port(&url));
    url
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
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("{what} address {address:?} is invalid ({e}): {HOW}"))
        .collect();
    let reachable = addrs
        .iter()
        .any(|addr| TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok());
    assert!(reachable, "{what} at {address} is not reachable: {HOW}");
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
