//! Consistency tokens: the Kafka positions of the events a command wrote. The query API waits
//! until its read models have applied every position in a token (read-your-writes on request).
//!
//! A token makes a server do work (a wait of up to 30 s, a lookup per position), so it is
//! signed and bounded: only what command-api issued is waited on, and never more than
//! [`MAX_POSITIONS`] positions. Opaque to clients: base64url (no padding) of
//! `v2;<kind>:<partition>:<offset>,...` followed by the 32-byte HMAC-SHA256 of that text.
//! The HMAC key is derived from `AUTH_JWT_SECRET`, which both APIs already share; deriving it
//! (rather than using the secret as is) keeps a consistency token and a JWT from ever being
//! signed with the same key.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::AggregateKind;
use hmac::digest::{Key, KeyInit};
use hmac::Hmac;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Most positions a token may name. A command writes to one aggregate, so command-api's tokens
/// name one position; the bound leaves room for tokens merged by a client-side tool while
/// keeping the work a token can ask for small.
pub const MAX_POSITIONS: usize = 64;

/// Longest token accepted, in characters, checked before anything is decoded. A token of
/// [`MAX_POSITIONS`] positions with the longest names and numbers is about 3.7 KB.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The version prefix of the signed text.
const PREFIX: &str = "v2;";
/// Bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Separates the consistency-token key from every other use of the secret.
const KEY_CONTEXT: &[u8] = b"orderstream consistency token v2\0";

/// Positions (highest offset per events-topic partition) a reader must have applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    positions: BTreeMap<(AggregateKindKey, i32), i64>,
}

/// `AggregateKind` ordered by name, for a stable encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct AggregateKindKey(&'static str);

/// Why a token was refused. Each is the client's fault (400), never a reason to wait.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the consistency token is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("the consistency token is not one this service issued")]
    Malformed,
    #[error("the consistency token's signature does not verify")]
    BadSignature,
    #[error("the consistency token names more than {MAX_POSITIONS} positions")]
    TooManyPositions,
}

/// The key tokens are signed and verified with. Both APIs build it from `AUTH_JWT_SECRET`.
#[derive(Clone)]
pub struct TokenKey {
    /// Keyed once; cloned per token (cheaper than re-keying).
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey")
    }
}

impl TokenKey {
    /// The key derived from the shared secret: SHA-256 of a fixed context and the secret.
    pub fn from_secret(secret: &str) -> Self {
        let derived = <Sha256 as Digest>::new()
            .chain_update(KEY_CONTEXT)
            .chain_update(secret.as_bytes())
            .finalize();
        // HMAC pads a short key with zeros to the hash's block size; doing it here lets the
        // infallible constructor be used (HMAC takes any key length, so nothing is lost).
        let mut key = Key::<Hmac<Sha256>>::default();
        key[..derived.len()].copy_from_slice(&derived);
        Self {
            mac: <Hmac<Sha256> as KeyInit>::new(&key),
        }
    }

    /// The MAC state after `text` (`hmac::Mac` is called by path: its methods share names
    /// with `Digest`'s).
    fn mac_of(&self, text: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        hmac::Mac::update(&mut mac, text);
        mac
    }

    /// The 32-byte tag of `text`.
    fn tag(&self, text: &[u8]) -> [u8; TAG_LEN] {
        hmac::Mac::finalize(self.mac_of(text)).into_bytes().into()
    }

    /// Whether `tag` is the tag of `text`, compared in constant time.
    fn verifies(&self, text: &[u8], tag: &[u8]) -> bool {
        hmac::Mac::verify_slice(self.mac_of(text), tag).is_ok()
    }
}

impl ConsistencyToken {
    /// Adds a position, keeping the highest offset per partition.
    pub fn include(&mut self, kind: AggregateKind, partition: i32, offset: i64) {
        let entry = self
            .positions
            .entry((AggregateKindKey(kind.as_str()), partition))
            .or_insert(offset);
        *entry = (*entry).max(offset);
    }

