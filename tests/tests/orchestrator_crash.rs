//! Guarantee 8 under crashes: the orchestrator is killed with SIGKILL right after every step
//! the saga records and restarted each time; every saga still reaches the terminal state it
//! reaches without crashes, and every reservation, release, approval and rejection acted
//! exactly once (counted in the participants' own event streams).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use domain::AggregateKind;
use platform::envelope::EventEnvelope;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use support::*;

/// Saga events as they are appended, for every saga of the stack.
struct SagaWatch(StreamConsumer);

impl SagaWatch {
    fn new(stack: &Stack) -> Self {
        let topic = stack.kafka.topics().events(AggregateKind::OrderSaga);
        // Sees each event within milliseconds, so a kill "right after" lands before the
        // orchestrator's next commit (every 200 ms).
        let consumer = stack.kafka.consumer(
            &stack.kafka.group("saga-watch"),
            &[("fetch.wait.max.ms", "5")],
        );
        let mut assignment = TopicPartitionList::new();
        for partition in 0..stack.kafka.settings.partitions {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        Self(consumer)
    }

    /// The next event the saga of `order_id` records: (version, event type).
    async fn next_of(&self, order_id: &str) -> (u64, String) {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.0.recv())
                .await
                .expect("the saga made no progress for a minute")
                .unwrap();
            let envelope = EventEnvelope::from_headers(message.headers()).unwrap();
            if envelope.aggregate_id == order_id {
                return (envelope.version.get(), envelope.event_type);
            }
        }
    }

    /// Waits until the saga of `order_id` records `event_type`.
    async fn until(&self, order_id: &str, event_type: &str) {
        while self.next_of(order_id).await.1 != event_type {}
    }
}

