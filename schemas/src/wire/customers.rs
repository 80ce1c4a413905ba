//! Customer events on the wire (`avro/customers/`).

use apache_avro::types::Value;
use domain::customer::{CustomerAggregate, CustomerEvent};
use domain::values::{CustomerId, CustomerName};
use domain::Aggregate;
use serde::{Deserialize, Serialize};

use super::{from_record, money, order_id, parse, to_record, MoneyRecord, WireRecord};
use crate::error::DecodeError;

#[derive(Serialize, Deserialize)]
struct CustomerRegistered {
    customer_id: String,
    name: String,
    credit_limit: MoneyRecord,
}

/// CreditReserved and CreditReleased have the same shape.
#[derive(Serialize, Deserialize)]
struct CreditMoved {
    customer_id: String,
    order_id: String,
    amount: MoneyRecord,
}

#[derive(Serialize, Deserialize)]
struct CreditLimitExceeded {
    customer_id: String,
    order_id: String,
    requested: MoneyRecord,
    available: MoneyRecord,
}

impl WireRecord for CustomerEvent {
    const FAMILY: &'static str = CustomerAggregate::KIND.as_str();

    fn event_type(&self) -> &'static str {
        match self {
            Self::CustomerRegistered { .. } => "CustomerRegistered",
            Self::CreditReserved { .. } => "CreditReserved",
            Self::CreditLimitExceeded { .. } => "CreditLimitExceeded",
            Self::CreditReleased { .. } => "CreditReleased",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::CustomerRegistered {
                customer_id,
                name,
                credit_limit,
            } => to_record(CustomerRegistered {
                customer_id: customer_id.to_string(),
                name: name.to_string(),
                credit_limit: credit_limit.into(),
            }),
            Self::CreditReserved {
                customer_id,
                order_id,
                amount,
            }
            | Self::CreditReleased {
                customer_id,
                order_id,
                amount,
            } => to_record(CreditMoved {
                customer_id: customer_id.to_string(),
                order_id: order_id.to_string(),
                amount: amount.into(),
            }),
            Self::CreditLimitExceeded {
                customer_id,
                order_id,
                requested,
                available,
            } => to_record(CreditLimitExceeded {
                customer_id: customer_id.to_string(),
                order_id: order_id.to_string(),
                requested: requested.into(),
                available: available.into(),
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        let customer = |raw: &str| parse::<CustomerId>("customer_id", raw);
        Ok(match event_type {
            "CustomerRegistered" => {
                let r: CustomerRegistered = from_record(event_type, value)?;
                Self::CustomerRegistered {
                    customer_id: customer(&r.customer_id)?,
                    name: parse::<CustomerName>("name", &r.name)?,
                    credit_limit: money("credit_limit", &r.credit_limit)?,
                }
            }
            "CreditReserved" | "CreditReleased" => {
                let r: CreditMoved = from_record(event_type, value)?;
                let (customer_id, order_id, amount) = (
                    customer(&r.customer_id)?,
                    order_id(&r.order_id)?,
                    money("amount", &r.amount)?,
                );
                if event_type == "CreditReserved" {
                    Self::CreditReserved {
                        customer_id,
                        order_id,
                        amount,
                    }
                } else {
                    Self::CreditReleased {
                        customer_id,
                        order_id,
                        amount,
                    }
                }
            }
            "CreditLimitExceeded" => {
                let r: CreditLimitExceeded = from_record(event_type, value)?;
                Self::CreditLimitExceeded {
                    customer_id: customer(&r.customer_id)?,
                    order_id: order_id(&r.order_id)?,
                    requested: money("requested", &r.requested)?,
                    available: money("available", &r.available)?,
                }
            }
            other => return Err(DecodeError::UnhandledEventType(other.to_owned())),
        })
    }
}
