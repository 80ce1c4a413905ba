//! Guarantee 3 (answers the log never contradicts) on the short path: when the partition's
//! writer runs in the process that took the request, it answers the waiting handler itself as
//! soon as its transaction has committed, and writes no reply to the replies topic. These
//! answers must be exactly the ones the log holds: the accepted command's event at the position
//! its token names, the refused command nowhere.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use domain::AggregateKind;
use platform::consistency::{ConsistencyToken, TokenKey};
use reqwest::StatusCode;
use support::*;

/// The sum of a counter's series on a Prometheus page (0 when it has none).
fn counter(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_given_in_process_by_the_writer_are_the_committed_ones() {
    let app = TestApp::spawn().await;
    let key = TokenKey::from_secret(SECRET);
    let mut answered_positions = Vec::new();
    for version in 1..=5 {
        let stock = add_stock(&app, "apple", &[]).await;
        assert_eq!(stock.status, StatusCode::OK, "{:?}", stock.body);
        assert_eq!(stock.body["version"], version);
        let token = stock.body["consistency_token"].as_str().unwrap();
        let positions: Vec<_> = ConsistencyToken::decode(token, &key)
            .unwrap()
            .positions()
            .collect();
        answered_positions.extend(positions);
    }
    let stale = add_stock(&app, "apple", &[("if-match", "\"2\"")]).await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{:?}", stale.body);

    let page = app.metrics_text().await;
    assert_eq!(
        counter(&page, "replies_answered_in_process_total"),
        6.0,
        "the writer answers every request of its own process: {page}"
    );
    let stored = events(&app.kafka, AggregateKind::InventoryItem).await;
    let committed: Vec<_> = stored
        .iter()
        .map(|s| (AggregateKind::InventoryItem, s.partition, s.offset))
        .collect();
    assert_eq!(
        answered_positions, committed,
        "each 200 names its committed event, and the 409 appended nothing"
    );
    assert_eq!(
        count(&app.kafka, &app.kafka.topics().replies()),
        0,
        "answers given in process are not written to the replies topic as well"
    );
    let versions: Vec<u64> = stored
        .iter()
        .map(|s| s.envelope.clone().unwrap().version.get())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    app.stop().await;
}
