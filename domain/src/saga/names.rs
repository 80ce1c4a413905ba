//! Stable names of steps and replies, for the wire, views and metrics. Each name parses back to
//! what it names, so the names are the contract and the enums stay free to change shape.

use std::fmt;
use std::str::FromStr;

use super::{CreditReply, SagaStep, StockReply};

/// A name that is not a step or reply this version knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown saga name {0:?}")]
pub struct UnknownName(pub String);

impl fmt::Display for SagaStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for SagaStep {
    type Err = UnknownName;

    fn from_str(raw: &str) -> Result<Self, UnknownName> {
        let unknown = || UnknownName(raw.to_owned());
        let line = |n: &str| n.parse::<usize>().map_err(|_| unknown());
        Ok(match raw.split_once('/') {
            Some(("reserve-stock", n)) => Self::ReserveStock { line: line(n)? },
            Some(("release-stock", n)) => Self::ReleaseStock { line: line(n)? },
            Some(_) => return Err(unknown()),
            None => match raw {
                "reserve-credit" => Self::ReserveCredit,
                "approve" => Self::Approve,
                "release-credit" => Self::ReleaseCredit,
                "reject" => Self::Reject,
                "confirm-cancellation" => Self::ConfirmCancellation,
                _ => return Err(unknown()),
            },
        })
    }
}

impl SagaStep {
    /// Compensating steps undo or finish after a failure; the view lists them apart.
    pub fn is_compensation(&self) -> bool {
        matches!(
            self,
            Self::ReleaseStock { .. }
                | Self::ReleaseCredit
                | Self::Reject
                | Self::ConfirmCancellation
        )
    }
}

impl StockReply {
    pub const ALL: [StockReply; 3] = [Self::Reserved, Self::OutOfStock, Self::UnknownSku];

    pub fn code(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::UnknownSku => "UNKNOWN_SKU",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl CreditReply {
    pub const ALL: [CreditReply; 3] = [Self::Reserved, Self::LimitExceeded, Self::UnknownCustomer];

    pub fn code(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::LimitExceeded => "CREDIT_LIMIT_EXCEEDED",
            Self::UnknownCustomer => "UNKNOWN_CUSTOMER",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::RejectionReason;
    use crate::saga::{SagaOutcome, SagaPhase};

    #[test]
    fn every_phase_has_its_name_in_the_list_of_names_and_the_terminal_ones_in_theirs() {
        let cancel = SagaOutcome::Cancel;
        let phases = [
            SagaPhase::ReservingStock { line: 0 },
            SagaPhase::ReservingCredit,
            SagaPhase::Approving,
            SagaPhase::Approved,
            SagaPhase::Compensating {
                outcome: cancel.clone(),
            },
            SagaPhase::Finishing { outcome: cancel },
            SagaPhase::Rejected {
                reason: RejectionReason::Timeout,
            },
            SagaPhase::Cancelled,
        ];
        let names: Vec<&str> = phases.iter().map(SagaPhase::as_str).collect();
        assert_eq!(names, SagaPhase::NAMES);
        let terminal: Vec<&str> = phases
            .iter()
            .filter(|p| p.is_terminal())
            .map(SagaPhase::as_str)
            .collect();
        assert_eq!(terminal, SagaPhase::TERMINAL_NAMES);
    }

    #[test]
    fn every_step_name_parses_back_to_its_step() {
        let steps = [
            SagaStep::ReserveStock { line: 0 },
            SagaStep::ReserveStock { line: 12 },
            SagaStep::ReserveCredit,
            SagaStep::Approve,
            SagaStep::ReleaseStock { line: 3 },
            SagaStep::ReleaseCredit,
            SagaStep::Reject,
            SagaStep::ConfirmCancellation,
        ];
        for step in steps {
            assert_eq!(step.name().parse::<SagaStep>(), Ok(step));
        }
        for bad in [
            "",
            "reserve-stock",
            "reserve-stock/x",
            "approve/1",
            "launch",
        ] {
            assert!(bad.parse::<SagaStep>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_timeout_and_its_re_request_are_not_progress_but_an_answer_is() {
        use super::super::SagaEvent;
        let timed_out = SagaEvent::StepTimedOut {
            step: SagaStep::Approve,
        };
        assert!(!timed_out.is_progress(Some(&SagaEvent::ApprovalRequested)));
        assert!(!SagaEvent::ApprovalRequested.is_progress(Some(&timed_out)));
        assert!(SagaEvent::ApprovalRequested.is_progress(Some(&SagaEvent::CreditReserved)));
        assert!(SagaEvent::SagaApproved.is_progress(Some(&timed_out)));
        // A timed-out reservation starts a compensation: that is the saga moving on.
        let compensation = SagaEvent::CompensationStarted {
            outcome: super::super::SagaOutcome::Cancel,
        };
        assert!(compensation.is_progress(Some(&timed_out)));
    }

    #[test]
    fn the_phase_named_after_each_event_is_the_phase_evolve_reaches() {
        use super::super::evolve::evolve;
        use super::super::{decide::decide, SagaInput, SagaState};
        use crate::fixtures::{customer_id, order_id, qty, sku, usd};
        use crate::order::OrderLine;
        // Walk every path the decider takes (approval, a refusal with compensation, a
        // cancellation after approval) and compare after each event.
        let placed = SagaInput::OrderPlaced {
            order_id: order_id(1),
            customer_id: customer_id("c-1"),
            lines: vec![OrderLine {
                sku: sku("apple"),
                quantity: qty(1),
                unit_price: usd(100),
            }],
            total: usd(100),
        };
        let paths = [
            vec![
                placed.clone(),
                SagaInput::StockReservation {
                    line: 0,
                    reply: StockReply::Reserved,
                },
                SagaInput::CreditReservation {
                    reply: CreditReply::Reserved,
                },
                SagaInput::OrderApproved,
                SagaInput::CancellationRequested,
                SagaInput::StockReleased { line: 0 },
                SagaInput::CreditReleased,
                SagaInput::OrderCancelled,
            ],
            vec![
                placed,
                SagaInput::StockReservation {
                    line: 0,
                    reply: StockReply::Reserved,
                },
                SagaInput::CreditReservation {
                    reply: CreditReply::LimitExceeded,
                },
                SagaInput::StockReleased { line: 0 },
                SagaInput::OrderRejected,
            ],
        ];
        let mut seen = 0;
        for path in paths {
            let mut state = SagaState::NotStarted;
            for input in path {
                for event in decide(&state, input).unwrap() {
                    state = evolve(state, &event);
                    let SagaState::Running(saga) = &state else {
                        panic!("not started")
                    };
                    if let Some(name) = event.phase_after() {
                        assert_eq!(name, saga.phase.as_str(), "after {event:?}");
                        seen += 1;
                    }
                }
            }
            let SagaState::Running(saga) = &state else {
                panic!()
            };
            assert!(saga.phase.is_terminal());
            assert!(super::super::SagaPhase::TERMINAL_NAMES.contains(&saga.phase.as_str()));
        }
        assert!(seen >= 12);
    }

    #[test]
    fn every_reply_code_parses_back() {
        for reply in StockReply::ALL {
            assert_eq!(StockReply::from_code(reply.code()), Some(reply));
        }
        for reply in CreditReply::ALL {
            assert_eq!(CreditReply::from_code(reply.code()), Some(reply));
        }
        assert_eq!(StockReply::from_code("MAYBE"), None);
    }
}