    /// `(kind, partition, offset)` triples.
    pub fn positions(&self) -> impl Iterator<Item = (AggregateKind, i32, i64)> + '_ {
        self.positions
            .iter()
            .filter_map(|((kind, partition), offset)| {
                kind.0
                    .parse::<AggregateKind>()
                    .ok()
                    .map(|k| (k, *partition, *offset))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// How many positions the token names.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// The signed, opaque form. Signs whatever it holds: the reader enforces
    /// [`MAX_POSITIONS`], and command-api's tokens hold one position.
    pub fn encode(&self, key: &TokenKey) -> String {
        let body: Vec<String> = self
            .positions
            .iter()
            .map(|((kind, partition), offset)| format!("{}:{partition}:{offset}", kind.0))
            .collect();
        let mut bytes = format!("{PREFIX}{}", body.join(",")).into_bytes();
        let tag = key.tag(&bytes);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks, in order: the length, the encoding, the signature (in constant time), then the
    /// positions and their count. Nothing unsigned is parsed.
    pub fn decode(raw: &str, key: &TokenKey) -> Result<Self, TokenError> {
        let raw = raw.trim();
        if raw.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| TokenError::Malformed)?;
        let split = bytes
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(TokenError::Malformed)?;
        let (text, tag) = bytes.split_at(split);
        if !key.verifies(text, tag) {
            return Err(TokenError::BadSignature);
        }
        let text = std::str::from_utf8(text).map_err(|_| TokenError::Malformed)?;
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let mut token = Self::default();
        for (index, item) in body.split(',').filter(|s| !s.is_empty()).enumerate() {
            if index >= MAX_POSITIONS {
                return Err(TokenError::TooManyPositions);
            }
            let mut parts = item.split(':');
            let (Some(kind), Some(partition), Some(offset), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(TokenError::Malformed);
            };
            let kind: AggregateKind = kind.parse().map_err(|_| TokenError::Malformed)?;
            let partition: i32 = partition.parse().map_err(|_| TokenError::Malformed)?;
            let offset: i64 = offset.parse().map_err(|_| TokenError::Malformed)?;
            if partition < 0 || offset < 0 {
                return Err(TokenError::Malformed);
            }
            token.include(kind, partition, offset);
        }
        if token.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_secret("unit-test-secret")
    }

    /// A token with `n` positions (order partitions 0..n).
    fn token_of(n: i32) -> ConsistencyToken {
        let mut token = ConsistencyToken::default();
        for partition in 0..n {
            token.include(AggregateKind::Order, partition, 1);
        }
        token
    }

    #[test]
    fn tokens_round_trip_and_keep_the_highest_offset() {
        let mut token = ConsistencyToken::default();
        token.include(AggregateKind::Order, 3, 10);
        token.include(AggregateKind::Order, 3, 7);
        token.include(AggregateKind::Customer, 0, 1);
        let decoded = ConsistencyToken::decode(&token.encode(&key()), &key()).unwrap();
        assert_eq!(decoded, token);
        let positions: Vec<_> = decoded.positions().collect();
        assert_eq!(
            positions,
            vec![
                (AggregateKind::Customer, 0, 1),
                (AggregateKind::Order, 3, 10)
            ]
        );
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let forged = token_of(1).encode(&TokenKey::from_secret("someone-else"));
        assert_eq!(
            ConsistencyToken::decode(&forged, &key()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_token_whose_positions_or_signature_were_altered_is_refused() {
        let mut bytes = URL_SAFE_NO_PAD.decode(token_of(1).encode(&key())).unwrap();
        let original = bytes.clone();
        // A different offset ("…:1" becomes "…:9"), signature kept.
        let digit = bytes.len() - TAG_LEN - 1;
        bytes[digit] = b'9';
        assert_eq!(
            ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode(&bytes), &key()),
            Err(TokenError::BadSignature)
        );
        // One bit of the signature flipped.
        let mut bytes = original;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode(&bytes), &key()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_signed_token_with_more_than_the_bound_of_positions_is_refused() {
        let at_bound = token_of(64);
        assert_eq!(
            ConsistencyToken::decode(&at_bound.encode(&key()), &key()),
            Ok(at_bound)
        );
        assert_eq!(
            ConsistencyToken::decode(&token_of(65).encode(&key()), &key()),
            Err(TokenError::TooManyPositions)
        );
    }

    #[test]
    fn the_longest_token_within_the_position_bound_fits_the_length_bound() {
        // Every position under the longest name a signed token can carry, at the largest
        // numbers. Key claims' positions never go into a token: command-api signs tokens for
        // the positions of a request's command only.
        let longest = AggregateKind::ALL
            .into_iter()
            .filter(|kind| *kind != AggregateKind::IdempotencyKey)
            .max_by_key(|kind| kind.as_str().len())
            .unwrap();
        let mut token = ConsistencyToken::default();
        for partition in 0..MAX_POSITIONS {
            token.include(longest, i32::MAX - partition as i32, i64::MAX);
        }
        assert_eq!(token.len(), MAX_POSITIONS);
        assert!(token.encode(&key()).len() <= MAX_TOKEN_LEN);
    }

    #[test]
    fn a_token_over_the_length_bound_is_refused_before_decoding() {
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            ConsistencyToken::decode(&long, &key()),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn garbage_tokens_are_refused() {
        let unsigned_v1 = URL_SAFE_NO_PAD.encode("v1;orders:1:1");
        for raw in [
            "",
            "!!!",
            "djE7",
            "djE7b3JkZXJzOng6MQ",
            unsigned_v1.as_str(),
        ] {
            // Empty, not base64, shorter than a signature, unsigned text, an old unsigned token.
            assert_eq!(
                ConsistencyToken::decode(raw, &key()),
                Err(TokenError::Malformed),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn signed_text_that_does_not_parse_is_refused() {
        let key = key();
        for text in [
            "v2;",
            "v2;orders:x:1",
            "v1;orders:1:1",
            "v2;ships:1:1",
            "v2;orders:-1:1",
        ] {
            let mut bytes = text.as_bytes().to_vec();
            bytes.extend_from_slice(&key.tag(text.as_bytes()));
            assert_eq!(
                ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode(&bytes), &key),
                Err(TokenError::Malformed),
                "{text:?}"
            );
        }
    }
}
