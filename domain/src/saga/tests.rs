//! Saga rules, run two ways: step by step (given/when/then), and end to end against the real
//! participant aggregates in memory (a `World`), failing at every step and repeating every input.

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::aggregate::{Current, Versioned};
use crate::customer::{CustomerAggregate, CustomerState};
use crate::fixtures::*;
use crate::inventory::{InventoryItem, InventoryState};
use crate::order::{OrderAggregate, OrderState, OrderStatus};
use crate::testing::Scenario;
use crate::values::{CustomerName, Sku};
use crate::DomainError;

/// Given/when/then on the saga with bare inputs: each is addressed to the saga it is about (the
/// order it places, otherwise `ORDER`), as the orchestrator addresses them.
struct SagaScenario(Scenario<OrderSagaAggregate>);
type Given = SagaScenario;

impl SagaScenario {
    fn given(history: Vec<SagaEvent>) -> Self {
        Self(Scenario::given(history))
    }

    fn when(self, input: SagaInput) -> crate::testing::Outcome<OrderSagaAggregate> {
        self.0.when(addressed(input))
    }
}

fn addressed(input: SagaInput) -> SagaMessage {
    let saga_id = match &input {
        SagaInput::OrderPlaced { order_id, .. } => *order_id,
        _ => order_id(ORDER),
    };
    SagaMessage { saga_id, input }
}
const ORDER: u128 = 42;

fn two_lines() -> Vec<OrderLine> {
    vec![
        OrderLine {
            sku: sku("apple"),
            quantity: qty(2),
            unit_price: usd(100),
        },
        OrderLine {
            sku: sku("pear"),
            quantity: qty(1),
            unit_price: usd(50),
        },
    ]
}

fn started() -> SagaEvent {
    SagaEvent::SagaStarted {
        order_id: order_id(ORDER),
        customer_id: customer_id("c-1"),
        lines: two_lines(),
        total: usd(250),
    }
}

fn placed() -> SagaInput {
    SagaInput::OrderPlaced {
        order_id: order_id(ORDER),
        customer_id: customer_id("c-1"),
        lines: two_lines(),
        total: usd(250),
    }
}

fn stock(line: usize, reply: StockReply) -> SagaInput {
    SagaInput::StockReservation { line, reply }
}

fn reject_requested(reason: RejectionReason, detail: &str) -> SagaEvent {
    SagaEvent::RejectionRequested {
        reason,
        detail: detail.into(),
    }
}

fn outcome(reason: RejectionReason, detail: &str) -> SagaOutcome {
    SagaOutcome::Reject {
        reason,
        detail: detail.into(),
    }
}

// ---- step by step -------------------------------------------------------------------------

#[test]
fn an_order_placed_starts_the_saga_with_the_first_line() {
    Given::given(vec![]).when(placed()).then(vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
    ]);
    Given::given(vec![started()]).when(placed()).then(vec![]);
}

#[test]
fn reserves_stock_line_by_line_then_credit_then_approves() {
    let history = vec![started(), SagaEvent::StockReservationRequested { line: 0 }];
    Given::given(history.clone())
        .when(stock(0, StockReply::Reserved))
        .then(vec![
            SagaEvent::StockReserved { line: 0 },
            SagaEvent::StockReservationRequested { line: 1 },
        ]);
    let mut history = history;
    history.extend([
        SagaEvent::StockReserved { line: 0 },
        SagaEvent::StockReservationRequested { line: 1 },
    ]);
    Given::given(history.clone())
        .when(stock(1, StockReply::Reserved))
        .then(vec![
            SagaEvent::StockReserved { line: 1 },
            SagaEvent::CreditReservationRequested,
        ]);
    history.extend([
        SagaEvent::StockReserved { line: 1 },
        SagaEvent::CreditReservationRequested,
    ]);
    Given::given(history.clone())
        .when(SagaInput::CreditReservation {
            reply: CreditReply::Reserved,
        })
        .then(vec![
            SagaEvent::CreditReserved,
            SagaEvent::ApprovalRequested,
        ]);
    history.extend([SagaEvent::CreditReserved, SagaEvent::ApprovalRequested]);
    let state = Given::given(history)
        .when(SagaInput::OrderApproved)
        .then(vec![SagaEvent::SagaApproved]);
    let SagaState::Running(saga) = state else {
        panic!()
    };
    assert_eq!(saga.phase, SagaPhase::Approved);
    assert!(saga.awaiting().is_empty());
}

