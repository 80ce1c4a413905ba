//! Customer: a credit limit, and credit reserved per order until it is released.

use std::collections::BTreeMap;

use crate::aggregate::{Aggregate, AggregateKind};
use crate::values::{CustomerId, CustomerName, Money, OrderId};
use crate::DomainError;

#[derive(Debug, Clone, PartialEq)]
pub enum CustomerCommand {
    Register {
        customer_id: CustomerId,
        name: CustomerName,
        credit_limit: Money,
    },
    ReserveCredit {
        customer_id: CustomerId,
        order_id: OrderId,
        amount: Money,
    },
    ReleaseCredit {
        customer_id: CustomerId,
        order_id: OrderId,
    },
}

impl CustomerCommand {
    pub fn customer_id(&self) -> &CustomerId {
        match self {
            Self::Register { customer_id, .. }
            | Self::ReserveCredit { customer_id, .. }
            | Self::ReleaseCredit { customer_id, .. } => customer_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CustomerEvent {
    CustomerRegistered {
        customer_id: CustomerId,
        name: CustomerName,
        credit_limit: Money,
    },
    CreditReserved {
        customer_id: CustomerId,
        order_id: OrderId,
        amount: Money,
    },
    /// The reservation was refused; recorded so the refusal is part of the customer's history.
    CreditLimitExceeded {
        customer_id: CustomerId,
        order_id: OrderId,
        requested: Money,
        available: Money,
    },
    CreditReleased {
        customer_id: CustomerId,
        order_id: OrderId,
        amount: Money,
    },
}

/// A registered customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub customer_id: CustomerId,
    pub name: CustomerName,
    pub credit_limit: Money,
    /// Credit held per order, in the credit limit's currency.
    pub reservations: BTreeMap<OrderId, Money>,
}

impl Customer {
    pub fn credit_reserved(&self) -> Money {
        self.reservations
            .values()
            .fold(Money::zero(self.credit_limit.currency()), |sum, held| {
                // Every reservation was checked against the limit, so the sum fits.
                sum.checked_add(*held).unwrap_or(sum)
            })
    }

    pub fn credit_available(&self) -> Money {
        self.credit_limit
            .saturating_sub(self.credit_reserved())
            .unwrap_or(Money::zero(self.credit_limit.currency()))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum CustomerState {
    #[default]
    Unregistered,
    Registered(Customer),
}

/// The customer aggregate.
#[derive(Debug)]
pub enum CustomerAggregate {}

impl Aggregate for CustomerAggregate {
    const KIND: AggregateKind = AggregateKind::Customer;
    type State = CustomerState;
    type Command = CustomerCommand;
    type Event = CustomerEvent;

    fn decide(
        state: &CustomerState,
        command: CustomerCommand,
    ) -> Result<Vec<CustomerEvent>, DomainError> {
        match (state, command) {
            (
                CustomerState::Unregistered,
                CustomerCommand::Register {
                    customer_id,
                    name,
                    credit_limit,
                },
            ) => Ok(vec![CustomerEvent::CustomerRegistered {
                customer_id,
                name,
                credit_limit,
            }]),
            (CustomerState::Registered(_), CustomerCommand::Register { customer_id, .. }) => {
                Err(DomainError::AlreadyExists {
                    kind: AggregateKind::Customer,
                    id: customer_id.to_string(),
                })
            }
            (CustomerState::Unregistered, command) => Err(DomainError::NotFound {
                kind: AggregateKind::Customer,
                id: command.customer_id().to_string(),
            }),
            (
                CustomerState::Registered(customer),
                CustomerCommand::ReserveCredit {
                    customer_id,
                    order_id,
                    amount,
                },
            ) => Ok(reserve_credit(customer, customer_id, order_id, amount)),
            (
                CustomerState::Registered(customer),
                CustomerCommand::ReleaseCredit {
                    customer_id,
                    order_id,
                },
            ) => Ok(customer
                .reservations
                .get(&order_id)
                .map(|amount| CustomerEvent::CreditReleased {
                    customer_id,
                    order_id,
                    amount: *amount,
                })
                .into_iter()
                .collect()),
        }
    }

    fn evolve(state: CustomerState, event: &CustomerEvent) -> CustomerState {
        match (state, event) {
            (
                _,
                CustomerEvent::CustomerRegistered {
                    customer_id,
                    name,
                    credit_limit,
                },
            ) => CustomerState::Registered(Customer {
                customer_id: customer_id.clone(),
                name: name.clone(),
                credit_limit: *credit_limit,
                reservations: BTreeMap::new(),
            }),
            (
                CustomerState::Registered(mut customer),
                CustomerEvent::CreditReserved {
                    order_id, amount, ..
                },
            ) => {
                customer.reservations.insert(*order_id, *amount);
                CustomerState::Registered(customer)
            }
            (
                CustomerState::Registered(mut customer),
                CustomerEvent::CreditReleased { order_id, .. },
            ) => {
                customer.reservations.remove(order_id);
                CustomerState::Registered(customer)
            }
            (state, _) => state,
        }
    }
}

/// Reserving is idempotent per order: a second request for an order that already holds credit
/// emits nothing. Credit in another currency than the limit's is never available.
fn reserve_credit(
    customer: &Customer,
    customer_id: CustomerId,
    order_id: OrderId,
    amount: Money,
) -> Vec<CustomerEvent> {
    if customer.reservations.contains_key(&order_id) {
        return vec![];
    }
    let available = customer.credit_available();
    let fits = amount.currency() == available.currency()
        && amount.amount_minor() <= available.amount_minor();
    if fits {
        vec![CustomerEvent::CreditReserved {
            customer_id,
            order_id,
            amount,
        }]
    } else {
        vec![CustomerEvent::CreditLimitExceeded {
            customer_id,
            order_id,
            requested: amount,
            available,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::testing::Scenario;

    type Given = Scenario<CustomerAggregate>;

    fn registered(limit: i64) -> CustomerEvent {
        CustomerEvent::CustomerRegistered {
            customer_id: customer_id("c-1"),
            name: CustomerName::try_from("Ada").unwrap(),
            credit_limit: usd(limit),
        }
    }

    fn reserved(order: u128, amount: i64) -> CustomerEvent {
        CustomerEvent::CreditReserved {
            customer_id: customer_id("c-1"),
            order_id: order_id(order),
            amount: usd(amount),
        }
    }

    fn reserve(order: u128, amount: Money) -> CustomerCommand {
        CustomerCommand::ReserveCredit {
            customer_id: customer_id("c-1"),
            order_id: order_id(order),
            amount,
        }
    }

    #[test]
    fn registers_a_new_customer() {
        let state = Given::given(vec![])
            .when(CustomerCommand::Register {
                customer_id: customer_id("c-1"),
                name: CustomerName::try_from("Ada").unwrap(),
                credit_limit: usd(1000),
            })
            .then(vec![registered(1000)]);
        let CustomerState::Registered(customer) = state else {
            panic!("not registered")
        };
        assert_eq!(customer.credit_available(), usd(1000));
    }

    #[test]
    fn refuses_to_register_a_customer_twice() {
        Given::given(vec![registered(1000)])
            .when(CustomerCommand::Register {
                customer_id: customer_id("c-1"),
                name: CustomerName::try_from("Other").unwrap(),
                credit_limit: usd(5),
            })
            .then_error(DomainError::AlreadyExists {
                kind: AggregateKind::Customer,
                id: "c-1".into(),
            });
    }

    #[test]
    fn reserves_credit_within_the_limit() {
        let state = Given::given(vec![registered(1000), reserved(1, 400)])
            .when(reserve(2, usd(600)))
            .then(vec![reserved(2, 600)]);
        let CustomerState::Registered(customer) = state else {
            panic!("not registered")
        };
        assert_eq!(customer.credit_reserved(), usd(1000));
        assert_eq!(customer.credit_available(), usd(0));
    }

    #[test]
    fn refuses_credit_beyond_the_limit_and_records_the_refusal() {
        Given::given(vec![registered(1000), reserved(1, 400)])
            .when(reserve(2, usd(601)))
            .then(vec![CustomerEvent::CreditLimitExceeded {
                customer_id: customer_id("c-1"),
                order_id: order_id(2),
                requested: usd(601),
                available: usd(600),
            }]);
    }

    #[test]
    fn refuses_credit_in_another_currency_than_the_limit() {
        Given::given(vec![registered(1000)])
            .when(reserve(2, eur(1)))
            .then(vec![CustomerEvent::CreditLimitExceeded {
                customer_id: customer_id("c-1"),
                order_id: order_id(2),
                requested: eur(1),
                available: usd(1000),
            }]);
    }

    #[test]
    fn reserving_twice_for_the_same_order_emits_nothing() {
        Given::given(vec![registered(1000), reserved(1, 400)])
            .when(reserve(1, usd(400)))
            .then(vec![]);
    }

    #[test]
    fn releases_exactly_what_the_order_holds() {
        let state = Given::given(vec![registered(1000), reserved(1, 400), reserved(2, 100)])
            .when(CustomerCommand::ReleaseCredit {
                customer_id: customer_id("c-1"),
                order_id: order_id(1),
            })
            .then(vec![CustomerEvent::CreditReleased {
                customer_id: customer_id("c-1"),
                order_id: order_id(1),
                amount: usd(400),
            }]);
        let CustomerState::Registered(customer) = state else {
            panic!("not registered")
        };
        assert_eq!(customer.credit_available(), usd(900));
    }

    #[test]
    fn releasing_credit_that_is_not_held_emits_nothing() {
        Given::given(vec![
            registered(1000),
            reserved(1, 400),
            CustomerEvent::CreditReleased {
                customer_id: customer_id("c-1"),
                order_id: order_id(1),
                amount: usd(400),
            },
        ])
        .when(CustomerCommand::ReleaseCredit {
            customer_id: customer_id("c-1"),
            order_id: order_id(1),
        })
        .then(vec![]);
    }

    #[test]
    fn an_unknown_customer_cannot_reserve_or_release() {
        Given::given(vec![])
            .when(reserve(1, usd(1)))
            .then_error(DomainError::NotFound {
                kind: AggregateKind::Customer,
                id: "c-1".into(),
            });
        Given::given(vec![])
            .when(CustomerCommand::ReleaseCredit {
                customer_id: customer_id("c-1"),
                order_id: order_id(1),
            })
            .then_error(DomainError::NotFound {
                kind: AggregateKind::Customer,
                id: "c-1".into(),
            });
    }
}
