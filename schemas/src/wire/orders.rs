//! Order events on the wire (`avro/orders/`).

use apache_avro::types::Value;
use domain::order::{OrderAggregate, OrderEvent, OrderLine, RejectionReason};
use domain::values::{CancellationReason, CustomerId, Sku};
use domain::Aggregate;
use serde::{Deserialize, Serialize};

use super::{
    from_record, money, order_id, parse, quantity, quantity_out, to_record, MoneyRecord, WireRecord,
};
use crate::error::DecodeError;

/// An order line as `OrderPlaced` (and the saga's start) carry it.
#[derive(Serialize, Deserialize)]
pub(super) struct OrderLineRecord {
    sku: String,
    quantity: i32,
    unit_price: MoneyRecord,
}

pub(super) fn line_records(lines: &[OrderLine]) -> Vec<OrderLineRecord> {
    lines
        .iter()
        .map(|line| OrderLineRecord {
            sku: line.sku.to_string(),
            quantity: quantity_out(line.quantity),
            unit_price: (&line.unit_price).into(),
        })
        .collect()
}

pub(super) fn lines_from(records: &[OrderLineRecord]) -> Result<Vec<OrderLine>, DecodeError> {
    records
        .iter()
        .map(|line| {
            Ok(OrderLine {
                sku: parse::<Sku>("lines.sku", &line.sku)?,
                quantity: quantity("lines.quantity", line.quantity)?,
                unit_price: money("lines.unit_price", &line.unit_price)?,
            })
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    lines: Vec<OrderLineRecord>,
    total: MoneyRecord,
}

/// OrderApproved and OrderCancelled carry only the id.
#[derive(Serialize, Deserialize)]
struct OrderOnly {
    order_id: String,
}

/// v2: `detail` added with default "" (v1 records read as empty).
#[derive(Serialize, Deserialize)]
struct OrderRejected {
    order_id: String,
    reason: String,
    detail: String,
}

#[derive(Serialize, Deserialize)]
struct OrderCancellationRequested {
    order_id: String,
    reason: Option<String>,
}

impl WireRecord for OrderEvent {
    const FAMILY: &'static str = OrderAggregate::KIND.as_str();

    fn event_type(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::OrderApproved { .. } => "OrderApproved",
            Self::OrderRejected { .. } => "OrderRejected",
            Self::OrderCancellationRequested { .. } => "OrderCancellationRequested",
            Self::OrderCancelled { .. } => "OrderCancelled",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::OrderPlaced {
                order_id,
                customer_id,
                lines,
                total,
            } => to_record(OrderPlaced {
                order_id: order_id.to_string(),
                customer_id: customer_id.to_string(),
                lines: line_records(lines),
                total: total.into(),
            }),
            Self::OrderApproved { order_id } | Self::OrderCancelled { order_id } => {
                to_record(OrderOnly {
                    order_id: order_id.to_string(),
                })
            }
            Self::OrderRejected {
                order_id,
                reason,
                detail,
            } => to_record(OrderRejected {
                order_id: order_id.to_string(),
                reason: reason.code().to_owned(),
                detail: detail.clone(),
            }),
            Self::OrderCancellationRequested { order_id, reason } => {
                to_record(OrderCancellationRequested {
                    order_id: order_id.to_string(),
                    reason: reason.as_ref().map(ToString::to_string),
                })
            }
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        Ok(match event_type {
            "OrderPlaced" => {
                let r: OrderPlaced = from_record(event_type, value)?;
                let lines = lines_from(&r.lines)?;
                Self::OrderPlaced {
                    order_id: order_id(&r.order_id)?,
                    customer_id: parse::<CustomerId>("customer_id", &r.customer_id)?,
                    lines,
                    total: money("total", &r.total)?,
                }
            }
            "OrderApproved" | "OrderCancelled" => {
                let r: OrderOnly = from_record(event_type, value)?;
                let order_id = order_id(&r.order_id)?;
                if event_type == "OrderApproved" {
                    Self::OrderApproved { order_id }
                } else {
                    Self::OrderCancelled { order_id }
                }
            }
            "OrderRejected" => {
                let r: OrderRejected = from_record(event_type, value)?;
                Self::OrderRejected {
                    order_id: order_id(&r.order_id)?,
                    reason: RejectionReason::from_code(&r.reason).ok_or(
                        DecodeError::UnknownValue {
                            field: "reason",
                            value: r.reason.clone(),
                        },
                    )?,
                    detail: r.detail,
                }
            }
            "OrderCancellationRequested" => {
                let r: OrderCancellationRequested = from_record(event_type, value)?;
                Self::OrderCancellationRequested {
                    order_id: order_id(&r.order_id)?,
                    reason: r
                        .reason
                        .as_deref()
                        .map(|raw| parse::<CancellationReason>("reason", raw))
                        .transpose()?,
                }
            }
            other => return Err(DecodeError::UnhandledEventType(other.to_owned())),
        })
    }
}
