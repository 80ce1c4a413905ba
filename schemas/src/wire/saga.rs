//! The order saga on the wire: its events (`avro/order-sagas/`) and the inputs addressed to it
//! (`avro/order-saga-commands/`). Saga events carry no saga id: the record key and the envelope's
//! aggregate id name the saga, as for every aggregate stream.

use apache_avro::types::Value;
use domain::order::RejectionReason;
use domain::saga::{
    CreditReply, SagaEvent, SagaInput, SagaMessage, SagaOutcome, SagaStep, StockReply,
};
use domain::values::CustomerId;
use serde::{Deserialize, Serialize};

use super::orders::{line_records, lines_from, OrderLineRecord};
use super::{from_record, money, order_id, parse, to_record, MoneyRecord, WireRecord};
use crate::error::DecodeError;

#[derive(Serialize, Deserialize)]
struct Started {
    order_id: String,
    customer_id: String,
    lines: Vec<OrderLineRecord>,
    total: MoneyRecord,
}

#[derive(Serialize, Deserialize)]
struct Nothing {}

#[derive(Serialize, Deserialize)]
struct Line {
    line: i32,
}

#[derive(Serialize, Deserialize)]
struct LineAttempt {
    line: i32,
    attempt: i32,
}

#[derive(Serialize, Deserialize)]
struct Attempt {
    attempt: i32,
}