#[test]
fn out_of_stock_on_the_second_line_releases_the_first_and_rejects() {
    let history = vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
        SagaEvent::StockReserved { line: 0 },
        SagaEvent::StockReservationRequested { line: 1 },
    ];
    let detail = "line 1 (sku pear): not enough stock";
    Given::given(history.clone())
        .when(stock(1, StockReply::OutOfStock))
        .then(vec![
            SagaEvent::StockReservationFailed {
                line: 1,
                reason: RejectionReason::OutOfStock,
            },
            SagaEvent::CompensationStarted {
                outcome: outcome(RejectionReason::OutOfStock, detail),
            },
            SagaEvent::StockReleaseRequested {
                line: 0,
                attempt: 1,
            },
        ]);
}

#[test]
fn an_unknown_sku_on_the_first_line_releases_what_a_resent_request_could_still_reserve() {
    // The unknown SKU appended nothing: the same request re-sent after an orchestrator crash
    // reserves if the SKU was created meanwhile. So the saga releases it before it rejects.
    Given::given(vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
    ])
    .when(stock(0, StockReply::UnknownSku))
    .then(vec![
        SagaEvent::StockReservationFailed {
            line: 0,
            reason: RejectionReason::UnknownSku,
        },
        SagaEvent::CompensationStarted {
            outcome: outcome(
                RejectionReason::UnknownSku,
                "line 0 (sku apple): unknown sku",
            ),
        },
        SagaEvent::StockReleaseRequested {
            line: 0,
            attempt: 1,
        },
    ]);
}

#[test]
fn an_unknown_customer_releases_the_credit_a_resent_request_could_still_reserve() {
    let mut world = World::new(&[("apple", 5), ("pear", 5)], None);
    world.place(lines(1, 1));
    world.run();
    assert!(
        world
            .log
            .contains(&SagaEvent::CreditReleaseRequested { attempt: 1 }),
        "{:?}",
        world.log
    );
    assert_eq!(
        world.saga().phase,
        SagaPhase::Rejected {
            reason: RejectionReason::UnknownCustomer
        }
    );
}

#[test]
fn a_refusal_the_participant_recorded_needs_no_release() {
    Given::given(vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
    ])
    .when(stock(0, StockReply::OutOfStock))
    .then(vec![
        SagaEvent::StockReservationFailed {
            line: 0,
            reason: RejectionReason::OutOfStock,
        },
        SagaEvent::CompensationStarted {
            outcome: outcome(
                RejectionReason::OutOfStock,
                "line 0 (sku apple): not enough stock",
            ),
        },
        reject_requested(
            RejectionReason::OutOfStock,
            "line 0 (sku apple): not enough stock",
        ),
    ]);
}

#[test]
fn a_reply_for_a_line_the_order_does_not_have_is_refused() {
    Given::given(vec![started()])
        .when(stock(9, StockReply::Reserved))
        .then_error(DomainError::UnknownLine { line: 9, lines: 2 });
}

#[test]
fn a_deadline_for_a_step_not_awaited_changes_nothing() {
    Given::given(vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
    ])
    .when(SagaInput::DeadlinePassed {
        step: SagaStep::ReserveCredit,
    })
    .then(vec![]);
}

