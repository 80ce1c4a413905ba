//! The order saga, scenario by scenario (API.md "Order saga", guarantee 8): every outcome,
//! both cancellations, a participant that does not answer, and contention for the last units.
//! Everything goes through the HTTP APIs of running services on the real broker and Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use domain::AggregateKind;
use reqwest::StatusCode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_reserves_stock_then_credit_then_approves() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    stack.given_stock("pear", 5).await;

    let order = stack
        .place_order("ada", &[line("apple", 2, 150), line("pear", 1, 400)])
        .await;

    let view = stack.settled(&order, APPROVED).await;
    assert_eq!(view["total"]["amount_minor"], 700);
    assert_eq!(stack.stock_of("apple", 2).await, (5, 2, 3));
    assert_eq!(stack.stock_of("pear", 1).await, (5, 1, 4));
    assert_eq!(stack.credit_reserved("ada", 700).await, 700);
    let saga = stack.saga(&order).await;
    assert_eq!(
        Stack::steps(&saga),
        [
            "reserve-stock/0=SUCCEEDED",
            "reserve-stock/1=SUCCEEDED",
            "reserve-credit=SUCCEEDED",
            "approve=SUCCEEDED"
        ]
    );
    assert_eq!(saga["saga_id"], order.as_str());
    assert!(saga["finished_at"].is_string());
    assert_eq!(saga["stuck"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_stock_on_the_second_line_releases_the_first_and_rejects() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    stack.given_stock("pear", 1).await;

    let order = stack
        .place_order("ada", &[line("apple", 2, 150), line("pear", 3, 400)])
        .await;

    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "OUT_OF_STOCK");
    assert_eq!(
        stack.stock_of("apple", 0).await,
        (5, 0, 5),
        "line 1 released"
    );
    assert_eq!(stack.stock_of("pear", 0).await, (1, 0, 1));
    assert_eq!(
        stack.credit_reserved("ada", 0).await,
        0,
        "credit never asked"
    );
    assert_eq!(
        Stack::steps(&stack.saga(&order).await),
        [
            "reserve-stock/0=SUCCEEDED",
            "reserve-stock/1=FAILED",
            "release-stock/0=SUCCEEDED",
            "reject=SUCCEEDED"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credit_limit_exceeded_releases_all_stock_and_rejects() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 500).await;
    stack.given_stock("apple", 5).await;
    stack.given_stock("pear", 5).await;

    let order = stack
        .place_order("ada", &[line("apple", 2, 150), line("pear", 1, 400)])
        .await;

    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "CREDIT_LIMIT_EXCEEDED");
    assert_eq!(stack.stock_of("apple", 0).await, (5, 0, 5));
    assert_eq!(stack.stock_of("pear", 0).await, (5, 0, 5));
    assert_eq!(stack.credit_reserved("ada", 0).await, 0);
    let saga = stack.saga(&order).await;
    assert_eq!(saga["rejection_reason"], "CREDIT_LIMIT_EXCEEDED");
    let steps = Stack::steps(&saga);
    assert!(
        steps.contains(&"reserve-credit=FAILED".to_owned()),
        "{steps:?}"
    );
    assert!(
        steps.contains(&"release-stock/0=SUCCEEDED".to_owned()),
        "{steps:?}"
    );
    assert!(
        steps.contains(&"release-stock/1=SUCCEEDED".to_owned()),
        "{steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_sku_rejects_after_releasing_the_lines_before_it() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;

    let order = stack
        .place_order("ada", &[line("apple", 1, 150), line("no-such-sku", 1, 100)])
        .await;

    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "UNKNOWN_SKU");
    assert_eq!(stack.stock_of("apple", 0).await, (5, 0, 5));
    assert_eq!(stack.credit_reserved("ada", 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_customer_rejects_after_releasing_all_stock() {
    let stack = Stack::start().await;
    stack.given_stock("apple", 5).await;

    let order = stack.place_order("ghost", &[line("apple", 2, 150)]).await;

    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "UNKNOWN_CUSTOMER");
    assert_eq!(stack.stock_of("apple", 0).await, (5, 0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_an_approved_order_releases_its_stock_and_credit() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    let order = stack.place_order("ada", &[line("apple", 2, 150)]).await;
    stack.settled(&order, APPROVED).await;

    assert_eq!(stack.cancel(&order).await, StatusCode::ACCEPTED);

    cancelled_with_everything_released(&stack, &order).await;
}

/// Issue #17 item 2, decision 0011: a finished saga leaves the orchestrator's memory for its
/// file of settled sagas, and comes back from it when its approved order is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_saga_leaves_memory_and_comes_back_from_disk_when_its_order_is_cancelled() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    let order = stack.place_order("ada", &[line("apple", 2, 150)]).await;
    stack.settled(&order, APPROVED).await;
    let settled = |m: &str| metric(m, "sagas_settled", &[]);
    let metrics = stack.orchestrator_metrics_when(|m| settled(m) == 1.0).await;
    assert_eq!(
        settled(&metrics),
        1.0,
        "the approved saga is on disk: {metrics}"
    );

    assert_eq!(stack.cancel(&order).await, StatusCode::ACCEPTED);

    cancelled_with_everything_released(&stack, &order).await;
    let metrics = stack
        .orchestrator_metrics_when(|m| {
            metric(m, "sagas", &["state=\"CANCELLED\""]) == 1.0 && settled(m) == 1.0
        })
        .await;
    assert_eq!(
        (
            metric(&metrics, "sagas", &["state=\"CANCELLED\""]),
            metric(&metrics, "sagas", &["state=\"APPROVED\""]),
            settled(&metrics)
        ),
        (1.0, 0.0, 1.0),
        "cancelled, and on disk again: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_pending_order_releases_what_it_holds_even_a_reservation_in_flight() {
    let mut stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    // The inventory stops answering: the saga waits on the stock reservation, order PENDING.
    stack.stop_inventory_writers().await;
    let order = stack.place_order("ada", &[line("apple", 2, 150)]).await;
    stack
        .eventually(&order, |order, saga| {
            order["status"] == PENDING && saga["state"] == "RESERVING_STOCK"
        })
        .await;

    assert_eq!(stack.cancel(&order).await, StatusCode::ACCEPTED);
    // The inventory comes back: the reservation lands first, then its release.
    stack.start_inventory_writers().await;

    stack.settled(&order, CANCELLED).await;
    assert_eq!(
        stack.stock_of("apple", 0).await,
        (5, 0, 5),
        "nothing leaked"
    );
    assert_eq!(stack.credit_reserved("ada", 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_that_does_not_answer_times_out_and_its_late_answer_is_compensated() {
    let mut stack = Stack::start_with(Options {
        step_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    stack.stop_inventory_writers().await;

    let order = stack.place_order("ada", &[line("apple", 2, 150)]).await;

    // The reservation times out: the saga compensates (releasing the line, in case the
    // reservation lands later) and waits for the release.
    let (_, saga) = stack
        .eventually(&order, |_, saga| saga["state"] == "COMPENSATING")
        .await;
    assert_eq!(Stack::steps(&saga)[0], "reserve-stock/0=TIMED_OUT");
    // The inventory comes back and handles the late reservation, then the release.
    stack.start_inventory_writers().await;

    let view = stack.settled(&order, REJECTED).await;
    assert_eq!(view["rejection_reason"], "TIMEOUT");
    assert_eq!(
        stack.stock_of("apple", 0).await,
        (5, 0, 5),
        "late reservation released"
    );
    let stock_events = stack.events_of(AggregateKind::InventoryItem, "apple").await;
    assert_eq!(count(&stock_events, "StockReserved"), 1);
    assert_eq!(count(&stock_events, "StockReleased"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_orders_for_ten_units_approve_exactly_ten() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 1_000_000).await;
    stack.given_stock("last-units", 10).await;

    let one_unit = [line("last-units", 1, 100)];
    let orders: Vec<String> =
        futures::future::join_all((0..50).map(|_| stack.place_order("ada", &one_unit))).await;

    let mut approved = 0;
    let mut rejected = 0;
    for order in &orders {
        let (view, _) = stack
            .eventually(order, |order, saga| {
                (order["status"] == APPROVED || order["status"] == REJECTED)
                    && saga["state"] == order["status"]
            })
            .await;
        if view["status"] == APPROVED {
            approved += 1;
        } else {
            assert_eq!(view["rejection_reason"], "OUT_OF_STOCK");
            rejected += 1;
        }
    }
    assert_eq!((approved, rejected), (10, 40));
    assert_eq!(stack.stock_of("last-units", 10).await, (10, 10, 0));
    assert_eq!(stack.credit_reserved("ada", 1000).await, 1000, "10 x 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_without_progress_past_its_timeouts_is_reported_stuck_until_it_moves() {
    let mut stack = Stack::start_with(Options {
        step_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    stack.stop_inventory_writers().await;
    let order = stack.place_order("ada", &[line("apple", 1, 150)]).await;

    // The reservation times out, and so does its release, again and again: stuck.
    let (_, saga) = stack
        .eventually(&order, |_, saga| saga["stuck"] == true)
        .await;
    assert_eq!(saga["state"], "COMPENSATING");
    let release = &saga["steps"][1];
    assert_eq!(release["name"], "release-stock/0");
    assert!(release["retries"].as_u64().unwrap() >= 1, "{saga:#}");
    let metrics = stack
        .orchestrator_metrics_when(|m| metric(m, "sagas_stuck", &[]) == 1.0)
        .await;
    assert_eq!(metric(&metrics, "sagas_stuck", &[]), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "sagas", &["state=\"COMPENSATING\""]), 1.0);
    assert!(
        metric(
            &metrics,
            "saga_deadlines_total",
            &["step=\"reserve-stock\""]
        ) >= 1.0
    );

    stack.start_inventory_writers().await;
    let (_, saga) = stack
        .eventually(&order, |_, saga| saga["state"] == REJECTED)
        .await;
    assert_eq!(saga["stuck"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_orchestrator_counts_sagas_by_state_and_times_each_step() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    let approved = stack.place_order("ada", &[line("apple", 1, 150)]).await;
    let rejected = stack.place_order("ada", &[line("apple", 9, 150)]).await;
    stack.settled(&approved, APPROVED).await;
    stack.settled(&rejected, REJECTED).await;

    let metrics = stack
        .orchestrator_metrics_when(|m| {
            // The gauges are refreshed on the orchestrator's tick, after the views can show
            // both sagas settled: wait for the tick that counts both.
            metric(m, "sagas", &["state=\"APPROVED\""]) == 1.0
                && metric(m, "sagas", &["state=\"REJECTED\""]) == 1.0
        })
        .await;
    assert_eq!(
        metric(&metrics, "sagas", &["state=\"APPROVED\""]),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "sagas", &["state=\"REJECTED\""]), 1.0);
    assert_eq!(
        metric(&metrics, "sagas", &["state=\"RESERVING_STOCK\""]),
        0.0
    );
    assert_eq!(
        metric(&metrics, "sagas_finished_total", &["state=\"APPROVED\""]),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "saga_step_duration_seconds_count",
            &["step=\"reserve-stock\""]
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "saga_step_duration_seconds_count",
            &["step=\"approve\""]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_order_event_is_dead_lettered_and_the_sagas_move_on() {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::{Headers, Message};

    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    // An OrderPlaced whose envelope is fine but whose body is not Avro.
    let poison_id = stack.given_poison_order_event().await;
    let orders_topic = stack.kafka.topics().events(AggregateKind::Order);

    // Orders placed after it still run to their end.
    let order = stack.place_order("ada", &[line("apple", 1, 150)]).await;
    stack.settled(&order, APPROVED).await;

    // The poison record sits in the dead-letter topic, saying who gave up on it and why.
    let dlq = platform::topics::Topics::dead_letters(&orders_topic);
    let consumer = stack.kafka.consumer(&stack.kafka.group("dlq-reader"), &[]);
    consumer.subscribe(&[dlq.as_str()]).unwrap();
    let mut consumers_that_gave_up = vec![];
    while consumers_that_gave_up.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("no dead letter for the poison record")
            .unwrap();
        assert_eq!(message.key(), Some(poison_id.as_bytes()));
        let header = |name: &str| {
            message
                .headers()
                .unwrap()
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header("dlq-source-topic").as_deref(),
            Some(orders_topic.as_str())
        );
        assert!(header("dlq-error").is_some());
        consumers_that_gave_up.push(header("dlq-projection").unwrap());
    }
    consumers_that_gave_up.sort();
    assert_eq!(consumers_that_gave_up, ["orders", "saga-orchestrator"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_saga_view_answers_bad_requests_with_problem_json() {
    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    let order = stack.place_order("ada", &[line("apple", 1, 150)]).await;
    stack.settled(&order, APPROVED).await;
    let path = format!("/v1/orders/{order}/saga");
    let ada = stack.token_for_customer("ada");
    let eve = stack.token_for_customer("eve");

    let cases = [
        (
            "/v1/orders/not-a-uuid/saga".to_owned(),
            Some(ada.as_str()),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v1/orders/{}/saga", uuid::Uuid::now_v7()),
            Some(ada.as_str()),
            StatusCode::NOT_FOUND,
        ),
        (path.clone(), None, StatusCode::UNAUTHORIZED),
        (path.clone(), Some("garbage"), StatusCode::UNAUTHORIZED),
        (path.clone(), Some(eve.as_str()), StatusCode::FORBIDDEN),
    ];
    for (path, token, status) in cases {
        let (got, content_type, body) = stack.get_as(&path, token).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert_eq!(body["status"], status.as_u16(), "{path}");
    }
    // The owner still reads it, unchanged.
    let (status, _, saga) = stack.get_as(&path, Some(&ada)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saga["state"], APPROVED);
}

/// The approved order of 2 apples from ada's 5 is cancelled: its stock and credit are released,
/// and the cancellation confirmed, in that order.
async fn cancelled_with_everything_released(stack: &Stack, order: &str) {
    stack.settled(order, CANCELLED).await;
    assert_eq!(stack.stock_of("apple", 0).await, (5, 0, 5));
    assert_eq!(stack.credit_reserved("ada", 0).await, 0);
    let steps = Stack::steps(&stack.saga(order).await);
    assert!(
        steps.ends_with(&[
            "release-stock/0=SUCCEEDED".to_owned(),
            "release-credit=SUCCEEDED".to_owned(),
            "confirm-cancellation=SUCCEEDED".to_owned()
        ]),
        "{steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_event_repeating_a_command_whose_use_left_the_orchestrators_memory_is_inert() {
    // The orchestrator moves every command use to its file each tick (decision 0015) and takes
    // one back before it judges an event of that command: a stray OrderPlaced under a command
    // id the partition already used must stay inert, as it did while uses stayed in memory.
    use domain::values::{Currency, CustomerId, Money, OrderId, Quantity, Sku};
    use platform::partitioner::partition_for;
    use rdkafka::producer::FutureRecord;

    let stack = Stack::start().await;
    stack.given_customer("ada", 10_000).await;
    stack.given_stock("apple", 5).await;
    let first = stack.place_order("ada", &[line("apple", 1, 150)]).await;
    stack.settled(&first, APPROVED).await;
    let placed = stack
        .accepted_events(AggregateKind::Order, &first)
        .await
        .into_iter()
        .next()
        .unwrap();
    // Well past a tick: the use is in the orchestrator's file, not in its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let partition = partition_for(first.as_bytes(), PARTITIONS);
    let stray = std::iter::repeat_with(|| uuid::Uuid::now_v7().to_string())
        .find(|id| partition_for(id.as_bytes(), PARTITIONS) == partition)
        .unwrap();
    let envelope = platform::envelope::EventEnvelope {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: stray.clone(),
        version: domain::Version::new(1),
        predecessor: None,
        occurred_at: chrono::Utc::now(),
        ..placed
    };
    let usd = Currency::try_from("USD").unwrap();
    let payload = schemas::encode(&domain::order::OrderEvent::OrderPlaced {
        order_id: OrderId::try_from(stray.as_str()).unwrap(),
        customer_id: CustomerId::try_from("ada").unwrap(),
        lines: vec![domain::order::OrderLine {
            sku: Sku::try_from("apple").unwrap(),
            quantity: Quantity::try_from(1).unwrap(),
            unit_price: Money::new(150, usd).unwrap(),
        }],
        total: Money::new(150, usd).unwrap(),
    })
    .unwrap();
    let topic = stack.kafka.topics().events(AggregateKind::Order);
    stack
        .kafka
        .producer()
        .send(
            FutureRecord::to(&topic)
                .partition(partition)
                .key(stray.as_str())
                .payload(&payload)
                .headers(envelope.to_headers()),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let rejected = |text: &str| {
        metric(
            text,
            "log_order_rejections_total",
            &[r#"reader="saga-orchestrator""#, r#"aggregate="orders""#],
        )
    };
    let text = stack
        .orchestrator_metrics_when(|text| rejected(text) >= 1.0)
        .await;
    assert_eq!(rejected(&text), 1.0, "the orchestrator judged it a repeat");
    // An order placed after it runs to its end, so the orchestrator has read past the stray
    // event, and started no saga for it.
    let later = stack.place_order("ada", &[line("apple", 1, 150)]).await;
    stack.settled(&later, APPROVED).await;
    assert!(stack
        .events_of(AggregateKind::OrderSaga, &stray)
        .await
        .is_empty());
    assert_eq!(
        stack.stock_of("apple", 2).await,
        (5, 2, 3),
        "the two orders reserved a unit each, the stray event none"
    );
}
