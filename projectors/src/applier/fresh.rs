//! Which records of a batch are new to the projection.

use std::collections::HashMap;

use rdkafka::message::Message;

use super::sql::Progress;
use super::Incoming;

/// The records of `batch` at or after their partition's stored offset, each offset once, in
/// batch order. A batch consumed before a seek (on assignment, to the stored offsets) may repeat
/// what was applied; and a seek can land while a batch is being consumed, which then holds
/// records from before the seek followed by the same records again from the stored offset.
/// Taking each offset only once, and only above the last one taken, keeps every event applied
/// once.
pub(super) fn records<'b, E>(
    batch: &'b [Incoming<E>],
    stored: &HashMap<i32, Progress>,
) -> Vec<&'b Incoming<E>> {
    let mut next: HashMap<i32, i64> = stored
        .iter()
        .map(|(partition, progress)| (*partition, progress.next_offset))
        .collect();
    batch
        .iter()
        .filter(|incoming| {
            let (partition, offset) = (incoming.message.partition(), incoming.message.offset());
            let floor = next.entry(partition).or_insert(0);
            let take = offset >= *floor;
            if take {
                *floor = offset + 1;
            }
            take
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;

    fn at(partition: i32, offset: i64) -> Incoming<domain::inventory::InventoryEvent> {
        Incoming::prepare(OwnedMessage::new(
            None,
            Some(b"sku".to_vec()),
            "events".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        ))
    }

    fn taken(
        batch: &[Incoming<domain::inventory::InventoryEvent>],
        stored: &[(i32, i64)],
    ) -> Vec<(i32, i64)> {
        let stored = stored
            .iter()
            .map(|(partition, next_offset)| {
                (
                    *partition,
                    Progress {
                        next_offset: *next_offset,
                        clock: 0,
                    },
                )
            })
            .collect();
        records(batch, &stored)
            .into_iter()
            .map(|i| (i.message.partition(), i.message.offset()))
            .collect()
    }

    #[test]
    fn records_below_the_stored_offset_are_skipped() {
        let batch = [at(0, 3), at(0, 4), at(0, 5), at(1, 0)];
        assert_eq!(taken(&batch, &[(0, 5)]), [(0, 5), (1, 0)]);
    }

    #[test]
    fn a_seek_in_the_middle_of_a_batch_does_not_take_a_record_twice() {
        // Consumed 5..=7 from the committed offset, then the seek to the stored offset (6)
        // delivers 6..=8 again.
        let batch = [at(0, 5), at(0, 6), at(0, 7), at(0, 6), at(0, 7), at(0, 8)];
        assert_eq!(taken(&batch, &[(0, 6)]), [(0, 6), (0, 7), (0, 8)]);
    }
}
