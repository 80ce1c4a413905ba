//! Every schema the build found, parsed once, indexed by fingerprint and by event type.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;

include!(concat!(env!("OUT_DIR"), "/schema_files.rs"));

/// One version of one event's schema.
#[derive(Debug)]
pub struct SchemaEntry {
    /// The schema directory: an aggregate's events (`orders`, = `AggregateKind::as_str`), its
    /// commands (`order-commands`), or `command-replies`.
    pub family: &'static str,
    pub event_type: &'static str,
    pub version: u32,
    pub schema: Schema,
    /// CRC-64-AVRO (Rabin) of the parsing canonical form, as written in record headers.
    pub fingerprint: [u8; 8],
}

/// All known schemas.
#[derive(Debug)]
pub struct Registry {
    entries: Vec<SchemaEntry>,
    by_fingerprint: HashMap<[u8; 8], usize>,
    latest: HashMap<(&'static str, &'static str), usize>,
}

impl Registry {
    fn load() -> Self {
        let mut entries = Vec::with_capacity(SCHEMA_FILES.len());
        for (family, event_type, version, text) in SCHEMA_FILES {
            // build.rs parsed every file already; a failure here means the binary is corrupt.
            #[allow(clippy::expect_used)]
            let schema = Schema::parse_str(text).expect("schema validated by build.rs");
            let bytes = schema.fingerprint::<Rabin>().bytes;
            let mut fingerprint = [0u8; 8];
            fingerprint.copy_from_slice(&bytes[..8]);
            entries.push(SchemaEntry {
                family,
                event_type,
                version: *version,
                schema,
                fingerprint,
            });
        }
        let by_fingerprint = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.fingerprint, i))
            .collect();
        let mut latest: HashMap<(&'static str, &'static str), usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let key = (entry.family, entry.event_type);
            let newer = latest
                .get(&key)
                .is_none_or(|&j| entries[j].version < entry.version);
            if newer {
                latest.insert(key, i);
            }
        }
        Self {
            entries,
            by_fingerprint,
            latest,
        }
    }

    pub fn by_fingerprint(&self, fingerprint: &[u8; 8]) -> Option<&SchemaEntry> {
        self.by_fingerprint
            .get(fingerprint)
            .map(|&i| &self.entries[i])
    }

    /// The newest version of a family's record type: what writers use and readers resolve to.
    /// Names are unique within a family only (inventory and the saga both have `StockReserved`).
    pub fn latest(&self, family: &str, event_type: &str) -> Option<&SchemaEntry> {
        self.latest
            .get(&(family, event_type))
            .map(|&i| &self.entries[i])
    }

    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }
}

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::load)
}
