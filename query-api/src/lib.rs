//! `query-api`: HTTP read views over the read models, with consistency-token waits.
//!
//! # Layout
//!
//! Not built yet: issue #4 (read side). Tokens are `platform::consistency::ConsistencyToken`s
//! issued by `command-api`.
