//! A log record on disk: `len: u32 LE | crc32: u32 LE | payload`, the payload one JSON object.
//!
//! The writer bounds values (depth and size, see `limits`), but the reader does not rely on
//! it: it reads any depth, so a log written before those bounds existed still replays.

use crate::json::Json;
use serde::{Deserialize, Serialize};

/// The framing before each payload.
pub const HEADER: usize = 8;

/// A change as written to the log.
#[derive(Serialize)]
#[serde(tag = "op")]
pub enum RecordRef<'a> {
    #[serde(rename = "set")]
    Set {
        s: &'a str,
        g: &'a str,
        i: &'a str,
        d: &'a Json,
    },
    #[serde(rename = "del")]
    Del { s: &'a str, g: &'a str, i: &'a str },
    /// Written by the store to check that a failed disk takes writes again; changes nothing.
    #[serde(rename = "nop")]
    Nop { pad: &'a str },
}

/// A change as read back from the log.
#[derive(Debug, PartialEq)]
pub enum Record {
    Set {
        s: String,
        g: String,
        i: String,
        d: Json,
    },
    Del {
        s: String,
        g: String,
        i: String,
    },
    Nop {},
}

/// A record's fields as read, before `op` says which it needs. (An internally tagged enum would
/// buffer the value, and a value kept as text cannot be read from a buffer.)
#[derive(Deserialize)]
struct Fields {
    op: String,
    s: Option<String>,
    g: Option<String>,
    i: Option<String>,
    #[serde(default)]
    d: Given,
}

/// A field that is there, `null` included (an `Option` would read `null` as absent).
#[derive(Default)]
struct Given(Option<Json>);

impl<'de> Deserialize<'de> for Given {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Given, D::Error> {
        Json::deserialize(d).map(|json| Given(Some(json)))
    }
}

impl Fields {
    fn record(self) -> serde_json::Result<Record> {
        use serde::de::Error;
        let need = |field: Option<String>, name| field.ok_or_else(|| Error::missing_field(name));
        Ok(match self.op.as_str() {
            "set" => Record::Set {
                s: need(self.s, "s")?,
                g: need(self.g, "g")?,
                i: need(self.i, "i")?,
                d: self.d.0.ok_or_else(|| Error::missing_field("d"))?,
            },
            "del" => Record::Del {
                s: need(self.s, "s")?,
                g: need(self.g, "g")?,
                i: need(self.i, "i")?,
            },
            "nop" => Record::Nop {},
            other => return Err(Error::unknown_variant(other, &["set", "del", "nop"])),
        })
    }
}

/// Appends one framed record to `buf`.
pub fn encode(record: &RecordRef<'_>, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    serde_json::to_writer(&mut *buf, record).expect("a JSON value always serializes");
    let payload = &buf[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at an offset are not a whole, intact record.
#[derive(Debug, Clone, PartialEq)]
pub enum Bad {
    /// Fewer bytes left than the record claims (or than a header).
    Incomplete,
    /// The payload does not match its checksum (or its length is zero: never written).
    Checksum,
}

/// The intact payload framed at `off`, and the offset after it.
pub fn frame_at(data: &[u8], off: usize) -> Result<(&[u8], usize), Bad> {
    let Some(header) = data.get(off..off + HEADER) else {
        return Err(Bad::Incomplete);
    };
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
    let Some(payload) = data.get(off + HEADER..off + HEADER + len) else {
        return Err(Bad::Incomplete);
    };
    // A zero length is what a file extended but never written holds: crc32 of nothing is 0.
    if len == 0 || crc32fast::hash(payload) != crc {
        return Err(Bad::Checksum);
    }
    Ok((payload, off + HEADER + len))
}

/// Decodes an intact payload, at any nesting depth.
pub fn decode(payload: &[u8]) -> serde_json::Result<Record> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    de.disable_recursion_limit();
    let fields = Fields::deserialize(&mut de)?;
    de.end()?;
    fields.record()
}
