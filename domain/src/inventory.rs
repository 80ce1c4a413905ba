//! Inventory item: stock on hand, and stock reserved per order until it is released.

use std::collections::BTreeMap;

use crate::aggregate::{Aggregate, AggregateKind};
use crate::values::{OrderId, Quantity, Sku};
use crate::DomainError;

/// Stock on hand is capped so sums of quantities can never overflow.
pub const MAX_ON_HAND: u64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq)]
pub enum InventoryCommand {
    /// Adds stock, creating the item if it is new.
    AddStock {
        sku: Sku,
        quantity: Quantity,
    },
    ReserveStock {
        sku: Sku,
        order_id: OrderId,
        quantity: Quantity,
    },
    ReleaseStock {
        sku: Sku,
        order_id: OrderId,
    },
}

impl InventoryCommand {
    pub fn sku(&self) -> &Sku {
        match self {
            Self::AddStock { sku, .. }
            | Self::ReserveStock { sku, .. }
            | Self::ReleaseStock { sku, .. } => sku,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InventoryEvent {
    StockAdded {
        sku: Sku,
        quantity: Quantity,
    },
    StockReserved {
        sku: Sku,
        order_id: OrderId,
        quantity: Quantity,
    },
    StockReservationRejected {
        sku: Sku,
        order_id: OrderId,
        requested: Quantity,
        available: u64,
    },
    StockReleased {
        sku: Sku,
        order_id: OrderId,
        quantity: Quantity,
    },
}

/// An item that has had stock added at least once.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub sku: Sku,
    pub on_hand: u64,
    pub reservations: BTreeMap<OrderId, Quantity>,
}

impl Item {
    pub fn reserved(&self) -> u64 {
        self.reservations.values().map(|q| u64::from(q.get())).sum()
    }

    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved())
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum InventoryState {
    #[default]
    Unknown,
    Stocked(Item),
}

/// The inventory item aggregate.
#[derive(Debug)]
pub enum InventoryItem {}

impl Aggregate for InventoryItem {
    const KIND: AggregateKind = AggregateKind::InventoryItem;
    type State = InventoryState;
    type Command = InventoryCommand;
    type Event = InventoryEvent;

    fn decide(
        state: &InventoryState,
        command: InventoryCommand,
    ) -> Result<Vec<InventoryEvent>, DomainError> {
        match (state, command) {
            (state, InventoryCommand::AddStock { sku, quantity }) => {
                let on_hand = match state {
                    InventoryState::Unknown => 0,
                    InventoryState::Stocked(item) => item.on_hand,
                };
                if on_hand + u64::from(quantity.get()) > MAX_ON_HAND {
                    return Err(DomainError::StockOutOfRange);
                }
                Ok(vec![InventoryEvent::StockAdded { sku, quantity }])
            }
            (InventoryState::Unknown, command) => Err(DomainError::NotFound {
                kind: AggregateKind::InventoryItem,
                id: command.sku().to_string(),
            }),
            (
                InventoryState::Stocked(item),
                InventoryCommand::ReserveStock {
                    sku,
                    order_id,
                    quantity,
                },
            ) => Ok(reserve_stock(item, sku, order_id, quantity)),
            (InventoryState::Stocked(item), InventoryCommand::ReleaseStock { sku, order_id }) => {
                Ok(item
                    .reservations
                    .get(&order_id)
                    .map(|quantity| InventoryEvent::StockReleased {
                        sku,
                        order_id,
                        quantity: *quantity,
                    })
                    .into_iter()
                    .collect())
            }
        }
    }

    fn evolve(state: InventoryState, event: &InventoryEvent) -> InventoryState {
        match (state, event) {
            (InventoryState::Unknown, InventoryEvent::StockAdded { sku, quantity }) => {
                InventoryState::Stocked(Item {
                    sku: sku.clone(),
                    on_hand: u64::from(quantity.get()),
                    reservations: BTreeMap::new(),
                })
            }
            (InventoryState::Stocked(mut item), InventoryEvent::StockAdded { quantity, .. }) => {
                item.on_hand += u64::from(quantity.get());
                InventoryState::Stocked(item)
            }
            (
                InventoryState::Stocked(mut item),
                InventoryEvent::StockReserved {
                    order_id, quantity, ..
                },
            ) => {
                item.reservations.insert(*order_id, *quantity);
                InventoryState::Stocked(item)
            }
            (InventoryState::Stocked(mut item), InventoryEvent::StockReleased { order_id, .. }) => {
                item.reservations.remove(order_id);
                InventoryState::Stocked(item)
            }
            (state, _) => state,
        }
    }
}

/// Idempotent per order: an order that already holds stock of this item gets nothing more.
fn reserve_stock(
    item: &Item,
    sku: Sku,
    order_id: OrderId,
    quantity: Quantity,
) -> Vec<InventoryEvent> {
    if item.reservations.contains_key(&order_id) {
        return vec![];
    }
    let available = item.available();
    if u64::from(quantity.get()) <= available {
        vec![InventoryEvent::StockReserved {
            sku,
            order_id,
            quantity,
        }]
    } else {
        vec![InventoryEvent::StockReservationRejected {
            sku,
            order_id,
            requested: quantity,
            available,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::testing::Scenario;

    type Given = Scenario<InventoryItem>;

    fn added(n: i64) -> InventoryEvent {
        InventoryEvent::StockAdded {
            sku: sku("apple"),
            quantity: qty(n),
        }
    }

    fn reserved(order: u128, n: i64) -> InventoryEvent {
        InventoryEvent::StockReserved {
            sku: sku("apple"),
            order_id: order_id(order),
            quantity: qty(n),
        }
    }

    fn reserve(order: u128, n: i64) -> InventoryCommand {
        InventoryCommand::ReserveStock {
            sku: sku("apple"),
            order_id: order_id(order),
            quantity: qty(n),
        }
    }

    fn stocked(state: InventoryState) -> Item {
        match state {
            InventoryState::Stocked(item) => item,
            InventoryState::Unknown => panic!("item unknown"),
        }
    }

    #[test]
    fn adding_stock_creates_an_unknown_item() {
        let item = stocked(
            Given::given(vec![])
                .when(InventoryCommand::AddStock {
                    sku: sku("apple"),
                    quantity: qty(10),
                })
                .then(vec![added(10)]),
        );
        assert_eq!(
            (item.on_hand, item.reserved(), item.available()),
            (10, 0, 10)
        );
    }

    #[test]
    fn adding_stock_accumulates() {
        let item = stocked(
            Given::given(vec![added(10), reserved(1, 4)])
                .when(InventoryCommand::AddStock {
                    sku: sku("apple"),
                    quantity: qty(5),
                })
                .then(vec![added(5)]),
        );
        assert_eq!(
            (item.on_hand, item.reserved(), item.available()),
            (15, 4, 11)
        );
    }

    #[test]
    fn refuses_stock_beyond_the_maximum() {
        let full = vec![
            added(i64::from(Quantity::MAX));
            (MAX_ON_HAND / u64::from(Quantity::MAX)) as usize
        ];
        Given::given(full)
            .when(InventoryCommand::AddStock {
                sku: sku("apple"),
                quantity: qty(1),
            })
            .then_error(DomainError::StockOutOfRange);
    }

    #[test]
    fn reserves_available_stock() {
        let item = stocked(
            Given::given(vec![added(10), reserved(1, 4)])
                .when(reserve(2, 6))
                .then(vec![reserved(2, 6)]),
        );
        assert_eq!(item.available(), 0);
    }

    #[test]
    fn rejects_a_reservation_when_stock_is_short() {
        Given::given(vec![added(10), reserved(1, 4)])
            .when(reserve(2, 7))
            .then(vec![InventoryEvent::StockReservationRejected {
                sku: sku("apple"),
                order_id: order_id(2),
                requested: qty(7),
                available: 6,
            }]);
    }

    #[test]
    fn reserving_twice_for_the_same_order_emits_nothing() {
        Given::given(vec![added(10), reserved(1, 4)])
            .when(reserve(1, 4))
            .then(vec![]);
    }

    #[test]
    fn releases_exactly_what_the_order_holds() {
        let item = stocked(
            Given::given(vec![added(10), reserved(1, 4), reserved(2, 3)])
                .when(InventoryCommand::ReleaseStock {
                    sku: sku("apple"),
                    order_id: order_id(1),
                })
                .then(vec![InventoryEvent::StockReleased {
                    sku: sku("apple"),
                    order_id: order_id(1),
                    quantity: qty(4),
                }]),
        );
        assert_eq!(
            (item.on_hand, item.reserved(), item.available()),
            (10, 3, 7)
        );
    }

    #[test]
    fn releasing_stock_that_is_not_held_emits_nothing() {
        Given::given(vec![added(10)])
            .when(InventoryCommand::ReleaseStock {
                sku: sku("apple"),
                order_id: order_id(1),
            })
            .then(vec![]);
    }

    #[test]
    fn an_unknown_item_cannot_be_reserved_or_released() {
        let not_found = DomainError::NotFound {
            kind: AggregateKind::InventoryItem,
            id: "apple".into(),
        };
        Given::given(vec![])
            .when(reserve(1, 1))
            .then_error(not_found.clone());
        Given::given(vec![])
            .when(InventoryCommand::ReleaseStock {
                sku: sku("apple"),
                order_id: order_id(1),
            })
            .then_error(not_found);
    }
}