/// Kills the orchestrator after each event the saga records until it records one of `until`;
/// returns the versions it was killed at.
async fn kill_after_every_step(
    stack: &mut Stack,
    watch: &SagaWatch,
    order_id: &str,
    until: &[&str],
) -> Vec<u64> {
    let mut killed_at = vec![];
    loop {
        let (version, event_type) = watch.next_of(order_id).await;
        if until.contains(&event_type.as_str()) {
            return killed_at;
        }
        stack.kill_orchestrator().await;
        killed_at.push(version);
        stack.start_orchestrator().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orchestrator_killed_after_every_step_finishes_every_saga_exactly_once() {
    let mut stack = Stack::start().await;
    let watch = SagaWatch::new(&stack);
    stack.given_customer("ada", 1_000).await;
    stack.given_stock("apple", 5).await;
    stack.given_stock("pear", 5).await;
    stack.given_stock("plum", 5).await;

    // An approval (2 lines, credit), killed after each step.
    let approved = stack
        .place_order("ada", &[line("apple", 2, 100), line("pear", 1, 100)])
        .await;
    let kills = kill_after_every_step(&mut stack, &watch, &approved, &["SagaApproved"]).await;
    println!("approval: killed after versions {kills:?}");
    stack.settled(&approved, APPROVED).await;

    // A rejection with compensation (credit exceeded: 300 reserved of 1000, 800 asked).
    let rejected = stack.place_order("ada", &[line("plum", 2, 400)]).await;
    let more = kill_after_every_step(&mut stack, &watch, &rejected, &["SagaRejected"]).await;
    println!("rejection: killed after versions {more:?}");
    let view = stack.settled(&rejected, REJECTED).await;
    assert_eq!(view["rejection_reason"], "CREDIT_LIMIT_EXCEEDED");

    // The approved order's cancellation, killed after each compensation step.
    assert_eq!(stack.cancel(&approved).await, StatusCode::ACCEPTED);
    let cancel = kill_after_every_step(&mut stack, &watch, &approved, &["SagaCancelled"]).await;
    println!("cancellation: killed after versions {cancel:?}");
    stack.settled(&approved, CANCELLED).await;

    let total_kills = kills.len() + more.len() + cancel.len();
    assert!(
        total_kills >= 8,
        "the test should kill the orchestrator between most steps, not {total_kills} times"
    );

    // Nothing held any more, and every effect happened once.
    for sku in ["apple", "pear", "plum"] {
        assert_eq!(stack.stock_of(sku, 0).await, (5, 0, 5), "{sku}");
        let events = stack.events_of(AggregateKind::InventoryItem, sku).await;
        assert_eq!(count(&events, "StockReserved"), 1, "{sku}: {events:?}");
        assert_eq!(count(&events, "StockReleased"), 1, "{sku}: {events:?}");
    }
    assert_eq!(stack.credit_reserved("ada", 0).await, 0);
    let credit = stack.events_of(AggregateKind::Customer, "ada").await;
    assert_eq!(count(&credit, "CreditReserved"), 1, "{credit:?}");
    assert_eq!(count(&credit, "CreditLimitExceeded"), 1, "{credit:?}");
    assert_eq!(count(&credit, "CreditReleased"), 1, "{credit:?}");
    let approved_events = stack.events_of(AggregateKind::Order, &approved).await;
    assert_eq!(
        approved_events,
        [
            "OrderPlaced",
            "OrderApproved",
            "OrderCancellationRequested",
            "OrderCancelled"
        ]
    );
    let rejected_events = stack.events_of(AggregateKind::Order, &rejected).await;
    assert_eq!(rejected_events, ["OrderPlaced", "OrderRejected"]);
    let saga_events = stack.events_of(AggregateKind::OrderSaga, &approved).await;
    assert_eq!(count(&saga_events, "SagaStarted"), 1, "{saga_events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_refused_for_an_unknown_customer_leaves_no_hold_once_the_customer_exists() {
    // The refusal appended nothing. The orchestrator is killed right after the saga records it
    // (before its next commit), the customer is registered, and the restarted orchestrator
    // re-sends the same reserve command, which now reserves: the compensation must release it.
    let mut stack = Stack::start().await;
    let watch = SagaWatch::new(&stack);
    stack.given_stock("apple", 5).await;
    let order = stack.place_order("ghost", &[line("apple", 1, 100)]).await;
    watch.until(&order, "CreditReservationFailed").await;
    stack.kill_orchestrator().await;
    stack.given_customer("ghost", 1_000).await;
    stack.start_orchestrator().await;
    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "UNKNOWN_CUSTOMER");
    // Let a re-sent reservation and its release land before looking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.credit_reserved("ghost", 0).await,
        0,
        "no credit stays held for a rejected order"
    );
    assert_eq!(stack.stock_of("apple", 0).await, (5, 0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_refused_for_an_unknown_sku_leaves_no_hold_once_the_sku_exists() {
    // The stock twin of the customer case: the refused reservation appended nothing, the SKU is
    // stocked while the orchestrator is down, and the restarted orchestrator's re-sent reserve
    // command now holds stock that the compensation must release.
    let mut stack = Stack::start().await;
    let watch = SagaWatch::new(&stack);
    stack.given_customer("ada", 1_000).await;
    let order = stack.place_order("ada", &[line("kiwi", 1, 100)]).await;
    watch.until(&order, "StockReservationFailed").await;
    stack.kill_orchestrator().await;
    stack.given_stock("kiwi", 5).await;
    stack.start_orchestrator().await;
    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "UNKNOWN_SKU");
    // Let a re-sent reservation and its release land before looking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.stock_of("kiwi", 0).await,
        (5, 0, 5),
        "no stock stays held for a rejected order"
    );
    assert_eq!(stack.credit_reserved("ada", 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_killed_after_its_deadline_was_armed_or_recorded_still_times_out_after_a_restart() {
    // Deadlines live in the orchestrator's memory (timers set as saga events are read), so a
    // restart must arm them again from the log. The inventory does not answer: the orchestrator
    // is SIGKILLed right after the saga asks for stock (the reservation's deadline armed, not
    // due), and again right after the saga records that the step timed out (the release's
    // deadline armed). Each time the restarted orchestrator still times the step out, and once
    // the inventory is back the saga ends rejected for TIMEOUT with nothing held.
    let mut stack = Stack::start_with(Options {
        step_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let watch = SagaWatch::new(&stack);
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    stack.stop_inventory_writers().await;

    let order = stack.place_order("ada", &[line("apple", 2, 150)]).await;
    watch.until(&order, "StockReservationRequested").await;
    stack.kill_orchestrator().await;
    stack.start_orchestrator().await;
    watch.until(&order, "StepTimedOut").await;

    stack.kill_orchestrator().await;
    stack.start_orchestrator().await;
    // The release the compensation asked for is not answered either: it times out too.
    watch.until(&order, "StepTimedOut").await;

    stack.start_inventory_writers().await;
    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "TIMEOUT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.stock_of("apple", 0).await,
        (5, 0, 5),
        "the late reservation is released"
    );
}

/// `n` one-apple orders of customer `ada`, placed one after the other.
async fn apple_orders(stack: &Stack, n: usize) -> Vec<String> {
    let mut orders = vec![];
    for _ in 0..n {
        orders.push(stack.place_order("ada", &[line("apple", 1, 100)]).await);
    }
    orders
}

/// Every order approved, each by a saga started exactly once.
async fn each_approved_by_one_saga(stack: &Stack, orders: &[String]) {
    for order in orders {
        stack.settled(order, APPROVED).await;
        let saga = stack.events_of(AggregateKind::OrderSaga, order).await;
        assert_eq!(count(&saga, "SagaStarted"), 1, "{order}: {saga:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_orchestrator_takes_over_from_the_writers_snapshots_and_acts_once_on_what_they_cover_past_its_commits(
) {
    // Decision 0010. Orders placed while the orchestrator is down lie past its committed
    // offsets; the order writers' next snapshot (taken by the first batch 5 s after the last)
    // covers them. The restarted orchestrator must not replay from offset 0, must start their
    // sagas although the snapshot already holds their events, and must act on each once.
    let mut stack = Stack::start().await;
    stack.given_customer("ada", 1_000_000).await;
    stack.given_stock("apple", 1_000).await;
    let mut orders = vec![];
    for round in 0..2 {
        if round > 0 {
            // The saga writers' batches of this round find a snapshot due.
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        orders.extend(apple_orders(&stack, 6).await);
        for order in &orders {
            stack.settled(order, APPROVED).await;
        }
    }
    stack.kill_orchestrator().await;
    orders.extend(apple_orders(&stack, 6).await);
    tokio::time::sleep(Duration::from_secs(6)).await;
    orders.extend(apple_orders(&stack, 9).await);
    stack.start_orchestrator().await;

    each_approved_by_one_saga(&stack, &orders).await;
    let stock = stack.events_of(AggregateKind::InventoryItem, "apple").await;
    assert_eq!(count(&stock, "StockReserved"), orders.len(), "{stock:?}");
    let credit = stack.events_of(AggregateKind::Customer, "ada").await;
    assert_eq!(count(&credit, "CreditReserved"), orders.len(), "{credit:?}");

    let metrics = stack.orchestrator_metrics().await;
    let restored = |aggregate: &str| {
        metric(
            &metrics,
            "saga_snapshot_restores_total",
            &[
                &format!("aggregate=\"{aggregate}\""),
                "outcome=\"restored\"",
            ],
        )
    };
    assert!(
        restored("orders") >= 1.0 && restored("order-sagas") >= 1.0,
        "the orchestrator restored from the writers' snapshots: {metrics}"
    );
    assert!(
        metric(
            &metrics,
            "saga_events_redone_from_snapshot_total",
            &["aggregate=\"orders\""]
        ) >= 1.0,
        "orders placed while it was down were acted on from the snapshot's command uses: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orchestrator_finding_a_corrupt_snapshot_replays_from_the_start_and_misses_nothing() {
    // Never wrong state: an undecodable record in the order writers' snapshots makes the
    // orchestrator replay the orders from offset 0 (counted, logged), and the orders placed
    // while it was down still get their sagas.
    let mut stack = Stack::start().await;
    stack.given_customer("ada", 1_000_000).await;
    stack.given_stock("apple", 1_000).await;
    let first = stack.place_order("ada", &[line("apple", 1, 100)]).await;
    stack.settled(&first, APPROVED).await;
    stack.kill_orchestrator().await;
    let mut orders = vec![first];
    orders.extend(apple_orders(&stack, 6).await);
    // Corrupted after the last order: an order writer snapshots with whichever batch finds a
    // snapshot due, and a checkpoint written after the corrupt one would replace it.
    let topic = stack.kafka.topics().snapshots(AggregateKind::Order);
    let producer = stack.kafka.producer();
    for partition in 0..stack.kafka.settings.partitions {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .partition(partition)
                    .key("~checkpoint")
                    .payload(&b"not avro"[..]),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    stack.start_orchestrator().await;

    for order in &orders {
        stack.settled(order, APPROVED).await;
    }
    let metrics = stack.orchestrator_metrics().await;
    let fallbacks = metric(
        &metrics,
        "saga_snapshot_restores_total",
        &["aggregate=\"orders\"", "outcome=\"fallback\""],
    );
    assert!(
        fallbacks >= f64::from(stack.kafka.settings.partitions),
        "every partition's worker fell back: {metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "saga_snapshot_restores_total",
            &["aggregate=\"orders\"", "outcome=\"restored\""]
        ),
        0.0,
        "{metrics}"
    );
    let credit = stack.events_of(AggregateKind::Customer, "ada").await;
    assert_eq!(count(&credit, "CreditReserved"), orders.len(), "{credit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orchestrator_whose_snapshot_cannot_tell_what_it_must_act_on_replays_from_the_start() {
    // Decision 0010's limit: orders placed while the orchestrator is down, then a command
    // window (6 s here) of silence, then more orders: the order writers' snapshot stands past
    // the first ones with a clock that has forgotten their command uses, so it cannot say
    // whether they were accepted. The worker must not guess: it replays from offset 0, and
    // every saga still starts once.
    let mut stack = Stack::start_with(Options {
        command_window: Some(Duration::from_secs(6)),
        ..Options::default()
    })
    .await;
    stack.given_customer("ada", 1_000_000).await;
    stack.given_stock("apple", 1_000).await;
    let first = stack.place_order("ada", &[line("apple", 1, 100)]).await;
    stack.settled(&first, APPROVED).await;
    stack.kill_orchestrator().await;
    let mut orders = vec![first];
    orders.extend(apple_orders(&stack, 6).await);
    // A snapshot's clock is that of the events it covers: the first batch after the silence
    // snapshots only the first orders; the next one, a snapshot interval later, covers the
    // orders after the silence too, and with them a clock a window past the first ones.
    for pause in [8, 6] {
        tokio::time::sleep(Duration::from_secs(pause)).await;
        orders.extend(apple_orders(&stack, 9).await);
    }
    stack.start_orchestrator().await;

    each_approved_by_one_saga(&stack, &orders).await;
    let metrics = stack.orchestrator_metrics().await;
    assert!(
        metric(
            &metrics,
            "saga_snapshot_restores_total",
            &["aggregate=\"orders\"", "outcome=\"abandoned\""]
        ) >= 1.0,
        "{metrics}"
    );
    // (A partition with no orders from before the silence may still act on the later ones
    // from its snapshot: those it can tell about.)
    let credit = stack.events_of(AggregateKind::Customer, "ada").await;
    assert_eq!(count(&credit, "CreditReserved"), orders.len(), "{credit:?}");
}