#[test]
fn a_release_that_times_out_is_asked_again_with_the_same_key() {
    let history = vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
        SagaEvent::StockReserved { line: 0 },
        SagaEvent::StockReservationRequested { line: 1 },
        SagaEvent::StockReservationFailed {
            line: 1,
            reason: RejectionReason::OutOfStock,
        },
        SagaEvent::CompensationStarted {
            outcome: outcome(RejectionReason::OutOfStock, "x"),
        },
        SagaEvent::StockReleaseRequested {
            line: 0,
            attempt: 1,
        },
    ];
    let step = SagaStep::ReleaseStock { line: 0 };
    Given::given(history)
        .when(SagaInput::DeadlinePassed { step })
        .then(vec![
            SagaEvent::StepTimedOut { step },
            SagaEvent::StockReleaseRequested {
                line: 0,
                attempt: 1,
            },
        ]);
}

#[test]
fn command_keys_are_deterministic_per_step_and_attempt() {
    let SagaState::Running(saga) = Given::given(vec![started()])
        .when(SagaInput::OrderRejected)
        .then(vec![])
    else {
        panic!()
    };
    let reserve = saga
        .command_for(&SagaEvent::StockReservationRequested { line: 1 })
        .unwrap();
    assert_eq!(reserve.key(), "reserve-stock/1#1");
    assert_eq!(
        reserve.command,
        ParticipantCommand::Inventory(crate::inventory::InventoryCommand::ReserveStock {
            sku: sku("pear"),
            order_id: order_id(ORDER),
            quantity: qty(1),
        })
    );
    let release = saga
        .command_for(&SagaEvent::StockReleaseRequested {
            line: 0,
            attempt: 2,
        })
        .unwrap();
    assert_eq!(release.key(), "release-stock/0#2");
    assert_eq!(saga.command_for(&SagaEvent::CreditReserved), None);
}

// ---- end to end over the real participant aggregates ----------------------------------------

/// How a participant misbehaves in a run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The command for this step is lost (no reply until its deadline passes).
    Lose(SagaStep),
    /// The reply to this step arrives only after the saga timed out (and after its release).
    Late(SagaStep),
}

/// In-memory participants built from the real aggregates, and the saga between them.
struct World {
    inventory: HashMap<Sku, Current<InventoryItem>>,
    customer: Current<CustomerAggregate>,
    order: Current<OrderAggregate>,
    saga: Current<OrderSagaAggregate>,
    outbox: VecDeque<SagaCommand>,
    late: Vec<SagaCommand>,
    /// Every saga event recorded, in order.
    log: Vec<SagaEvent>,
    /// Deliver every saga input twice (at-least-once delivery).
    twice: bool,
    fault: Fault,
}

fn apply_all<A: crate::aggregate::Aggregate>(
    current: &mut Current<A>,
    events: Vec<Versioned<A::Event>>,
) {
    for event in events {
        current.apply(&event).unwrap();
    }
}

impl World {
    fn new(stock: &[(&str, i64)], credit_limit: Option<i64>) -> Self {
        let mut inventory = HashMap::new();
        for (name, n) in stock {
            let mut item = Current::<InventoryItem>::default();
            let events = item
                .decide(crate::inventory::InventoryCommand::AddStock {
                    sku: sku(name),
                    quantity: qty(*n),
                })
                .unwrap();
            apply_all(&mut item, events);
            inventory.insert(sku(name), item);
        }
        let mut customer = Current::<CustomerAggregate>::default();
        if let Some(limit) = credit_limit {
            let events = customer
                .decide(CustomerCommand::Register {
                    customer_id: customer_id("c-1"),
                    name: CustomerName::try_from("Ada").unwrap(),
                    credit_limit: usd(limit),
                })
                .unwrap();
            apply_all(&mut customer, events);
        }
        Self {
            inventory,
            customer,
            order: Current::default(),
            saga: Current::default(),
            outbox: VecDeque::new(),
            late: vec![],
            log: vec![],
            twice: false,
            fault: Fault::None,
        }
    }

