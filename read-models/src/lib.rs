//! The read models' PostgreSQL schema, shared by the process that writes them (projectors) and
//! the one that reads them (query-api), so that neither service crate depends on the other.
//!
//! # Layout
//!
//! - `migrations/`: the schema, applied by sqlx migrations, never ad hoc: customers, inventory,
//!   orders and order sagas, each projection's checkpoints (offsets per generation), parked
//!   aggregates and dead-letter bookkeeping.
//! - [`MIGRATOR`]: those migrations, embedded at compile time.
//! - [`CHECKPOINT_CHANNEL`]: how a moved checkpoint is announced to readers.

/// The read-model schema, applied by every process that owns it before it starts.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The Postgres channel on which every move of a projection's offsets is announced, with the
/// projection's name (`orders`, ...) as payload. The notification is sent by the transaction
/// that moves the offsets, so it is delivered on commit, never for a batch that rolled back.
/// query-api listens on it to wake consistency-token waits instead of polling.
pub const CHECKPOINT_CHANNEL: &str = "projection_checkpoints";
