//! What every partition worker of this process shares.

use std::sync::Arc;

use platform::dead_letters::DeadLetters;
use rdkafka::consumer::StreamConsumer;

use crate::config::Settings;
use crate::saga_group::GroupContext;
use crate::sender::Sender;

pub(crate) struct SagaContext {
    pub(crate) settings: Settings,
    pub(crate) orders_topic: String,
    pub(crate) sagas_topic: String,
    /// The order and saga writers' snapshots topics (indexed like `offset_book::Source`): a
    /// worker takes over from them.
    pub(crate) snapshot_topics: [String; 2],
    /// The group member: partition ownership and (generation-fenced) offset commits.
    pub(crate) group: Arc<StreamConsumer<GroupContext>>,
    pub(crate) sender: Sender,
    pub(crate) dead_letters: DeadLetters,
}