    fn place(&mut self, lines: Vec<OrderLine>) {
        let events = self
            .order
            .decide(OrderCommand::Place {
                order_id: order_id(ORDER),
                customer_id: customer_id("c-1"),
                lines: lines.clone(),
            })
            .unwrap();
        apply_all(&mut self.order, events);
        let OrderState::Placed(order) = &self.order.state else {
            panic!()
        };
        let total = order.total;
        self.feed(SagaInput::OrderPlaced {
            order_id: order_id(ORDER),
            customer_id: customer_id("c-1"),
            lines,
            total,
        });
    }

    fn cancel(&mut self) {
        let events = self
            .order
            .decide(OrderCommand::RequestCancellation {
                order_id: order_id(ORDER),
                reason: None,
            })
            .unwrap();
        apply_all(&mut self.order, events);
        self.feed(SagaInput::CancellationRequested);
    }

    fn saga(&self) -> &OrderSaga {
        match &self.saga.state {
            SagaState::Running(saga) => saga,
            SagaState::NotStarted => panic!("saga not started"),
        }
    }

    /// Records the saga's decision and queues the commands it asks for.
    fn feed(&mut self, input: SagaInput) {
        let repeats = if self.twice { 2 } else { 1 };
        for _ in 0..repeats {
            let events = self.saga.decide(addressed(input.clone())).unwrap();
            for event in events {
                self.saga.apply(&event).unwrap();
                if let Some(command) = self.saga().command_for(&event.event) {
                    self.outbox.push_back(command);
                }
                self.log.push(event.event);
            }
        }
    }

    /// Runs a participant's decide for a command and applies what it emits.
    fn execute(&mut self, command: &SagaCommand) -> ParticipantOutcome {
        match &command.command {
            ParticipantCommand::Inventory(c) => {
                let item = self.inventory.entry(c.sku().clone()).or_default();
                let result = item.decide(c.clone());
                if let Ok(events) = &result {
                    apply_all(item, events.clone());
                }
                ParticipantOutcome::of_inventory(
                    &result.map(|v| v.into_iter().map(|e| e.event).collect()),
                )
            }
            ParticipantCommand::Customer(c) => {
                let result = self.customer.decide(c.clone());
                if let Ok(events) = &result {
                    apply_all(&mut self.customer, events.clone());
                }
                ParticipantOutcome::of_customer(
                    &result.map(|v| v.into_iter().map(|e| e.event).collect()),
                )
            }
            ParticipantCommand::Order(c) => {
                let result = self.order.decide(c.clone());
                if let Ok(events) = &result {
                    apply_all(&mut self.order, events.clone());
                }
                ParticipantOutcome::of_order(
                    &result.map(|v| v.into_iter().map(|e| e.event).collect()),
                )
            }
        }
    }

    /// Delivers commands until nothing is outstanding; lost steps time out, late ones land last.
    fn run(&mut self) {
        for _ in 0..1000 {
            if let Some(command) = self.outbox.pop_front() {
                match self.fault {
                    Fault::Lose(step) if step == command.step && command.attempt == 1 => {
                        self.feed(SagaInput::DeadlinePassed { step });
                        continue;
                    }
                    Fault::Late(step) if step == command.step && command.attempt == 1 => {
                        self.late.push(command);
                        self.feed(SagaInput::DeadlinePassed { step });
                        continue;
                    }
                    _ => {}
                }
                let outcome = self.execute(&command);
                if let Some(input) = reply_for(&command, &outcome) {
                    self.feed(input);
                }
            } else if let Some(command) = self.late.pop() {
                let outcome = self.execute(&command);
                if let Some(input) = reply_for(&command, &outcome) {
                    self.feed(input);
                }
            } else {
                return;
            }
        }
        panic!("saga did not settle");
    }

    fn held_stock(&self) -> u64 {
        self.inventory
            .values()
            .map(|item| match &item.state {
                InventoryState::Stocked(item) => item.reserved(),
                InventoryState::Unknown => 0,
            })
            .sum()
    }

    fn held_credit(&self) -> i64 {
        match &self.customer.state {
            CustomerState::Registered(c) => c.credit_reserved().amount_minor(),
            CustomerState::Unregistered => 0,
        }
    }

