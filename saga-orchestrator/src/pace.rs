//! One pace for the two topics a worker reads. A worker's consumer fetches `orders.events` p and
//! `order-sagas.events` p side by side, about as many records of each per fetch; an order has
//! two events there and seven here, so a replay read the orders about three times as fast as
//! their sagas. Every order read before its saga finished keeps its chain head in memory (its
//! saga is not settled yet, decision 0011): at 5,000,000 events, hundreds of thousands of them.
//! So the topic that runs ahead in log time (record timestamps) by more than [`SLACK_MS`] is
//! paused until the other catches up, or reaches its end (nothing to wait for).

use crate::offset_book::Source;

/// How far in log time one topic may run ahead of the other.
pub(crate) const SLACK_MS: i64 = 60_000;

/// The topic that runs ahead of the other by more than the slack in log time, given the
/// timestamp of the last record read from each (`None`: nothing read yet). It is held back
/// unless the other one is read to its end.
pub(crate) fn ahead(last_read: [Option<i64>; 2]) -> Option<Source> {
    let [Some(orders), Some(sagas)] = last_read else {
        return None;
    };
    if orders > sagas.saturating_add(SLACK_MS) {
        Some(Source::Orders)
    } else if sagas > orders.saturating_add(SLACK_MS) {
        Some(Source::Sagas)
    } else {
        None
    }
}

/// The other topic.
pub(crate) fn other(source: Source) -> Source {
    match source {
        Source::Orders => Source::Sagas,
        Source::Sagas => Source::Orders,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_ahead_by_more_than_the_slack_is_the_one_to_hold_back() {
        let minute = SLACK_MS;
        assert_eq!(
            ahead([Some(3 * minute), Some(minute)]),
            Some(Source::Orders)
        );
        assert_eq!(ahead([Some(0), Some(2 * minute + 1)]), Some(Source::Sagas));
        assert_eq!(other(Source::Orders), Source::Sagas);
    }

    #[test]
    fn nothing_is_ahead_within_the_slack_or_before_both_are_read() {
        let minute = SLACK_MS;
        assert_eq!(ahead([Some(2 * minute), Some(minute)]), None);
        assert_eq!(ahead([Some(9 * minute), None]), None);
        assert_eq!(ahead([None, None]), None);
    }
}