#[derive(Serialize, Deserialize)]
struct LineReason {
    line: i32,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct Reason {
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct ReasonDetail {
    reason: String,
    detail: String,
}

#[derive(Serialize, Deserialize)]
struct Step {
    step: String,
}

#[derive(Serialize, Deserialize)]
struct Compensation {
    outcome: String,
    reason: Option<String>,
    detail: String,
}

fn line_out(line: usize) -> i32 {
    i32::try_from(line).unwrap_or(i32::MAX)
}

fn line_in(raw: i32) -> Result<usize, DecodeError> {
    usize::try_from(raw).map_err(|_| DecodeError::UnknownValue {
        field: "line",
        value: raw.to_string(),
    })
}

fn attempt_out(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

fn attempt_in(raw: i32) -> Result<u32, DecodeError> {
    u32::try_from(raw)
        .ok()
        .filter(|a| *a >= 1)
        .ok_or(DecodeError::UnknownValue {
            field: "attempt",
            value: raw.to_string(),
        })
}

fn reason_in(raw: &str) -> Result<RejectionReason, DecodeError> {
    RejectionReason::from_code(raw).ok_or(DecodeError::UnknownValue {
        field: "reason",
        value: raw.to_owned(),
    })
}

fn step_in(raw: &str) -> Result<SagaStep, DecodeError> {
    raw.parse().map_err(|_| DecodeError::UnknownValue {
        field: "step",
        value: raw.to_owned(),
    })
}

impl WireRecord for SagaEvent {
    const FAMILY: &'static str = domain::AggregateKind::OrderSaga.as_str();

    fn event_type(&self) -> &'static str {
        match self {
            Self::SagaStarted { .. } => "SagaStarted",
            Self::StockReservationRequested { .. } => "StockReservationRequested",
            Self::StockReserved { .. } => "StockReserved",
            Self::StockReservationFailed { .. } => "StockReservationFailed",
            Self::CreditReservationRequested => "CreditReservationRequested",
            Self::CreditReserved => "CreditReserved",
            Self::CreditReservationFailed { .. } => "CreditReservationFailed",
            Self::ApprovalRequested => "ApprovalRequested",
            Self::SagaApproved => "SagaApproved",
            Self::StepTimedOut { .. } => "StepTimedOut",
            Self::CompensationStarted { .. } => "CompensationStarted",
            Self::StockReleaseRequested { .. } => "StockReleaseRequested",
            Self::StockReleased { .. } => "StockReleased",
            Self::CreditReleaseRequested { .. } => "CreditReleaseRequested",
            Self::CreditReleased => "CreditReleased",
            Self::RejectionRequested { .. } => "RejectionRequested",
            Self::CancellationConfirmationRequested => "CancellationConfirmationRequested",
            Self::SagaRejected { .. } => "SagaRejected",
            Self::SagaCancelled => "SagaCancelled",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::SagaStarted {
                order_id,
                customer_id,
                lines,
                total,
            } => to_record(Started {
                order_id: order_id.to_string(),
                customer_id: customer_id.to_string(),
                lines: line_records(lines),
                total: total.into(),
            }),
            Self::StockReservationRequested { line }
            | Self::StockReserved { line }
            | Self::StockReleased { line } => to_record(Line {
                line: line_out(*line),
            }),
            Self::StockReservationFailed { line, reason } => to_record(LineReason {
                line: line_out(*line),
                reason: reason.code().to_owned(),
            }),
            Self::CreditReservationFailed { reason } | Self::SagaRejected { reason } => {
                to_record(Reason {
                    reason: reason.code().to_owned(),
                })
            }
            Self::StepTimedOut { step } => to_record(Step { step: step.name() }),
            Self::CompensationStarted { outcome } => to_record(match outcome {
                SagaOutcome::Reject { reason, detail } => Compensation {
                    outcome: "REJECT".into(),
                    reason: Some(reason.code().to_owned()),
                    detail: detail.clone(),
                },
                SagaOutcome::Cancel => Compensation {
                    outcome: "CANCEL".into(),
                    reason: None,
                    detail: String::new(),
                },
            }),
            Self::StockReleaseRequested { line, attempt } => to_record(LineAttempt {
                line: line_out(*line),
                attempt: attempt_out(*attempt),
            }),
            Self::CreditReleaseRequested { attempt } => to_record(Attempt {
                attempt: attempt_out(*attempt),
            }),
            Self::RejectionRequested { reason, detail } => to_record(ReasonDetail {
                reason: reason.code().to_owned(),
                detail: detail.clone(),
            }),
            Self::CreditReservationRequested
            | Self::CreditReserved
            | Self::ApprovalRequested
            | Self::SagaApproved
            | Self::CreditReleased
            | Self::CancellationConfirmationRequested
            | Self::SagaCancelled => to_record(Nothing {}),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        let line = || -> Result<usize, DecodeError> {
            line_in(from_record::<Line>(event_type, value)?.line)
        };
        Ok(match event_type {
            "SagaStarted" => {
                let r: Started = from_record(event_type, value)?;
                Self::SagaStarted {
                    order_id: order_id(&r.order_id)?,
                    customer_id: parse::<CustomerId>("customer_id", &r.customer_id)?,
                    lines: lines_from(&r.lines)?,
                    total: money("total", &r.total)?,
                }
            }
            "StockReservationRequested" => Self::StockReservationRequested { line: line()? },
            "StockReserved" => Self::StockReserved { line: line()? },
            "StockReleased" => Self::StockReleased { line: line()? },
            "StockReservationFailed" => {
                let r: LineReason = from_record(event_type, value)?;
                Self::StockReservationFailed {
                    line: line_in(r.line)?,
                    reason: reason_in(&r.reason)?,
                }
            }
            "CreditReservationFailed" | "SagaRejected" => {
                let r: Reason = from_record(event_type, value)?;
                let reason = reason_in(&r.reason)?;
                if event_type == "SagaRejected" {
                    Self::SagaRejected { reason }
                } else {
                    Self::CreditReservationFailed { reason }
                }
            }
            "StepTimedOut" => {
                let r: Step = from_record(event_type, value)?;
                Self::StepTimedOut {
                    step: step_in(&r.step)?,
                }
            }
            "CompensationStarted" => {
                let r: Compensation = from_record(event_type, value)?;
                let outcome = match (r.outcome.as_str(), r.reason.as_deref()) {
                    ("CANCEL", _) => SagaOutcome::Cancel,
                    ("REJECT", Some(reason)) => SagaOutcome::Reject {
                        reason: reason_in(reason)?,
                        detail: r.detail,
                    },
                    _ => {
                        return Err(DecodeError::UnknownValue {
                            field: "outcome",
                            value: r.outcome,
                        })
                    }
                };
                Self::CompensationStarted { outcome }
            }
            "StockReleaseRequested" => {
                let r: LineAttempt = from_record(event_type, value)?;
                Self::StockReleaseRequested {
                    line: line_in(r.line)?,
                    attempt: attempt_in(r.attempt)?,
                }
            }
            "CreditReleaseRequested" => {
                let r: Attempt = from_record(event_type, value)?;
                Self::CreditReleaseRequested {
                    attempt: attempt_in(r.attempt)?,
                }
            }
            "RejectionRequested" => {
                let r: ReasonDetail = from_record(event_type, value)?;
                Self::RejectionRequested {
                    reason: reason_in(&r.reason)?,
                    detail: r.detail,
                }
            }
            "CreditReservationRequested" => Self::CreditReservationRequested,
            "CreditReserved" => Self::CreditReserved,
            "ApprovalRequested" => Self::ApprovalRequested,
            "SagaApproved" => Self::SagaApproved,
            "CreditReleased" => Self::CreditReleased,
            "CancellationConfirmationRequested" => Self::CancellationConfirmationRequested,
            "SagaCancelled" => Self::SagaCancelled,
            other => return Err(DecodeError::UnhandledEventType(other.to_owned())),
        })
    }
}

/// Saga inputs: every record names its saga (`order_id`).
#[derive(Serialize, Deserialize)]
struct Addressed {
    order_id: String,
}

#[derive(Serialize, Deserialize)]
struct AddressedLine {
    order_id: String,
    line: i32,
}

#[derive(Serialize, Deserialize)]
struct StockAnswer {
    order_id: String,
    line: i32,
    reply: String,
}

#[derive(Serialize, Deserialize)]
struct CreditAnswer {
    order_id: String,
    reply: String,
}

#[derive(Serialize, Deserialize)]
struct AddressedStep {
    order_id: String,
    step: String,
}

impl WireRecord for SagaMessage {
    const FAMILY: &'static str = "order-saga-commands";

    fn event_type(&self) -> &'static str {
        match self.input {
            SagaInput::OrderPlaced { .. } => "StartSaga",
            SagaInput::StockReservation { .. } => "RecordStockReservation",
            SagaInput::CreditReservation { .. } => "RecordCreditReservation",
            SagaInput::StockReleased { .. } => "RecordStockRelease",
            SagaInput::CreditReleased => "RecordCreditRelease",
            SagaInput::OrderApproved => "RecordOrderApproved",
            SagaInput::OrderRejected => "RecordOrderRejected",
            SagaInput::OrderCancelled => "RecordOrderCancelled",
            SagaInput::CancellationRequested => "RecordCancellationRequest",
            SagaInput::DeadlinePassed { .. } => "RecordDeadline",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        let saga = self.saga_id.to_string();
        match &self.input {
            SagaInput::OrderPlaced {
                order_id: _,
                customer_id,
                lines,
                total,
            } => to_record(Started {
                order_id: saga,
                customer_id: customer_id.to_string(),
                lines: line_records(lines),
                total: total.into(),
            }),
            SagaInput::StockReservation { line, reply } => to_record(StockAnswer {
                order_id: saga,
                line: line_out(*line),
                reply: reply.code().to_owned(),
            }),
            SagaInput::CreditReservation { reply } => to_record(CreditAnswer {
                order_id: saga,
                reply: reply.code().to_owned(),
            }),
            SagaInput::StockReleased { line } => to_record(AddressedLine {
                order_id: saga,
                line: line_out(*line),
            }),
            SagaInput::DeadlinePassed { step } => to_record(AddressedStep {
                order_id: saga,
                step: step.name(),
            }),
            SagaInput::CreditReleased
            | SagaInput::OrderApproved
            | SagaInput::OrderRejected
            | SagaInput::OrderCancelled
            | SagaInput::CancellationRequested => to_record(Addressed { order_id: saga }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        let addressed = |input: SagaInput| -> Result<Self, DecodeError> {
            let r: Addressed = from_record(event_type, value)?;
            Ok(Self {
                saga_id: order_id(&r.order_id)?,
                input,
            })
        };
        match event_type {
            "StartSaga" => {
                let r: Started = from_record(event_type, value)?;
                let saga_id = order_id(&r.order_id)?;
                Ok(Self {
                    saga_id,
                    input: SagaInput::OrderPlaced {
                        order_id: saga_id,
                        customer_id: parse::<CustomerId>("customer_id", &r.customer_id)?,
                        lines: lines_from(&r.lines)?,
                        total: money("total", &r.total)?,
                    },
                })
            }
            "RecordStockReservation" => {
                let r: StockAnswer = from_record(event_type, value)?;
                let reply = StockReply::from_code(&r.reply).ok_or(DecodeError::UnknownValue {
                    field: "reply",
                    value: r.reply.clone(),
                })?;
                Ok(Self {
                    saga_id: order_id(&r.order_id)?,
                    input: SagaInput::StockReservation {
                        line: line_in(r.line)?,
                        reply,
                    },
                })
            }
            "RecordCreditReservation" => {
                let r: CreditAnswer = from_record(event_type, value)?;
                let reply = CreditReply::from_code(&r.reply).ok_or(DecodeError::UnknownValue {
                    field: "reply",
                    value: r.reply.clone(),
                })?;
                Ok(Self {
                    saga_id: order_id(&r.order_id)?,
                    input: SagaInput::CreditReservation { reply },
                })
            }
            "RecordStockRelease" => {
                let r: AddressedLine = from_record(event_type, value)?;
                Ok(Self {
                    saga_id: order_id(&r.order_id)?,
                    input: SagaInput::StockReleased {
                        line: line_in(r.line)?,
                    },
                })
            }
            "RecordDeadline" => {
                let r: AddressedStep = from_record(event_type, value)?;
                Ok(Self {
                    saga_id: order_id(&r.order_id)?,
                    input: SagaInput::DeadlinePassed {
                        step: step_in(&r.step)?,
                    },
                })
            }
            "RecordCreditRelease" => addressed(SagaInput::CreditReleased),
            "RecordOrderApproved" => addressed(SagaInput::OrderApproved),
            "RecordOrderRejected" => addressed(SagaInput::OrderRejected),
            "RecordOrderCancelled" => addressed(SagaInput::OrderCancelled),
            "RecordCancellationRequest" => addressed(SagaInput::CancellationRequested),
            other => Err(DecodeError::UnhandledEventType(other.to_owned())),
        }
    }
}
