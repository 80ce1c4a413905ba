//! Commands on the wire (`avro/<aggregate>-commands/`): how HTTP handlers and the saga hand a
//! command to the partition's writer through the commands topic.

use apache_avro::types::Value;
use domain::customer::CustomerCommand;
use domain::inventory::InventoryCommand;
use domain::order::{OrderCommand, OrderLine, RejectionReason};
use domain::values::{CancellationReason, CustomerId, CustomerName, Sku};
use serde::{Deserialize, Serialize};

use super::{
    from_record, money, order_id, parse, quantity, quantity_out, to_record, MoneyRecord, WireRecord,
};
use crate::error::DecodeError;

#[derive(Serialize, Deserialize)]
struct RegisterCustomer {
    customer_id: String,
    name: String,
    credit_limit: MoneyRecord,
}

#[derive(Serialize, Deserialize)]
struct ReserveCredit {
    customer_id: String,
    order_id: String,
    amount: MoneyRecord,
}

#[derive(Serialize, Deserialize)]
struct ReleaseCredit {
    customer_id: String,
    order_id: String,
}

impl WireRecord for CustomerCommand {
    const FAMILY: &'static str = "customer-commands";

    fn event_type(&self) -> &'static str {
        match self {
            Self::Register { .. } => "RegisterCustomer",
            Self::ReserveCredit { .. } => "ReserveCredit",
            Self::ReleaseCredit { .. } => "ReleaseCredit",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::Register {
                customer_id,
                name,
                credit_limit,
            } => to_record(RegisterCustomer {
                customer_id: customer_id.to_string(),
                name: name.to_string(),
                credit_limit: credit_limit.into(),
            }),
            Self::ReserveCredit {
                customer_id,
                order_id,
                amount,
            } => to_record(ReserveCredit {
                customer_id: customer_id.to_string(),
                order_id: order_id.to_string(),
                amount: amount.into(),
            }),
            Self::ReleaseCredit {
                customer_id,
                order_id,
            } => to_record(ReleaseCredit {
                customer_id: customer_id.to_string(),
                order_id: order_id.to_string(),
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        let customer = |raw: &str| parse::<CustomerId>("customer_id", raw);
        Ok(match event_type {
            "RegisterCustomer" => {
                let r: RegisterCustomer = from_record(event_type, value)?;
                Self::Register {
                    customer_id: customer(&r.customer_id)?,
                    name: parse::<CustomerName>("name", &r.name)?,
                    credit_limit: money("credit_limit", &r.credit_limit)?,
                }
            }
            "ReserveCredit" => {
                let r: ReserveCredit = from_record(event_type, value)?;
                Self::ReserveCredit {
                    customer_id: customer(&r.customer_id)?,
                    order_id: order_id(&r.order_id)?,
                    amount: money("amount", &r.amount)?,
                }
            }
            "ReleaseCredit" => {
                let r: ReleaseCredit = from_record(event_type, value)?;
                Self::ReleaseCredit {
                    customer_id: customer(&r.customer_id)?,
                    order_id: order_id(&r.order_id)?,
                }
            }
            other => return Err(DecodeError::UnhandledEventType(other.to_owned())),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct AddStock {
    sku: String,
    quantity: i32,
}

#[derive(Serialize, Deserialize)]
struct ReserveStock {
    sku: String,
    order_id: String,
    quantity: i32,
}

#[derive(Serialize, Deserialize)]
struct ReleaseStock {
    sku: String,
    order_id: String,
}

impl WireRecord for InventoryCommand {
    const FAMILY: &'static str = "inventory-commands";

    fn event_type(&self) -> &'static str {
        match self {
            Self::AddStock { .. } => "AddStock",
            Self::ReserveStock { .. } => "ReserveStock",
            Self::ReleaseStock { .. } => "ReleaseStock",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::AddStock { sku, quantity } => to_record(AddStock {
                sku: sku.to_string(),
                quantity: quantity_out(*quantity),
            }),
            Self::ReserveStock {
                sku,
                order_id,
                quantity,
            } => to_record(ReserveStock {
                sku: sku.to_string(),
                order_id: order_id.to_string(),
                quantity: quantity_out(*quantity),
            }),
            Self::ReleaseStock { sku, order_id } => to_record(ReleaseStock {
                sku: sku.to_string(),
                order_id: order_id.to_string(),
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        let sku = |raw: &str| parse::<Sku>("sku", raw);
        Ok(match event_type {
            "AddStock" => {
                let r: AddStock = from_record(event_type, value)?;
                Self::AddStock {
                    sku: sku(&r.sku)?,
                    quantity: quantity("quantity", r.quantity)?,
                }
            }
            "ReserveStock" => {
                let r: ReserveStock = from_record(event_type, value)?;
                Self::ReserveStock {
                    sku: sku(&r.sku)?,
                    order_id: order_id(&r.order_id)?,
                    quantity: quantity("quantity", r.quantity)?,
                }
            }
            "ReleaseStock" => {
                let r: ReleaseStock = from_record(event_type, value)?;
                Self::ReleaseStock {
                    sku: sku(&r.sku)?,
                    order_id: order_id(&r.order_id)?,
                }
            }
            other => return Err(DecodeError::UnhandledEventType(other.to_owned())),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct LineRecord {
    sku: String,
    quantity: i32,
    unit_price: MoneyRecord,
}

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: String,
    customer_id: String,
    lines: Vec<LineRecord>,
}

#[derive(Serialize, Deserialize)]
struct OrderOnly {
    order_id: String,
}

#[derive(Serialize, Deserialize)]
struct RejectOrder {
    order_id: String,
    reason: String,
    detail: String,
}

#[derive(Serialize, Deserialize)]
struct RequestOrderCancellation {
    order_id: String,
    reason: Option<String>,
}

impl WireRecord for OrderCommand {
    const FAMILY: &'static str = "order-commands";

    fn event_type(&self) -> &'static str {
        match self {
            Self::Place { .. } => "PlaceOrder",
            Self::Approve { .. } => "ApproveOrder",
            Self::Reject { .. } => "RejectOrder",
            Self::RequestCancellation { .. } => "RequestOrderCancellation",
            Self::ConfirmCancellation { .. } => "ConfirmOrderCancellation",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::Place {
                order_id,
                customer_id,
                lines,
            } => to_record(PlaceOrder {
                order_id: order_id.to_string(),
                customer_id: customer_id.to_string(),
                lines: lines
                    .iter()
                    .map(|l| LineRecord {
                        sku: l.sku.to_string(),
                        quantity: quantity_out(l.quantity),
                        unit_price: (&l.unit_price).into(),
                    })
                    .collect(),
            }),
            Self::Approve { order_id } | Self::ConfirmCancellation { order_id } => {
                to_record(OrderOnly {
                    order_id: order_id.to_string(),
                })
            }
            Self::Reject {
                order_id,
                reason,
                detail,
            } => to_record(RejectOrder {
                order_id: order_id.to_string(),
                reason: reason.code().to_owned(),
                detail: detail.clone(),
            }),
            Self::RequestCancellation { order_id, reason } => to_record(RequestOrderCancellation {
                order_id: order_id.to_string(),
                reason: reason.as_ref().map(ToString::to_string),
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        Ok(match event_type {
            "PlaceOrder" => {
                let r: PlaceOrder = from_record(event_type, value)?;
                Self::Place {
                    order_id: order_id(&r.order_id)?,
                    customer_id: parse::<CustomerId>("customer_id", &r.customer_id)?,
                    lines: r
                        .lines
                        .iter()
                        .map(|l| {
                            Ok(OrderLine {
                                sku: parse::<Sku>("lines.sku", &l.sku)?,
                                quantity: quantity("lines.quantity", l.quantity)?,
                                unit_price: money("lines.unit_price", &l.unit_price)?,
                            })
                        })
                        .collect::<Result<_, DecodeError>>()?,
                }
            }
            "ApproveOrder" | "ConfirmOrderCancellation" => {
                let r: OrderOnly = from_record(event_type, value)?;
                let order_id = order_id(&r.order_id)?;
                if event_type == "ApproveOrder" {
                    Self::Approve { order_id }
                } else {
                    Self::ConfirmCancellation { order_id }
                }
            }
            "RejectOrder" => {
                let r: RejectOrder = from_record(event_type, value)?;
                Self::Reject {
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
            "RequestOrderCancellation" => {
                let r: RequestOrderCancellation = from_record(event_type, value)?;
                Self::RequestCancellation {
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
