//! Guarantee 5: exactly-once effect. A projector process is killed with SIGKILL at random points
//! while thousands of events stream in, and restarted each time; in the end the read models equal
//! a fold of the whole log (computed here with the domain's own aggregates): nothing missing,
//! nothing counted twice.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use domain::customer::{CustomerAggregate, CustomerCommand, CustomerState};
use domain::inventory::{InventoryCommand, InventoryItem, InventoryState};
use domain::order::{OrderAggregate, OrderCommand, OrderLine, OrderState, RejectionReason};
use domain::values::{Currency, CustomerId, CustomerName, Money, OrderId, Quantity, Sku};
use domain::{Aggregate, Current};
use sqlx::Row;
use support::*;
use tokio::process::{Child, Command};

/// A deterministic pseudo-random sequence (no dependency, reproducible failures).
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// The truth: every aggregate folded by the domain itself.
#[derive(Default)]
struct Truth {
    customers: BTreeMap<String, Current<CustomerAggregate>>,
    items: BTreeMap<String, Current<InventoryItem>>,
    orders: BTreeMap<String, Current<OrderAggregate>>,
}

fn usd(n: i64) -> Money {
    Money::new(n, Currency::try_from("USD").unwrap()).unwrap()
}

/// Decides a command on the truth, appends what it emits; returns how many events.
async fn act<A: Aggregate>(
    log: &mut EventLog,
    states: &mut BTreeMap<String, Current<A>>,
    id: &str,
    command: A::Command,
) -> usize
where
    A::Event: schemas::WireRecord,
{
    let current = states.entry(id.to_owned()).or_default();
    let Ok(events) = current.decide(command) else {
        return 0;
    };
    let n = events.len();
    for event in events {
        current.apply(&event).unwrap();
        log.append(A::KIND, id, event.event).await;
    }
    n
}

/// Writes a realistic mix of events in the background, until `target` events are in.
async fn stream_events(mut log: EventLog, target: usize) -> (EventLog, Truth) {
    let mut truth = Truth::default();
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut written = 0;
    for c in 0..30 {
        let id = format!("c{c}");
        let register = CustomerCommand::Register {
            customer_id: CustomerId::try_from(id.as_str()).unwrap(),
            name: CustomerName::try_from("C").unwrap(),
            credit_limit: usd(50_000),
        };
        written += act(&mut log, &mut truth.customers, &id, register).await;
        let sku = format!("s{c}");
        let add = InventoryCommand::AddStock {
            sku: Sku::try_from(sku.as_str()).unwrap(),
            quantity: Quantity::try_from(100).unwrap(),
        };
        written += act(&mut log, &mut truth.items, &sku, add).await;
    }
    while written < target {
        let customer = format!("c{}", rng.next(30));
        let sku = format!("s{}", rng.next(30));
        let order_id = OrderId::from_uuid(uuid::Uuid::now_v7());
        let order = order_id.to_string();
        let quantity = Quantity::try_from(1 + rng.next(5) as i64).unwrap();
        let place = OrderCommand::Place {
            order_id,
            customer_id: CustomerId::try_from(customer.as_str()).unwrap(),
            lines: vec![OrderLine {
                sku: Sku::try_from(sku.as_str()).unwrap(),
                quantity,
                unit_price: usd(100),
            }],
        };
        written += act(&mut log, &mut truth.orders, &order, place).await;
        let reserve = InventoryCommand::ReserveStock {
            sku: Sku::try_from(sku.as_str()).unwrap(),
            order_id,
            quantity,
        };
        written += act(&mut log, &mut truth.items, &sku, reserve).await;
        let credit = CustomerCommand::ReserveCredit {
            customer_id: CustomerId::try_from(customer.as_str()).unwrap(),
            order_id,
            amount: usd(100 * i64::from(quantity.get())),
        };
        written += act(&mut log, &mut truth.customers, &customer, credit).await;
        match rng.next(4) {
            0 => {
                let release = InventoryCommand::ReleaseStock {
                    sku: Sku::try_from(sku.as_str()).unwrap(),
                    order_id,
                };
                written += act(&mut log, &mut truth.items, &sku, release).await;
                let release = CustomerCommand::ReleaseCredit {
                    customer_id: CustomerId::try_from(customer.as_str()).unwrap(),
                    order_id,
                };
                written += act(&mut log, &mut truth.customers, &customer, release).await;
                let reject = OrderCommand::Reject {
                    order_id,
                    reason: RejectionReason::OutOfStock,
                    detail: String::new(),
                };
                written += act(&mut log, &mut truth.orders, &order, reject).await;
            }
            _ => {
                written += act(
                    &mut log,
                    &mut truth.orders,
                    &order,
                    OrderCommand::Approve { order_id },
                )
                .await
            }
        }
        if rng.next(10) == 0 {
            let add = InventoryCommand::AddStock {
                sku: Sku::try_from(sku.as_str()).unwrap(),
                quantity: Quantity::try_from(20).unwrap(),
            };
            written += act(&mut log, &mut truth.items, &sku, add).await;
        }
    }
    (log, truth)
}

