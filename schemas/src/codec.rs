//! Avro single-object encoding: `C3 01`, the writer schema's 8-byte fingerprint, the body.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::error::{DecodeError, EncodeError};
use crate::registry::{registry, SchemaEntry};
use crate::wire::WireRecord;

pub const MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// Resolved readers (writer version -> newest version of its type) and writers, built once per
/// schema version: resolving names per record showed up in the projectors' profile.
struct Codecs {
    readers: HashMap<[u8; 8], GenericDatumReader<'static>>,
    writers: HashMap<[u8; 8], GenericDatumWriter<'static>>,
}

fn codecs() -> &'static Codecs {
    static CODECS: OnceLock<Codecs> = OnceLock::new();
    CODECS.get_or_init(|| {
        let registry = registry();
        let mut readers = HashMap::new();
        let mut writers = HashMap::new();
        for entry in registry.entries() {
            let newest = registry
                .latest(entry.family, entry.event_type)
                .unwrap_or(entry);
            // build.rs checked every version resolves against the newest; a failure here
            // leaves that version to the uncached path, which reports it per record.
            if let Ok(reader) = GenericDatumReader::builder(&entry.schema)
                .reader_schema(&newest.schema)
                .build()
            {
                readers.insert(entry.fingerprint, reader);
            }
            if let Ok(writer) = GenericDatumWriter::builder(&entry.schema).build() {
                writers.insert(entry.fingerprint, writer);
            }
        }
        Codecs { readers, writers }
    })
}

/// Encodes with the newest schema version of the event's type.
pub fn encode<E: WireRecord>(event: &E) -> Result<Vec<u8>, EncodeError> {
    let event_type = event.event_type();
    let entry = registry()
        .latest(E::FAMILY, event_type)
        .ok_or(EncodeError::NoSchema(event_type))?;
    let avro = |source: apache_avro::Error| EncodeError::Avro {
        event_type,
        source: Box::new(source),
    };
    let value = event.to_avro().map_err(avro)?;
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&entry.fingerprint);
    match codecs().writers.get(&entry.fingerprint) {
        Some(writer) => writer.write_value(&mut out, value).map(|_| ()),
        None => GenericDatumWriter::builder(&entry.schema)
            .build()
            .and_then(|writer| writer.write_value(&mut out, value))
            .map(|_| ()),
    }
    .map_err(avro)?;
    Ok(out)
}

/// Identifies a record's writer schema without decoding the body.
pub fn peek(bytes: &[u8]) -> Result<&'static SchemaEntry, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    if bytes[..2] != MARKER {
        return Err(DecodeError::NotSingleObject);
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[2..HEADER_LEN]);
    registry()
        .by_fingerprint(&fingerprint)
        .ok_or_else(|| DecodeError::UnknownFingerprint {
            fingerprint: fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
        })
}

/// Decodes a record of family `E`, resolving the writer's schema to the newest version.
pub fn decode<E: WireRecord>(bytes: &[u8]) -> Result<E, DecodeError> {
    let writer = peek(bytes)?;
    if writer.family != E::FAMILY {
        return Err(DecodeError::WrongAggregate {
            expected: E::FAMILY,
            found: writer.family,
        });
    }
    let reader = registry()
        .latest(writer.family, writer.event_type)
        .unwrap_or(writer);
    let body_error = |source: apache_avro::Error| DecodeError::Body {
        event_type: writer.event_type,
        version: writer.version,
        source: Box::new(source),
    };
    let mut body = &bytes[HEADER_LEN..];
    let value = match codecs().readers.get(&writer.fingerprint) {
        Some(cached) => cached.read_value(&mut body),
        None => GenericDatumReader::builder(&writer.schema)
            .reader_schema(&reader.schema)
            .build()
            .and_then(|r| r.read_value(&mut body)),
    }
    .map_err(body_error)?;
    if !body.is_empty() {
        return Err(DecodeError::TrailingBytes { count: body.len() });
    }
    E::from_avro(writer.event_type, &value)
}