    fn order_status(&self) -> OrderStatus {
        match &self.order.state {
            OrderState::Placed(order) => order.status,
            OrderState::NotPlaced => panic!("not placed"),
        }
    }

    /// Participants' events that took effect: no release ever acted twice.
    fn assert_each_compensation_took_effect_once(&self) {
        for item in self.inventory.values() {
            if let InventoryState::Stocked(item) = &item.state {
                assert!(item.reserved() <= item.on_hand, "stock never negative");
            }
        }
        assert!(self.held_credit() >= 0);
    }
}

fn lines(apple: i64, pear: i64) -> Vec<OrderLine> {
    let mut lines = two_lines();
    lines[0].quantity = qty(apple);
    lines[1].quantity = qty(pear);
    lines
}

#[test]
fn happy_path_approves_and_keeps_the_holds() {
    let mut world = World::new(&[("apple", 5), ("pear", 5)], Some(1000));
    world.place(lines(2, 1));
    world.run();
    assert_eq!(world.saga().phase, SagaPhase::Approved);
    assert_eq!(world.order_status(), OrderStatus::Approved);
    assert_eq!((world.held_stock(), world.held_credit()), (3, 250));
}

#[test]
fn credit_refused_releases_all_stock_and_rejects() {
    let mut world = World::new(&[("apple", 5), ("pear", 5)], Some(100));
    world.place(lines(2, 1));
    world.run();
    assert_eq!(
        world.saga().phase,
        SagaPhase::Rejected {
            reason: RejectionReason::CreditLimitExceeded
        }
    );
    assert_eq!(world.order_status(), OrderStatus::Rejected);
    assert_eq!((world.held_stock(), world.held_credit()), (0, 0));
}

#[test]
fn an_unknown_customer_releases_all_stock_and_rejects() {
    let mut world = World::new(&[("apple", 5), ("pear", 5)], None);
    world.place(lines(1, 1));
    world.run();
    assert_eq!(
        world.saga().phase,
        SagaPhase::Rejected {
            reason: RejectionReason::UnknownCustomer
        }
    );
    assert_eq!(world.held_stock(), 0);
}

#[test]
fn out_of_stock_on_the_second_line_ends_rejected_with_nothing_held() {
    let mut world = World::new(&[("apple", 5), ("pear", 1)], Some(1000));
    world.place(lines(2, 3));
    world.run();
    assert_eq!(
        world.saga().phase,
        SagaPhase::Rejected {
            reason: RejectionReason::OutOfStock
        }
    );
    assert!(world.log.contains(&SagaEvent::StockReleased { line: 0 }));
    assert_eq!((world.held_stock(), world.held_credit()), (0, 0));
}

#[test]
fn an_unknown_sku_on_the_second_line_ends_rejected_with_nothing_held() {
    let mut world = World::new(&[("apple", 5)], Some(1000));
    world.place(lines(2, 1));
    world.run();
    assert_eq!(
        world.saga().phase,
        SagaPhase::Rejected {
            reason: RejectionReason::UnknownSku
        }
    );
    assert_eq!(world.held_stock(), 0);
}

/// Every reservation step of the happy path, each of which a test fails in turn.
const RESERVATIONS: [SagaStep; 3] = [
    SagaStep::ReserveStock { line: 0 },
    SagaStep::ReserveStock { line: 1 },
    SagaStep::ReserveCredit,
];

#[test]
fn a_lost_reply_at_any_step_times_out_compensates_and_rejects() {
    for step in RESERVATIONS {
        let mut world = World::new(&[("apple", 5), ("pear", 5)], Some(1000));
        world.fault = Fault::Lose(step);
        world.place(lines(1, 1));
        world.run();
        assert_eq!(
            world.saga().phase,
            SagaPhase::Rejected {
                reason: RejectionReason::Timeout
            },
            "{step:?}"
        );
        assert_eq!(
            (world.held_stock(), world.held_credit()),
            (0, 0),
            "{step:?}"
        );
    }
}

