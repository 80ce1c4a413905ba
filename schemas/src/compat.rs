//! Backward compatibility between versions of one event's schema. Shared by the build script
//! (which refuses to build an incompatible set) and the library (whose tests prove the check
//! catches a bad change).

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// One version of one event's schema, as found on disk.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    pub event_type: String,
    pub version: u32,
    pub schema: Schema,
}

/// Every version must read every older one (a consumer on the new schema reads old records)
/// with full compatibility. Returns one message per violation.
pub fn backward_violations(versions: &[SchemaVersion]) -> Vec<String> {
    let mut problems = Vec::new();
    for newer in versions {
        for older in versions
            .iter()
            .filter(|o| o.event_type == newer.event_type && o.version < newer.version)
        {
            match SchemaCompatibility::can_read(&older.schema, &newer.schema) {
                Ok(Compatibility::Full) => {}
                Ok(partial) => problems.push(format!(
                    "{} v{} reads v{} only partially ({partial:?})",
                    newer.event_type, newer.version, older.version
                )),
                Err(error) => problems.push(format!(
                    "{} v{} cannot read v{}: {error}",
                    newer.event_type, newer.version, older.version
                )),
            }
        }
    }
    problems
}
