//! Records what a saga event says. No rules and no failure: replaying a saga's stream always
//! rebuilds the same state.

use super::{Hold, OrderSaga, SagaEvent, SagaPhase, SagaState};
use crate::order::RejectionReason;

pub(super) fn evolve(state: SagaState, event: &SagaEvent) -> SagaState {
    match (state, event) {
        (
            _,
            SagaEvent::SagaStarted {
                order_id,
                customer_id,
                lines,
                total,
            },
        ) => SagaState::Running(OrderSaga {
            order_id: *order_id,
            customer_id: customer_id.clone(),
            lines: lines.clone(),
            total: *total,
            stock: vec![Hold::NotRequested; lines.len()],
            credit: Hold::NotRequested,
            phase: SagaPhase::ReservingStock { line: 0 },
        }),
        (SagaState::Running(saga), event) => SagaState::Running(evolve_saga(saga, event)),
        (state, _) => state,
    }
}

/// A reservation reply that arrives while a release is outstanding marks it for one more release.
fn reserved(hold: Hold) -> Hold {
    match hold {
        Hold::Releasing { attempt, .. } => Hold::Releasing {
            attempt,
            again: true,
        },
        _ => Hold::Held,
    }
}

/// Re-asking for the same release keeps what is already known about it.
fn releasing(hold: Hold, attempt: u32) -> Hold {
    match hold {
        Hold::Releasing {
            attempt: current,
            again,
        } if current == attempt => Hold::Releasing { attempt, again },
        _ => Hold::Releasing {
            attempt,
            again: false,
        },
    }
}

/// The hold after a failed reservation. A participant that refused recorded its refusal (a
/// re-sent request gets the same answer): nothing is or will be held. A participant that did
/// not exist recorded nothing, so the same request re-sent after an orchestrator crash finds
/// the customer or SKU if it was created meanwhile, and reserves: the hold stays `Requested`
/// (may become held), so the compensation releases it (a release of nothing is answered as
/// released).
fn after_failure(reason: RejectionReason) -> Hold {
    match reason {
        RejectionReason::UnknownSku | RejectionReason::UnknownCustomer => Hold::Requested,
        _ => Hold::Refused,
    }
}

pub(super) fn evolve_saga(mut saga: OrderSaga, event: &SagaEvent) -> OrderSaga {
    let mut set_stock = |line: usize, update: &dyn Fn(Hold) -> Hold| {
        if let Some(hold) = saga.stock.get_mut(line) {
            *hold = update(*hold);
        }
    };
    match event {
        SagaEvent::SagaStarted { .. } | SagaEvent::StepTimedOut { .. } => {}
        SagaEvent::StockReservationRequested { line } => {
            set_stock(*line, &|_| Hold::Requested);
            saga.phase = SagaPhase::ReservingStock { line: *line };
        }
        SagaEvent::StockReserved { line } => set_stock(*line, &reserved),
        SagaEvent::StockReservationFailed { line, reason } => {
            set_stock(*line, &|_| after_failure(*reason))
        }
        SagaEvent::StockReleaseRequested { line, attempt } => {
            set_stock(*line, &|h| releasing(h, *attempt))
        }
        SagaEvent::StockReleased { line } => set_stock(*line, &|h| match h {
            Hold::Releasing { attempt, .. } => Hold::Released { attempt },
            other => other,
        }),
        SagaEvent::CreditReservationRequested => {
            saga.credit = Hold::Requested;
            saga.phase = SagaPhase::ReservingCredit;
        }
        SagaEvent::CreditReserved => saga.credit = reserved(saga.credit),
        SagaEvent::CreditReservationFailed { reason } => saga.credit = after_failure(*reason),
        SagaEvent::CreditReleaseRequested { attempt } => {
            saga.credit = releasing(saga.credit, *attempt)
        }
        SagaEvent::CreditReleased => {
            if let Hold::Releasing { attempt, .. } = saga.credit {
                saga.credit = Hold::Released { attempt };
            }
        }
        SagaEvent::ApprovalRequested => saga.phase = SagaPhase::Approving,
        SagaEvent::SagaApproved => saga.phase = SagaPhase::Approved,
        SagaEvent::CompensationStarted { outcome } => {
            saga.phase = SagaPhase::Compensating {
                outcome: outcome.clone(),
            }
        }
        SagaEvent::RejectionRequested { reason, detail } => {
            saga.phase = SagaPhase::Finishing {
                outcome: super::SagaOutcome::Reject {
                    reason: *reason,
                    detail: detail.clone(),
                },
            }
        }
        SagaEvent::CancellationConfirmationRequested => {
            saga.phase = SagaPhase::Finishing {
                outcome: super::SagaOutcome::Cancel,
            }
        }
        SagaEvent::SagaRejected { reason } => saga.phase = SagaPhase::Rejected { reason: *reason },
        SagaEvent::SagaCancelled => saga.phase = SagaPhase::Cancelled,
    }
    saga
}
