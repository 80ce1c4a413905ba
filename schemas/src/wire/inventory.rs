//! Inventory events on the wire (`avro/inventory/`).

use apache_avro::types::Value;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::values::{InvalidValue, Sku};
use domain::Aggregate;
use serde::{Deserialize, Serialize};

use super::{from_record, order_id, parse, quantity, quantity_out, to_record, WireRecord};
use crate::error::DecodeError;

#[derive(Serialize, Deserialize)]
struct StockAdded {
    sku: String,
    quantity: i32,
}

/// StockReserved and StockReleased have the same shape.
#[derive(Serialize, Deserialize)]
struct StockMoved {
    sku: String,
    order_id: String,
    quantity: i32,
}

#[derive(Serialize, Deserialize)]
struct StockReservationRejected {
    sku: String,
    order_id: String,
    requested: i32,
    available: i64,
}

impl WireRecord for InventoryEvent {
    const FAMILY: &'static str = InventoryItem::KIND.as_str();

    fn event_type(&self) -> &'static str {
        match self {
            Self::StockAdded { .. } => "StockAdded",
            Self::StockReserved { .. } => "StockReserved",
            Self::StockReservationRejected { .. } => "StockReservationRejected",
            Self::StockReleased { .. } => "StockReleased",
        }
    }

    fn to_avro(&self) -> Result<Value, apache_avro::Error> {
        match self {
            Self::StockAdded { sku, quantity } => to_record(StockAdded {
                sku: sku.to_string(),
                quantity: quantity_out(*quantity),
            }),
            Self::StockReserved {
                sku,
                order_id,
                quantity,
            }
            | Self::StockReleased {
                sku,
                order_id,
                quantity,
            } => to_record(StockMoved {
                sku: sku.to_string(),
                order_id: order_id.to_string(),
                quantity: quantity_out(*quantity),
            }),
            Self::StockReservationRejected {
                sku,
                order_id,
                requested,
                available,
            } => to_record(StockReservationRejected {
                sku: sku.to_string(),
                order_id: order_id.to_string(),
                requested: quantity_out(*requested),
                available: i64::try_from(*available).unwrap_or(i64::MAX),
            }),
        }
    }

    fn from_avro(event_type: &str, value: &Value) -> Result<Self, DecodeError> {
        let sku = |raw: &str| parse::<Sku>("sku", raw);
        Ok(match event_type {
            "StockAdded" => {
                let r: StockAdded = from_record(event_type, value)?;
                Self::StockAdded {
                    sku: sku(&r.sku)?,
                    quantity: quantity("quantity", r.quantity)?,
                }
            }
            "StockReserved" | "StockReleased" => {
                let r: StockMoved = from_record(event_type, value)?;
                let (sku, order_id, quantity) = (
                    sku(&r.sku)?,
                    order_id(&r.order_id)?,
                    quantity("quantity", r.quantity)?,
                );
                if event_type == "StockReserved" {
                    Self::StockReserved {
                        sku,
                        order_id,
                        quantity,
                    }
                } else {
                    Self::StockReleased {
                        sku,
                        order_id,
                        quantity,
                    }
                }
            }
            "StockReservationRejected" => {
                let r: StockReservationRejected = from_record(event_type, value)?;
                Self::StockReservationRejected {
                    sku: sku(&r.sku)?,
                    order_id: order_id(&r.order_id)?,
                    requested: quantity("requested", r.requested)?,
                    available: u64::try_from(r.available).map_err(|_| DecodeError::Invalid {
                        field: "available",
                        reason: InvalidValue::NegativeAmount,
                    })?,
                }
            }
            other => return Err(DecodeError::UnhandledEventType(other.to_owned())),
        })
    }
}