#[test]
fn a_late_reservation_after_the_timeout_is_released_not_kept() {
    for step in RESERVATIONS {
        let mut world = World::new(&[("apple", 5), ("pear", 5)], Some(1000));
        world.fault = Fault::Late(step);
        world.place(lines(1, 1));
        world.run();
        assert_eq!(
            world.saga().phase,
            SagaPhase::Rejected {
                reason: RejectionReason::Timeout
            },
            "{step:?}"
        );
        assert_eq!(
            (world.held_stock(), world.held_credit()),
            (0, 0),
            "{step:?}"
        );
        world.assert_each_compensation_took_effect_once();
    }
}

#[test]
fn a_late_reservation_while_its_release_is_pending_is_released_again() {
    let history = vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
        SagaEvent::StepTimedOut {
            step: SagaStep::ReserveStock { line: 0 },
        },
        SagaEvent::CompensationStarted {
            outcome: outcome(RejectionReason::Timeout, "x"),
        },
        SagaEvent::StockReleaseRequested {
            line: 0,
            attempt: 1,
        },
        SagaEvent::StockReserved { line: 0 },
    ];
    Given::given(history)
        .when(SagaInput::StockReleased { line: 0 })
        .then(vec![
            SagaEvent::StockReleased { line: 0 },
            SagaEvent::StockReleaseRequested {
                line: 0,
                attempt: 2,
            },
        ]);
}

#[test]
fn every_input_delivered_twice_acts_once() {
    for (stock, limit, expected) in [
        (5, 1000, OrderStatus::Approved),
        (1, 1000, OrderStatus::Rejected),
        (5, 10, OrderStatus::Rejected),
    ] {
        let mut once = World::new(&[("apple", 5), ("pear", stock)], Some(limit));
        once.place(lines(1, 2));
        once.run();
        let mut twice = World::new(&[("apple", 5), ("pear", stock)], Some(limit));
        twice.twice = true;
        twice.place(lines(1, 2));
        twice.run();
        assert_eq!(twice.order_status(), expected);
        assert_eq!(twice.saga().phase, once.saga().phase);
        assert_eq!(twice.log, once.log, "a repeated input decides nothing new");
        assert_eq!(
            (twice.held_stock(), twice.held_credit()),
            (once.held_stock(), once.held_credit())
        );
    }
}

#[test]
fn cancelling_at_every_step_releases_everything_and_ends_cancelled() {
    // Cancel after 0, 1, 2, ... commands have been answered, up to after approval.
    for answered in 0..=4 {
        let mut world = World::new(&[("apple", 5), ("pear", 5)], Some(1000));
        world.place(lines(1, 1));
        for _ in 0..answered {
            if let Some(command) = world.outbox.pop_front() {
                let outcome = world.execute(&command);
                if let Some(input) = reply_for(&command, &outcome) {
                    world.feed(input);
                }
            }
        }
        world.cancel();
        world.run();
        assert_eq!(
            world.saga().phase,
            SagaPhase::Cancelled,
            "after {answered} answers"
        );
        assert_eq!(world.order_status(), OrderStatus::Cancelled);
        assert_eq!(
            (world.held_stock(), world.held_credit()),
            (0, 0),
            "after {answered} answers"
        );
    }
}

#[test]
fn a_cancellation_during_a_rejection_does_not_change_the_outcome() {
    let history = vec![
        started(),
        SagaEvent::StockReservationRequested { line: 0 },
        SagaEvent::StockReservationFailed {
            line: 0,
            reason: RejectionReason::UnknownSku,
        },
        SagaEvent::CompensationStarted {
            outcome: outcome(RejectionReason::UnknownSku, "x"),
        },
        reject_requested(RejectionReason::UnknownSku, "x"),
    ];
    Given::given(history.clone())
        .when(SagaInput::CancellationRequested)
        .then(vec![]);
    let mut history = history;
    history.push(SagaEvent::SagaRejected {
        reason: RejectionReason::UnknownSku,
    });
    Given::given(history)
        .when(SagaInput::CancellationRequested)
        .then(vec![]);
}
