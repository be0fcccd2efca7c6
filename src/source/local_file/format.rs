//! [`RegistryFile`]: what the registry file holds, read as it streams in and written back.
//!
//! Format: `{"peers": {"<peer_id>": {record}}, "last_cleanup": <unix seconds>}`; unknown
//! top-level keys are kept as they were written.

use std::io::{BufRead, Read, Write};

use serde_json::value::RawValue;

use super::table::PeerTable;
use crate::peer::PeerRecord;

#[derive(Debug, Clone, Default)]
pub(super) struct RegistryFile {
    pub(super) peers: PeerTable,
    last_cleanup: LastCleanup,
    other: Vec<(String, Box<RawValue>)>,
}

/// `last_cleanup` as found: a number, or whatever someone else wrote there, which is
/// written back as it was until a cleanup of this server sets it.
#[derive(Debug, Clone)]
enum LastCleanup {
    Seconds(f64),
    AsWritten(Box<RawValue>),
}

impl Default for LastCleanup {
    fn default() -> Self {
        LastCleanup::Seconds(0.0)
    }
}

impl RegistryFile {
    /// Parses the file as it streams in: each record is read as raw text, checked, and
    /// kept as its text in the table, so the file's bytes are never all in memory at
    /// once. `size` (the file's length) sizes the table's arena. `None` for empty (or
    /// blank) input: what a crashed `touch`-then-write leaves, but also what a writer in
    /// place shows right after it truncated the file, so the caller decides.
    pub(super) fn parse(input: impl Read, size: usize) -> Result<Option<Self>, serde_json::Error> {
        let mut input = std::io::BufReader::with_capacity(256 * 1024, input);
        loop {
            let buffered = input.fill_buf().map_err(serde_json::Error::io)?;
            match buffered.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(_) => break,
                None if buffered.is_empty() => return Ok(None),
                None => {
                    let n = buffered.len();
                    input.consume(n);
                }
            }
        }
        let mut deserializer = serde_json::Deserializer::from_reader(input);
        let file = serde::de::Deserializer::deserialize_map(
            &mut deserializer,
            FileVisitor {
                arena_capacity: size,
            },
        )?;
        deserializer.end()?;
        Ok(Some(file))
    }

    /// Records that a cleanup ran at `now` (Unix seconds).
    pub(super) fn set_last_cleanup(&mut self, now: f64) {
        self.last_cleanup = LastCleanup::Seconds(now);
    }

    /// Writes the file as compact JSON, copying each record's text.
    pub(super) fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(b"{\"peers\":{")?;
        for (i, (peer_id, text)) in self.peers.entries().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            write_key(out, peer_id)?;
            out.write_all(b":")?;
            out.write_all(text)?;
        }
        out.write_all(b"},\"last_cleanup\":")?;
        match &self.last_cleanup {
            LastCleanup::Seconds(seconds) => serde_json::to_writer(&mut *out, seconds)?,
            LastCleanup::AsWritten(raw) => out.write_all(raw.get().as_bytes())?,
        }
        for (key, value) in &self.other {
            out.write_all(b",")?;
            serde_json::to_writer(&mut *out, key)?;
            out.write_all(b":")?;
            out.write_all(value.get().as_bytes())?;
        }
        out.write_all(b"}")
    }
}

/// Writes a peer id as a JSON string. A valid peer id (letters, digits, `.`, `_`, `-`)
/// needs no escaping and is copied; only an id that a rule-breaking entry carries goes
/// through serde_json's escaping. (Profiling a 100,000-peer write showed escaping and
/// UTF-8 checks of every id at 11 % of its CPU time.)
fn write_key(out: &mut impl Write, peer_id: &[u8]) -> std::io::Result<()> {
    // Exactly the bytes JSON requires escaped in a string.
    let plain = !peer_id.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    if plain {
        out.write_all(b"\"")?;
        out.write_all(peer_id)?;
        out.write_all(b"\"")
    } else {
        // Ids enter the table only from `&str`, so the lossy conversion changes nothing.
        serde_json::to_writer(&mut *out, &String::from_utf8_lossy(peer_id))?;
        Ok(())
    }
}

/// Reads the top-level object of the file.
struct FileVisitor {
    arena_capacity: usize,
}

