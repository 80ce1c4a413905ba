//! The saga's rules: which facts an input adds, given what the saga already knows.
//! Every input may arrive twice (at-least-once delivery); a repeated input decides nothing new.

use super::evolve::evolve_saga;
use super::{
    CreditReply, Hold, OrderSaga, SagaEvent, SagaInput, SagaOutcome, SagaPhase, SagaState,
    SagaStep, StockReply,
};
use crate::order::RejectionReason;
use crate::DomainError;

pub(super) fn decide(state: &SagaState, input: SagaInput) -> Result<Vec<SagaEvent>, DomainError> {
    let saga = match (state, input) {
        (
            SagaState::NotStarted,
            SagaInput::OrderPlaced {
                order_id,
                customer_id,
                lines,
                total,
            },
        ) => {
            let first = if lines.is_empty() {
                SagaEvent::CreditReservationRequested
            } else {
                SagaEvent::StockReservationRequested { line: 0 }
            };
            return Ok(vec![
                SagaEvent::SagaStarted {
                    order_id,
                    customer_id,
                    lines,
                    total,
                },
                first,
            ]);
        }
        // Nothing to act on before the saga exists; a repeated start changes nothing.
        (SagaState::NotStarted, _) | (SagaState::Running(_), SagaInput::OrderPlaced { .. }) => {
            return Ok(vec![])
        }
        (SagaState::Running(saga), input) => (saga, input),
    };
    match saga {
        (saga, SagaInput::StockReservation { line, reply }) => {
            check_line(saga, line)?;
            Ok(on_stock_reply(saga, line, reply))
        }
        (saga, SagaInput::StockReleased { line }) => {
            check_line(saga, line)?;
            Ok(on_stock_released(saga, line))
        }
        (saga, SagaInput::CreditReservation { reply }) => Ok(on_credit_reply(saga, reply)),
        (saga, SagaInput::CreditReleased) => Ok(on_credit_released(saga)),
        (saga, SagaInput::OrderApproved) => Ok(match saga.phase {
            SagaPhase::Approving => vec![SagaEvent::SagaApproved],
            _ => vec![],
        }),
        (saga, SagaInput::OrderRejected) => Ok(match &saga.phase {
            SagaPhase::Finishing {
                outcome: SagaOutcome::Reject { reason, .. },
            } => vec![SagaEvent::SagaRejected { reason: *reason }],
            _ => vec![],
        }),
        (saga, SagaInput::OrderCancelled) => Ok(match saga.phase {
            SagaPhase::Finishing {
                outcome: SagaOutcome::Cancel,
            } => vec![SagaEvent::SagaCancelled],
            _ => vec![],
        }),
        (saga, SagaInput::CancellationRequested) => Ok(match saga.phase {
            SagaPhase::ReservingStock { .. }
            | SagaPhase::ReservingCredit
            | SagaPhase::Approving
            | SagaPhase::Approved => compensate(saga, SagaOutcome::Cancel),
            // Already compensating or finished: a rejection in progress wins.
            _ => vec![],
        }),
        (saga, SagaInput::DeadlinePassed { step }) => Ok(on_deadline(saga, step)),
        (_, SagaInput::OrderPlaced { .. }) => Ok(vec![]),
    }
}

fn check_line(saga: &OrderSaga, line: usize) -> Result<(), DomainError> {
    if line < saga.lines.len() {
        Ok(())
    } else {
        Err(DomainError::UnknownLine {
            line,
            lines: saga.lines.len(),
        })
    }
}

/// `events`, then whatever `next` decides on the state those events lead to.
fn followed_by(
    saga: &OrderSaga,
    mut events: Vec<SagaEvent>,
    next: impl FnOnce(&OrderSaga) -> Vec<SagaEvent>,
) -> Vec<SagaEvent> {
    let after = events.iter().fold(saga.clone(), evolve_saga);
    events.extend(next(&after));
    events
}

fn on_stock_reply(saga: &OrderSaga, line: usize, reply: StockReply) -> Vec<SagaEvent> {
    let current =
        saga.phase == SagaPhase::ReservingStock { line } && saga.stock[line] == Hold::Requested;
    if current {
        return match reply {
            StockReply::Reserved => {
                followed_by(saga, vec![SagaEvent::StockReserved { line }], |after| {
                    vec![if line + 1 < after.lines.len() {
                        SagaEvent::StockReservationRequested { line: line + 1 }
                    } else {
                        SagaEvent::CreditReservationRequested
                    }]
                })
            }
            StockReply::OutOfStock => {
                fail_stock(saga, line, RejectionReason::OutOfStock, "not enough stock")
            }
            StockReply::UnknownSku => {
                fail_stock(saga, line, RejectionReason::UnknownSku, "unknown sku")
            }
        };
    }
    // A reservation that lands after its release was requested is released again.
    match (saga.stock[line], reply) {
        (Hold::Releasing { .. }, StockReply::Reserved) => vec![SagaEvent::StockReserved { line }],
        (Hold::Released { attempt }, StockReply::Reserved) => vec![
            SagaEvent::StockReserved { line },
            SagaEvent::StockReleaseRequested {
                line,
                attempt: attempt + 1,
            },
        ],
        _ => vec![],
    }
}

