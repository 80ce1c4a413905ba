//! The read models: one module per projection, and the one place that lists them all. `run`,
//! `status`, `rebuild` and `dlq` go through [`ALL`] and [`by_name`], so a projection added here
//! is run, shown, rebuilt and redriven everywhere, and none is forgotten by a list of its own.

pub mod customers;
pub mod inventory;
pub mod order_sagas;
pub mod orders;

use domain::AggregateKind;

use crate::projection::Projection;
use customers::Customers;
use inventory::Inventory;
use order_sagas::OrderSagas;
use orders::Orders;

/// Every projection's name, in the order `status` lists them.
pub const ALL: [&str; 4] = [
    Customers::NAME_STR,
    Inventory::NAME_STR,
    Orders::NAME_STR,
    OrderSagas::NAME_STR,
];

/// Work done with one projection's type, chosen by its name at run time.
pub trait ForProjection {
    type Output;
    fn call<P: Projection>(self) -> Self::Output;
}

/// Runs `work` with the projection named `name`; `None` when no projection has that name.
pub fn by_name<W: ForProjection>(name: &str, work: W) -> Option<W::Output> {
    match name {
        Customers::NAME_STR => Some(work.call::<Customers>()),
        Inventory::NAME_STR => Some(work.call::<Inventory>()),
        Orders::NAME_STR => Some(work.call::<Orders>()),
        OrderSagas::NAME_STR => Some(work.call::<OrderSagas>()),
        _ => None,
    }
}

/// The aggregate kind whose events the projection named `name` reads.
pub fn kind_of(name: &str) -> Option<AggregateKind> {
    struct Kind;
    impl ForProjection for Kind {
        type Output = AggregateKind;
        fn call<P: Projection>(self) -> AggregateKind {
            P::KIND
        }
    }
    by_name(name, Kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_projection_is_found_by_name_and_reads_its_own_topic() {
        let kinds: Vec<_> = ALL.iter().filter_map(|name| kind_of(name)).collect();
        assert_eq!(kinds.len(), ALL.len());
        for (i, kind) in kinds.iter().enumerate() {
            assert!(!kinds[..i].contains(kind), "{kind:?} twice");
        }
        assert_eq!(kind_of("nothing"), None);
    }
}
