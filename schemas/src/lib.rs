//! The wire format of events: Avro schemas kept as versioned `.avsc` files under `avro/`, Avro
//! single-object encoding (`C3 01` + 8-byte CRC-64-AVRO fingerprint + body), and the fallible
//! conversions between domain events and wire records.
//!
//! A reader finds the writer's schema by fingerprint and resolves it against the newest
//! version it knows, so old records stay readable forever. The build refuses a schema version
//! that cannot read every older one (see `build.rs`); `avro/README.md` says how to add one.
//!
//! # Layout
//!
//! - `avro/<aggregate>/<Event>.v<N>.avsc`: the schemas. Old versions stay side by side.
//! - [`registry`]: every embedded schema, by fingerprint and by event type.
//! - [`codec`]: [`encode`] / [`decode`] / [`peek`] of single-object records; typed errors,
//!   never a panic on bad bytes.
//! - [`wire`]: serde records per event and the domain <-> wire conversions ([`WireRecord`]).
//! - [`compat`]: the backward-compatibility rule the build script enforces.

pub mod codec;
pub mod compat;
pub mod error;
pub mod registry;
pub mod wire;

pub use codec::{decode, encode, peek};
pub use error::{DecodeError, EncodeError};
pub use wire::reply::{CommandReply, RejectionCode, ReplyOutcome};
pub use wire::WireRecord;
