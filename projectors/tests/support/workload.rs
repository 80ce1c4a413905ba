//! A realistic stream of events, produced by deciding commands with the domain's own aggregates
//! (so every event is valid), and the truth they fold to.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::collections::BTreeMap;

use domain::customer::{CustomerAggregate, CustomerCommand, CustomerState};
use domain::inventory::{InventoryCommand, InventoryItem, InventoryState};
use domain::order::{OrderAggregate, OrderCommand, OrderLine, OrderState, RejectionReason};
use domain::values::{Currency, CustomerId, CustomerName, Money, OrderId, Quantity, Sku};
use domain::{Aggregate, Current};
use sqlx::{PgPool, Row};

use super::EventLog;

/// A deterministic pseudo-random sequence (no dependency, reproducible failures).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// The truth: every aggregate folded by the domain itself.
#[derive(Default)]
pub struct Truth {
    pub customers: BTreeMap<String, Current<CustomerAggregate>>,
    pub items: BTreeMap<String, Current<InventoryItem>>,
    pub orders: BTreeMap<String, Current<OrderAggregate>>,
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
pub async fn stream_events(mut log: EventLog, target: usize) -> (EventLog, Truth) {
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

/// Asserts that the read models (the views) equal the truth; returns the number of orders.
pub async fn assert_read_models_equal(pool: &PgPool, truth: &Truth) -> i64 {
    for (id, current) in &truth.customers {
        let CustomerState::Registered(customer) = &current.state else {
            continue;
        };
        let row = sqlx::query("SELECT credit_limit_minor, credit_reserved_minor, version FROM customers WHERE customer_id = $1")
            .bind(id)
            .fetch_one(pool)
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
            .fetch_one(pool)
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
            .fetch_one(pool)
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
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows, orders, "no extra orders");
    orders
}