fn spawn_projector(world: &World) -> Child {
    Command::new(env!("CARGO_BIN_EXE_projectors"))
        .arg("run")
        .env("DATABASE_URL", &world.db.url)
        .env("KAFKA_BROKERS", &world.kafka.settings.brokers)
        .env("KAFKA_TOPIC_PREFIX", &world.kafka.settings.topic_prefix)
        .env("KAFKA_PARTITIONS", PARTITIONS.to_string())
        .env("PROJECTORS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_at_random_points_ends_equal_to_a_fold_of_the_log() {
    let mut world = World::new().await;
    let log = std::mem::replace(&mut world.log, EventLog::detached(&world.kafka));
    let writer = tokio::spawn(stream_events(log, 4000));

    let mut rng = Rng(0x0dd_ba11);
    let mut kills = 0;
    while !writer.is_finished() || kills < 6 {
        let mut projector = spawn_projector(&world);
        tokio::time::sleep(Duration::from_millis(300 + rng.next(1200))).await;
        projector.kill().await.unwrap(); // SIGKILL
        kills += 1;
    }
    let (_, truth) = writer.await.unwrap();
    let mut projector = spawn_projector(&world);
    world.caught_up().await;
    projector.kill().await.unwrap();

    for (id, current) in &truth.customers {
        let CustomerState::Registered(customer) = &current.state else {
            continue;
        };
        let row = sqlx::query("SELECT credit_limit_minor, credit_reserved_minor, version FROM customers WHERE customer_id = $1")
            .bind(id)
            .fetch_one(world.pool())
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<i64, _>("credit_limit_minor"),
                row.get::<i64, _>("credit_reserved_minor"),
                row.get::<i64, _>("version")
            ),
            (
                customer.credit_limit.amount_minor(),
                customer.credit_reserved().amount_minor(),
                current.version.get() as i64
            ),
            "customer {id}"
        );
    }
    for (sku, current) in &truth.items {
        let InventoryState::Stocked(item) = &current.state else {
            continue;
        };
        let row = sqlx::query("SELECT on_hand, reserved, version FROM inventory WHERE sku = $1")
            .bind(sku)
            .fetch_one(world.pool())
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<i64, _>("on_hand"),
                row.get::<i64, _>("reserved"),
                row.get::<i64, _>("version")
            ),
            (
                item.on_hand as i64,
                item.reserved() as i64,
                current.version.get() as i64
            ),
            "item {sku}"
        );
    }
    let mut orders = 0;
    for (id, current) in &truth.orders {
        let OrderState::Placed(order) = &current.state else {
            continue;
        };
        let row = sqlx::query("SELECT status, version FROM orders WHERE order_id = $1::uuid")
            .bind(id)
            .fetch_one(world.pool())
            .await
            .unwrap();
        assert_eq!(
            (row.get::<String, _>("status"), row.get::<i64, _>("version")),
            (
                order.status.as_str().to_owned(),
                current.version.get() as i64
            ),
            "order {id}"
        );
        orders += 1;
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(rows, orders, "no extra orders");
    let anomalies: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_anomalies")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(
        anomalies, 0,
        "a replayed event would have shown up as an inert loser"
    );
    println!(
        "{kills} kills, {orders} orders, {} customers, {} items",
        truth.customers.len(),
        truth.items.len()
    );
}
