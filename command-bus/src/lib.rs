//! The command path's client side, shared by command-api (HTTP handlers) and the saga
//! orchestrator, so that neither service crate depends on the other.
//!
//! # Layout
//!
//! - [`bus`]: [`CommandBus`], the one path every write takes: a command onto its aggregate's
//!   commands topic, its reply back on the replies topic; and [`CommandBus::envelope`], the one
//!   way a requester addresses a command.
//! - [`topics`]: the kinds that take commands ([`COMMAND_KINDS`]) and the set-up of every topic
//!   the command path uses, checked for matching partition counts.
//! - [`snapshots`]: reading a writer's snapshot back (the writers restore their partition from
//!   it; the saga orchestrator takes over from the order and saga writers' snapshots).
//!
//! The other side (partition writers that decide commands) is command-api's `processor`.

pub mod bus;
pub mod snapshots;
pub mod topics;

pub use bus::{BusError, CommandBus, ReplyWaiters};
pub use topics::{ensure_all_topics, TopicSetupError, COMMAND_KINDS};
