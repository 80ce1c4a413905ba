//! Guarantees 5 and 6 on the read side, against the real broker and Postgres: events fold into
//! the read models; inert events and version gaps are reported, never applied; a record that
//! cannot be decoded or handled goes to `<topic>.dlq` with its source headers and parks its
//! aggregate, while every other aggregate keeps flowing.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use domain::customer::CustomerEvent;
use domain::inventory::InventoryEvent;
use domain::order::{OrderEvent, OrderLine, RejectionReason};
use domain::values::{Currency, CustomerId, CustomerName, Money, OrderId, Quantity, Sku};
use domain::AggregateKind;
use platform::partitioner::partition_for;
use rdkafka::message::{Headers, Message};
use sqlx::Row;
use support::*;

fn usd(n: i64) -> Money {
    Money::new(n, Currency::try_from("USD").unwrap()).unwrap()
}
fn sku(s: &str) -> Sku {
    Sku::try_from(s).unwrap()
}
fn qty(n: i64) -> Quantity {
    Quantity::try_from(n).unwrap()
}
fn cid(s: &str) -> CustomerId {
    CustomerId::try_from(s).unwrap()
}

fn registered(id: &str, limit: i64) -> CustomerEvent {
    CustomerEvent::CustomerRegistered {
        customer_id: cid(id),
        name: CustomerName::try_from("Ada").unwrap(),
        credit_limit: usd(limit),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_models_fold_every_kind_of_event() {
    let mut world = World::new().await;
    let stop = run_projectors(&world);
    let order_a = OrderId::from_uuid(uuid::Uuid::now_v7());
    let order_b = OrderId::from_uuid(uuid::Uuid::now_v7());
    let log = &mut world.log;
    log.append(AggregateKind::Customer, "c-1", registered("c-1", 1000))
        .await;
    for event in [
        CustomerEvent::CreditReserved {
            customer_id: cid("c-1"),
            order_id: order_a,
            amount: usd(300),
        },
        CustomerEvent::CreditLimitExceeded {
            customer_id: cid("c-1"),
            order_id: order_b,
            requested: usd(900),
            available: usd(700),
        },
        CustomerEvent::CreditReserved {
            customer_id: cid("c-1"),
            order_id: order_b,
            amount: usd(100),
        },
        CustomerEvent::CreditReleased {
            customer_id: cid("c-1"),
            order_id: order_b,
            amount: usd(100),
        },
    ] {
        log.append(AggregateKind::Customer, "c-1", event).await;
    }
    for event in [
        InventoryEvent::StockAdded {
            sku: sku("apple"),
            quantity: qty(10),
        },
        InventoryEvent::StockAdded {
            sku: sku("apple"),
            quantity: qty(5),
        },
        InventoryEvent::StockReserved {
            sku: sku("apple"),
            order_id: order_a,
            quantity: qty(4),
        },
        InventoryEvent::StockReservationRejected {
            sku: sku("apple"),
            order_id: order_b,
            requested: qty(99),
            available: 11,
        },
        InventoryEvent::StockReserved {
            sku: sku("apple"),
            order_id: order_b,
            quantity: qty(1),
        },
        InventoryEvent::StockReleased {
            sku: sku("apple"),
            order_id: order_b,
            quantity: qty(1),
        },
    ] {
        log.append(AggregateKind::InventoryItem, "apple", event)
            .await;
    }
    let line = OrderLine {
        sku: sku("apple"),
        quantity: qty(4),
        unit_price: usd(75),
    };
    let a = order_a.to_string();
    let b = order_b.to_string();
    log.append(
        AggregateKind::Order,
        &a,
        OrderEvent::OrderPlaced {
            order_id: order_a,
            customer_id: cid("c-1"),
            lines: vec![line.clone()],
            total: usd(300),
        },
    )
    .await;
    log.append(
        AggregateKind::Order,
        &a,
        OrderEvent::OrderApproved { order_id: order_a },
    )
    .await;
    log.append(
        AggregateKind::Order,
        &a,
        OrderEvent::OrderCancellationRequested {
            order_id: order_a,
            reason: None,
        },
    )
    .await;
    log.append(
        AggregateKind::Order,
        &a,
        OrderEvent::OrderCancelled { order_id: order_a },
    )
    .await;
    log.append(
        AggregateKind::Order,
        &b,
        OrderEvent::OrderPlaced {
            order_id: order_b,
            customer_id: cid("c-1"),
            lines: vec![line],
            total: usd(300),
        },
    )
    .await;
    log.append(
        AggregateKind::Order,
        &b,
        OrderEvent::OrderRejected {
            order_id: order_b,
            reason: RejectionReason::OutOfStock,
            detail: "line 0".into(),
        },
    )
    .await;
    world.caught_up().await;

    let customer = sqlx::query("SELECT credit_limit_minor, credit_reserved_minor, currency, version FROM customers WHERE customer_id = 'c-1'")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(customer.get::<i64, _>("credit_limit_minor"), 1000);
    assert_eq!(customer.get::<i64, _>("credit_reserved_minor"), 300);
    assert_eq!(customer.get::<i64, _>("version"), 5);
    let item = sqlx::query("SELECT on_hand, reserved, version FROM inventory WHERE sku = 'apple'")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(
        (
            item.get::<i64, _>("on_hand"),
            item.get::<i64, _>("reserved"),
            item.get::<i64, _>("version")
        ),
        (15, 4, 6)
    );
    let orders = sqlx::query("SELECT order_id::text AS id, status, rejection_reason, rejection_detail, version, total_minor FROM orders ORDER BY created_at")
        .fetch_all(world.pool())
        .await
        .unwrap();
    let summary: Vec<(String, String, Option<String>, i64)> = orders
        .iter()
        .map(|r| {
            (
                r.get("id"),
                r.get("status"),
                r.get("rejection_reason"),
                r.get("version"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (a, "CANCELLED".into(), None, 4),
            (b, "REJECTED".into(), Some("OUT_OF_STOCK".into()), 2)
        ]
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inert_losers_are_skipped_and_version_gaps_reported_never_applied() {
    let mut world = World::new().await;
    let stop = run_projectors(&world);
    world
        .log
        .append(
            AggregateKind::InventoryItem,
            "apple",
            InventoryEvent::StockAdded {
                sku: sku("apple"),
                quantity: qty(10),
            },
        )
        .await;
    let winner = world.log.next_envelope(
        AggregateKind::InventoryItem,
        "apple",
        &InventoryEvent::StockAdded {
            sku: sku("apple"),
            quantity: qty(1),
        },
    );
    let add = |n| {
        schemas::encode(&InventoryEvent::StockAdded {
            sku: sku("apple"),
            quantity: qty(n),
        })
        .unwrap()
    };
    world
        .log
        .raw(
            AggregateKind::InventoryItem,
            Some("apple"),
            Some(winner.to_headers()),
            &add(1),
        )
        .await;
    // A zombie's event at the taken version 2 (following v1), then a gap: version 9.
    let mut zombie = winner.clone();
    zombie.event_id = uuid::Uuid::now_v7();
    world
        .log
        .raw(
            AggregateKind::InventoryItem,
            Some("apple"),
            Some(zombie.to_headers()),
            &add(1000),
        )
        .await;
    let mut gap = winner.clone();
    gap.event_id = uuid::Uuid::now_v7();
    gap.version = domain::Version::new(9);
    gap.predecessor = Some(winner.event_id);
    world
        .log
        .raw(
            AggregateKind::InventoryItem,
            Some("apple"),
            Some(gap.to_headers()),
            &add(1000),
        )
        .await;
    world.caught_up().await;

    let on_hand: i64 = sqlx::query_scalar("SELECT on_hand FROM inventory WHERE sku = 'apple'")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(
        on_hand, 11,
        "neither the loser nor the gapped event was applied"
    );
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM projection_anomalies ORDER BY \"offset\"")
            .fetch_all(world.pool())
            .await
            .unwrap();
    assert_eq!(kinds, ["inert-loser", "version-gap"]);
    stop.cancel();
}

/// Every record on `<topic>.dlq` right now, read until the reader's position reaches each
/// partition's end (not by counting `high - low` records, which markers would break if dead
/// letters were ever written in transactions).
async fn dead_letters(world: &World, kind: AggregateKind) -> Vec<rdkafka::message::OwnedMessage> {
    let dlq = platform::topics::Topics::dead_letters(&world.kafka.topics().events(kind));
    let ends = platform::log_end::LogEnds::new(&world.kafka.settings).unwrap();
    tokio::task::spawn_blocking(move || {
        let extents = ends.extents(&dlq, Duration::from_secs(5)).unwrap();
        ends.read_to_end(&dlq, &extents, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap()
}

fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> String {
    message
        .headers()
        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Writes a broken first event for "poison" (and a good second one behind it), plus events of
/// another aggregate on the same partition, then checks the dead letter, the parking and that
/// the other aggregate flowed.
async fn poison_is_dead_lettered_and_parks_its_aggregate(
    break_it: impl FnOnce(&mut World) -> (Option<rdkafka::message::OwnedHeaders>, Vec<u8>),
    expected_error: &str,
) {
    let mut world = World::new().await;
    let stop = run_projectors(&world);
    // "poison" and a neighbour on the same partition.
    let neighbour = (0..1000)
        .map(|i| format!("n{i}"))
        .find(|n| partition_for(n.as_bytes(), PARTITIONS) == partition_for(b"poison", PARTITIONS))
        .unwrap();
    let (headers, payload) = break_it(&mut world);
    let poison_offset = world
        .log
        .raw(
            AggregateKind::InventoryItem,
            Some("poison"),
            headers,
            &payload,
        )
        .await;
    world
        .log
        .append(
            AggregateKind::InventoryItem,
            "poison",
            InventoryEvent::StockAdded {
                sku: sku("poison"),
                quantity: qty(2),
            },
        )
        .await;
    world
        .log
        .append(
            AggregateKind::InventoryItem,
            &neighbour,
            InventoryEvent::StockAdded {
                sku: sku(&neighbour),
                quantity: qty(3),
            },
        )
        .await;
    world.caught_up().await;

    let letters = dead_letters(&world, AggregateKind::InventoryItem).await;
    assert_eq!(
        letters.len(),
        1,
        "exactly the broken record was dead-lettered"
    );
    let letter = &letters[0];
    assert_eq!(
        header(letter, "dlq-source-topic"),
        world.kafka.topics().events(AggregateKind::InventoryItem)
    );
    assert_eq!(
        header(letter, "dlq-source-partition"),
        partition_for(b"poison", PARTITIONS).to_string()
    );
    assert_eq!(
        header(letter, "dlq-source-offset"),
        poison_offset.to_string()
    );
    assert!(
        header(letter, "dlq-error").contains(expected_error),
        "{}",
        header(letter, "dlq-error")
    );
    assert_eq!(header(letter, "dlq-attempts"), "1");
    assert_eq!(
        letter.payload(),
        Some(payload.as_slice()),
        "the original value is kept"
    );

    let neighbour_stock: Option<i64> =
        sqlx::query_scalar("SELECT on_hand FROM inventory WHERE sku = $1")
            .bind(&neighbour)
            .fetch_optional(world.pool())
            .await
            .unwrap();
    assert_eq!(neighbour_stock, Some(3), "other aggregates keep flowing");
    let poison_row: Option<i64> =
        sqlx::query_scalar("SELECT on_hand FROM inventory WHERE sku = 'poison'")
            .fetch_optional(world.pool())
            .await
            .unwrap();
    assert_eq!(
        poison_row, None,
        "the later event of the poisoned aggregate is not applied out of order"
    );
    let parked: Vec<String> = sqlx::query_scalar("SELECT aggregate_id FROM parked_events")
        .fetch_all(world.pool())
        .await
        .unwrap();
    assert_eq!(parked, ["poison"], "it is recorded, waiting");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_bytes_go_to_the_dead_letter_topic_and_park_their_aggregate() {
    poison_is_dead_lettered_and_parks_its_aggregate(
        |world| {
            let headers = world.log.headers_for(
                AggregateKind::InventoryItem,
                "poison",
                &InventoryEvent::StockAdded {
                    sku: sku("poison"),
                    quantity: qty(1),
                },
            );
            (Some(headers), b"definitely not avro".to_vec())
        },
        "cannot decode",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_schema_fingerprint_goes_to_the_dead_letter_topic() {
    poison_is_dead_lettered_and_parks_its_aggregate(
        |world| {
            let headers = world.log.headers_for(
                AggregateKind::InventoryItem,
                "poison",
                &InventoryEvent::StockAdded {
                    sku: sku("poison"),
                    quantity: qty(1),
                },
            );
            (
                Some(headers),
                vec![0xC3, 0x01, 9, 9, 9, 9, 9, 9, 9, 9, 2, 4],
            )
        },
        "no known schema",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_that_fails_sends_the_event_to_the_dead_letter_topic() {
    // A well-formed reservation for an item that never had stock: the fold refuses it.
    poison_is_dead_lettered_and_parks_its_aggregate(
        |world| {
            let event = InventoryEvent::StockReserved {
                sku: sku("poison"),
                order_id: OrderId::from_uuid(uuid::Uuid::now_v7()),
                quantity: qty(1),
            };
            let headers = world
                .log
                .headers_for(AggregateKind::InventoryItem, "poison", &event);
            (Some(headers), schemas::encode(&event).unwrap())
        },
        "handler failed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_without_a_key_goes_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let mut world = World::new().await;
    let stop = run_projectors(&world);
    let event = InventoryEvent::StockAdded {
        sku: sku("apple"),
        quantity: qty(1),
    };
    let headers = world
        .log
        .headers_for(AggregateKind::InventoryItem, "keyless", &event);
    world
        .log
        .raw(
            AggregateKind::InventoryItem,
            None,
            Some(headers),
            &schemas::encode(&event).unwrap(),
        )
        .await;
    let after = (0..1000)
        .map(|i| format!("a{i}"))
        .find(|a| partition_for(a.as_bytes(), PARTITIONS) == 0)
        .unwrap();
    world
        .log
        .append(
            AggregateKind::InventoryItem,
            &after,
            InventoryEvent::StockAdded {
                sku: sku(&after),
                quantity: qty(7),
            },
        )
        .await;
    world.caught_up().await;
    let letters = dead_letters(&world, AggregateKind::InventoryItem).await;
    assert_eq!(letters.len(), 1);
    assert!(header(&letters[0], "dlq-error").contains("no key"));
    let stock: i64 = sqlx::query_scalar("SELECT on_hand FROM inventory WHERE sku = $1")
        .bind(&after)
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(stock, 7);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_more_parked_aggregates_than_are_read_whole_a_parked_aggregate_still_waits() {
    // Up to 1,000 parked aggregates are read whole and matched in memory; past that each batch
    // asks for its own ids. 1,500 parked aggregates (as that many poison events would leave)
    // take the second path.
    let mut world = World::new().await;
    sqlx::query(
        "INSERT INTO parked_aggregates (projection, aggregate_id, dlq_topic, reason, parked_at) \
         SELECT 'inventory@g1', 'held-' || n, 'dlq', 'poison', now() FROM generate_series(1, 1500) AS n",
    )
    .execute(world.pool())
    .await
    .unwrap();
    let stop = run_projectors(&world);
    for id in ["held-1400", "free"] {
        world
            .log
            .append(
                AggregateKind::InventoryItem,
                id,
                InventoryEvent::StockAdded {
                    sku: sku(id),
                    quantity: qty(3),
                },
            )
            .await;
    }
    world.caught_up().await;

    let stock: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, on_hand FROM inventory ORDER BY sku")
            .fetch_all(world.pool())
            .await
            .unwrap();
    assert_eq!(
        stock,
        [("free".to_owned(), 3)],
        "only the free item is applied"
    );
    let parked: Vec<String> = sqlx::query_scalar("SELECT aggregate_id FROM parked_events")
        .fetch_all(world.pool())
        .await
        .unwrap();
    assert_eq!(parked, ["held-1400"], "the parked item's event waits");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_order_placed_by_the_same_command_is_an_inert_loser_not_a_phantom_order() {
    // A keyed retry that drew a new order id: writers and the saga judge the second OrderPlaced
    // a loser (its command id already created an order in this partition); so must projections.
    let mut world = World::new().await;
    let stop = run_projectors(&world);
    let a = OrderId::from_uuid(uuid::Uuid::now_v7());
    let partition = partition_for(a.to_string().as_bytes(), PARTITIONS);
    let b = std::iter::repeat_with(|| OrderId::from_uuid(uuid::Uuid::now_v7()))
        .find(|id| partition_for(id.to_string().as_bytes(), PARTITIONS) == partition)
        .unwrap();
    let placed = |order_id: OrderId| OrderEvent::OrderPlaced {
        order_id,
        customer_id: cid("c-1"),
        lines: vec![OrderLine {
            sku: sku("apple"),
            quantity: qty(1),
            unit_price: usd(100),
        }],
        total: usd(100),
    };
    let first = world
        .log
        .next_envelope(AggregateKind::Order, &a.to_string(), &placed(a));
    world
        .log
        .raw(
            AggregateKind::Order,
            Some(&a.to_string()),
            Some(first.to_headers()),
            &schemas::encode(&placed(a)).unwrap(),
        )
        .await;
    let mut phantom = world
        .log
        .next_envelope(AggregateKind::Order, &b.to_string(), &placed(b));
    phantom.command_id = first.command_id.clone();
    world
        .log
        .raw(
            AggregateKind::Order,
            Some(&b.to_string()),
            Some(phantom.to_headers()),
            &schemas::encode(&placed(b)).unwrap(),
        )
        .await;
    world.caught_up().await;
    let orders: Vec<String> = sqlx::query_scalar("SELECT order_id::text FROM orders")
        .fetch_all(world.pool())
        .await
        .unwrap();
    assert_eq!(orders, [a.to_string()], "no phantom order");
    let anomaly: (String, String) = sqlx::query_as(
        "SELECT aggregate_id, kind FROM projection_anomalies WHERE projection LIKE 'orders@%'",
    )
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert_eq!(anomaly, (b.to_string(), "inert-loser".to_owned()));
    stop.cancel();
}