impl<'de> serde::de::Visitor<'de> for FileVisitor {
    type Value = RegistryFile;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a registry file object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RegistryFile, A::Error> {
        let mut file = RegistryFile {
            peers: PeerTable::with_capacity(self.arena_capacity),
            ..RegistryFile::default()
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "peers" => map.next_value_seed(PeersSeed(&mut file.peers))?,
                "last_cleanup" => {
                    let raw: Box<RawValue> = map.next_value()?;
                    file.last_cleanup = match serde_json::from_str::<f64>(raw.get()) {
                        Ok(seconds) => LastCleanup::Seconds(seconds),
                        Err(_) => {
                            tracing::warn!(
                                value = raw.get(),
                                "registry file has a `last_cleanup` that is not a number; it is kept as written"
                            );
                            LastCleanup::AsWritten(raw)
                        }
                    };
                }
                _ => file.other.push((key, map.next_value()?)),
            }
        }
        file.peers.finish_load();
        Ok(file)
    }
}

/// Reads `peers` one entry at a time into the table.
struct PeersSeed<'a>(&'a mut PeerTable);

impl<'de> serde::de::DeserializeSeed<'de> for PeersSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PeersSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of peer records")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(peer_id) = map.next_key::<String>()? {
            let raw: Box<RawValue> = map.next_value()?;
            let record = match serde_json::from_str::<PeerRecord>(raw.get()) {
                Ok(record) if record.check().is_ok() && record.peer_id == peer_id => Some(record),
                _ => {
                    tracing::warn!(%peer_id, "registry file holds a record that breaks a rule; it is kept but not served");
                    None
                }
            };
            self.0
                .push_loaded(&peer_id, raw.get(), record.as_ref())
                .map_err(serde::de::Error::custom)?;
        }
        Ok(())
    }
}

/// Parses registry file bytes as a load does and writes them back as a save does;
/// `None` when the bytes are not a registry file. Public for the fuzz target.
#[doc(hidden)]
pub fn reencode_registry_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
    let file = RegistryFile::parse(bytes, bytes.len())
        .ok()?
        .unwrap_or_default();
    let mut out = Vec::new();
    file.write_to(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that need JSON escaping (only rule-breaking entries can have them) are
    /// escaped; plain ones are copied; both read back the same.
    #[test]
    fn keys_are_escaped_only_when_needed() {
        let input = br#"{"peers":{"a\"b\\c\u0001":{"x":1},"plain-id":{"y":2},"caf\u00e9":{}},"last_cleanup":5}"#;
        let once = reencode_registry_bytes(input).expect("loads");
        let text = String::from_utf8(once.clone()).expect("utf-8");
        assert!(text.contains(r#""a\"b\\c\u0001":{"x":1}"#), "{text}");
        assert!(text.contains(r#""plain-id":{"y":2}"#), "{text}");
        assert!(text.contains("\"café\":{}"), "{text}");
        let value: serde_json::Value = serde_json::from_slice(&once).expect("valid JSON");
        assert_eq!(value["peers"].as_object().expect("peers").len(), 3);
        assert_eq!(reencode_registry_bytes(&once), Some(once));
    }

    /// The file's size only sizes the arena up to a cap, so a file that claims to be
    /// huge (sparse, or larger than memory) is read, not allocated for. (A hint of 4 GiB
    /// is one the machine could reserve: only the cap keeps it out.)
    #[test]
    fn a_huge_size_hint_is_not_allocated() {
        let file = RegistryFile::parse(&br#"{"peers":{}}"#[..], 4 << 30)
            .expect("parses")
            .expect("not blank");
        assert_eq!(file.peers.len(), 0);
        assert!(
            file.peers.arena_capacity() <= super::super::table::MAX_ARENA_RESERVE,
            "reserved {} bytes",
            file.peers.arena_capacity()
        );
    }

    /// A `last_cleanup` that is not a number is written back as it was, not as 0; a
    /// cleanup replaces it.
    #[test]
    fn a_foreign_last_cleanup_is_kept_as_written() {
        let input = br#"{"peers":{},"last_cleanup":"yesterday"}"#;
        let once = reencode_registry_bytes(input).expect("loads");
        let value: serde_json::Value = serde_json::from_slice(&once).expect("json");
        assert_eq!(value["last_cleanup"], "yesterday");
        let mut file = RegistryFile::parse(&input[..], input.len())
            .expect("parses")
            .expect("not blank");
        file.set_last_cleanup(12.5);
        let mut out = Vec::new();
        file.write_to(&mut out).expect("write");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["last_cleanup"], 12.5);
    }
}
