//! A restarted test broker answers where it answered before. Its transaction coordinator
//! resumes the markers of a transaction a crash left half-committed, addressed to the endpoint
//! the metadata log recorded for the broker; a broker that came back on another inter-broker
//! port never received them, and every `read_committed` reader of those partitions stalled at
//! the open transaction (the broker-outage test in command-api failed in CI this way).

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use test_harness::BrokerProcess;

/// The `listeners` line of the broker's configuration as last written.
fn listeners(broker: &BrokerProcess) -> String {
    std::fs::read_to_string(broker.dir().join("server.properties"))
        .expect("server.properties")
        .lines()
        .find(|l| l.starts_with("listeners="))
        .expect("a listeners line")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_keeps_its_internal_and_controller_ports() {
    let mut broker = BrokerProcess::start().await;
    let before = listeners(&broker);
    broker.restart().await;
    assert_eq!(
        listeners(&broker),
        before,
        "the restart moved the broker's listeners"
    );
}
