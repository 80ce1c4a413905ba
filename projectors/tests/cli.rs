//! `projectors status` and `projectors dlq list`: what an operator sees.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use domain::inventory::InventoryEvent;
use domain::values::{Quantity, Sku};
use domain::AggregateKind;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_checkpoint_and_lag_per_partition_and_dlq_list_shows_dead_letters() {
    let mut world = World::new().await;
    let apple = |n| InventoryEvent::StockAdded {
        sku: Sku::try_from("apple").unwrap(),
        quantity: Quantity::try_from(n).unwrap(),
    };
    world
        .log
        .append(AggregateKind::InventoryItem, "apple", apple(1))
        .await;
    let headers = world
        .log
        .headers_for(AggregateKind::InventoryItem, "apple", &apple(2));
    let poison = world
        .log
        .raw(
            AggregateKind::InventoryItem,
            Some("apple"),
            Some(headers),
            b"garbage",
        )
        .await;

    // Before any projector ran: everything is lag.
    let before = cli(&world, &["status"]);
    let partition = platform::partitioner::partition_for(b"apple", PARTITIONS);
    let line = |out: &str| {
        out.lines()
            .find(|l| {
                l.starts_with("inventory")
                    && l.split_whitespace().nth(2) == Some(&partition.to_string())
            })
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(line(&before)[3..], ["0", "2", "2"], "{before}");

    let stop = run_projectors(&world);
    world.caught_up().await;
    stop.cancel();

    let after = cli(&world, &["status"]);
    assert_eq!(line(&after)[3..], ["2", "2", "0"], "{after}");
    assert!(after.contains("parked aggregates: 1"), "{after}");

    let letters = cli(&world, &["dlq", "list"]);
    let row = letters
        .lines()
        .find(|l| l.contains(".dlq"))
        .unwrap_or_else(|| panic!("{letters}"));
    assert!(
        row.contains(&world.kafka.topics().events(AggregateKind::InventoryItem)),
        "{row}"
    );
    assert!(
        row.contains(&format!(" {poison} ")) && row.contains("cannot decode"),
        "{row}"
    );
}