fn fail_stock(
    saga: &OrderSaga,
    line: usize,
    reason: RejectionReason,
    what: &str,
) -> Vec<SagaEvent> {
    let sku = &saga.lines[line].sku;
    let detail = format!("line {line} (sku {sku}): {what}");
    followed_by(
        saga,
        vec![SagaEvent::StockReservationFailed { line, reason }],
        |after| compensate(after, SagaOutcome::Reject { reason, detail }),
    )
}

fn on_credit_reply(saga: &OrderSaga, reply: CreditReply) -> Vec<SagaEvent> {
    if saga.phase == SagaPhase::ReservingCredit && saga.credit == Hold::Requested {
        let (reason, detail) = match reply {
            CreditReply::Reserved => {
                return vec![SagaEvent::CreditReserved, SagaEvent::ApprovalRequested];
            }
            CreditReply::LimitExceeded => (
                RejectionReason::CreditLimitExceeded,
                format!("order total {} exceeds the available credit", saga.total),
            ),
            CreditReply::UnknownCustomer => (
                RejectionReason::UnknownCustomer,
                format!("customer {} does not exist", saga.customer_id),
            ),
        };
        return followed_by(
            saga,
            vec![SagaEvent::CreditReservationFailed { reason }],
            |after| compensate(after, SagaOutcome::Reject { reason, detail }),
        );
    }
    match (saga.credit, reply) {
        (Hold::Releasing { .. }, CreditReply::Reserved) => vec![SagaEvent::CreditReserved],
        (Hold::Released { attempt }, CreditReply::Reserved) => vec![
            SagaEvent::CreditReserved,
            SagaEvent::CreditReleaseRequested {
                attempt: attempt + 1,
            },
        ],
        _ => vec![],
    }
}

/// Starts releasing every hold that is or may become held; finishes at once if there is none.
fn compensate(saga: &OrderSaga, outcome: SagaOutcome) -> Vec<SagaEvent> {
    let mut events = vec![SagaEvent::CompensationStarted {
        outcome: outcome.clone(),
    }];
    for (line, hold) in saga.stock.iter().enumerate() {
        if matches!(hold, Hold::Requested | Hold::Held) {
            events.push(SagaEvent::StockReleaseRequested { line, attempt: 1 });
        }
    }
    if matches!(saga.credit, Hold::Requested | Hold::Held) {
        events.push(SagaEvent::CreditReleaseRequested { attempt: 1 });
    }
    if events.len() == 1 {
        events.push(finish(&outcome));
    }
    events
}

fn finish(outcome: &SagaOutcome) -> SagaEvent {
    match outcome {
        SagaOutcome::Reject { reason, detail } => SagaEvent::RejectionRequested {
            reason: *reason,
            detail: detail.clone(),
        },
        SagaOutcome::Cancel => SagaEvent::CancellationConfirmationRequested,
    }
}

/// Once the last release is confirmed, the compensation asks the order to finish.
fn finish_if_released(saga: &OrderSaga) -> Vec<SagaEvent> {
    let releasing = saga
        .stock
        .iter()
        .chain([&saga.credit])
        .any(|h| matches!(h, Hold::Releasing { .. }));
    match &saga.phase {
        SagaPhase::Compensating { outcome } if !releasing => vec![finish(outcome)],
        _ => vec![],
    }
}

fn on_stock_released(saga: &OrderSaga, line: usize) -> Vec<SagaEvent> {
    let Hold::Releasing { attempt, again } = saga.stock[line] else {
        return vec![];
    };
    let mut events = vec![SagaEvent::StockReleased { line }];
    if again {
        events.push(SagaEvent::StockReleaseRequested {
            line,
            attempt: attempt + 1,
        });
    }
    followed_by(saga, events, finish_if_released)
}

fn on_credit_released(saga: &OrderSaga) -> Vec<SagaEvent> {
    let Hold::Releasing { attempt, again } = saga.credit else {
        return vec![];
    };
    let mut events = vec![SagaEvent::CreditReleased];
    if again {
        events.push(SagaEvent::CreditReleaseRequested {
            attempt: attempt + 1,
        });
    }
    followed_by(saga, events, finish_if_released)
}

/// Reservations that time out are compensated; everything else is asked again with the same
/// key, which the command path de-duplicates.
fn on_deadline(saga: &OrderSaga, step: SagaStep) -> Vec<SagaEvent> {
    if !saga.awaiting().contains(&step) {
        return vec![];
    }
    let timed_out = SagaEvent::StepTimedOut { step };
    let again = match step {
        SagaStep::ReserveStock { .. } | SagaStep::ReserveCredit => {
            let detail = format!("no answer to {} in time", step.name());
            return followed_by(saga, vec![timed_out], |after| {
                compensate(
                    after,
                    SagaOutcome::Reject {
                        reason: RejectionReason::Timeout,
                        detail,
                    },
                )
            });
        }
        SagaStep::Approve => SagaEvent::ApprovalRequested,
        SagaStep::ReleaseStock { line } => match saga.stock[line] {
            Hold::Releasing { attempt, .. } => SagaEvent::StockReleaseRequested { line, attempt },
            _ => return vec![],
        },
        SagaStep::ReleaseCredit => match saga.credit {
            Hold::Releasing { attempt, .. } => SagaEvent::CreditReleaseRequested { attempt },
            _ => return vec![],
        },
        SagaStep::Reject | SagaStep::ConfirmCancellation => match &saga.phase {
            SagaPhase::Finishing { outcome } => finish(outcome),
            _ => return vec![],
        },
    };
    vec![timed_out, again]
}
