//! Consistency tokens: the Kafka positions of the events a command wrote. The query API waits
//! until its read models have applied every position in a token (read-your-writes on request).
//! Opaque to clients: base64url of `v1;<kind>:<partition>:<offset>,...`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::AggregateKind;
use thiserror::Error;

/// Positions (highest offset per events-topic partition) a reader must have applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    positions: BTreeMap<(AggregateKindKey, i32), i64>,
}

/// `AggregateKind` ordered by name, for a stable encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct AggregateKindKey(&'static str);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed consistency token")]
pub struct MalformedToken;

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

    pub fn encode(&self) -> String {
        let body: Vec<String> = self
            .positions
            .iter()
            .map(|((kind, partition), offset)| format!("{}:{partition}:{offset}", kind.0))
            .collect();
        URL_SAFE_NO_PAD.encode(format!("v1;{}", body.join(",")))
    }

    pub fn decode(raw: &str) -> Result<Self, MalformedToken> {
        let bytes = URL_SAFE_NO_PAD
            .decode(raw.trim())
            .map_err(|_| MalformedToken)?;
        let text = String::from_utf8(bytes).map_err(|_| MalformedToken)?;
        let body = text.strip_prefix("v1;").ok_or(MalformedToken)?;
        let mut token = Self::default();
        for item in body.split(',').filter(|s| !s.is_empty()) {
            let mut parts = item.split(':');
            let (Some(kind), Some(partition), Some(offset), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(MalformedToken);
            };
            let kind: AggregateKind = kind.parse().map_err(|_| MalformedToken)?;
            let partition: i32 = partition.parse().map_err(|_| MalformedToken)?;
            let offset: i64 = offset.parse().map_err(|_| MalformedToken)?;
            if partition < 0 || offset < 0 {
                return Err(MalformedToken);
            }
            token.include(kind, partition, offset);
        }
        if token.is_empty() {
            return Err(MalformedToken);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_keep_the_highest_offset() {
        let mut token = ConsistencyToken::default();
        token.include(AggregateKind::Order, 3, 10);
        token.include(AggregateKind::Order, 3, 7);
        token.include(AggregateKind::Customer, 0, 1);
        let decoded = ConsistencyToken::decode(&token.encode()).unwrap();
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
    fn garbage_tokens_are_refused() {
        for raw in [
            "",
            "!!!",
            "djE7",
            "djE7b3JkZXJzOng6MQ",
            "eDE7b3JkZXJzOjE6MQ",
        ] {
            // Empty, not base64, no positions, a bad partition, a bad version prefix.
            assert_eq!(
                ConsistencyToken::decode(raw),
                Err(MalformedToken),
                "{raw:?}"
            );
        }
    }
}
