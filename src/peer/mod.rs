//! The peer record: its fields, the rules every stored copy obeys, and the lease maths.
//!
//! Field names and JSON shape are those of the Python `ipfs_datasets_py` peer discovery
//! module (`PeerInfo`), so both can share one registry file and one GitHub repository.
//! Time is always an argument (`now`, Unix seconds): nothing here reads the clock.
//!
//! - `rules.rs`: expiry, newest-wins, ranking, and what a discover or cleanup admits.
//! - `validate.rs`: the limits on each field, with messages that say what is allowed.

mod rules;
#[cfg(test)]
mod tests;
mod validate;

pub use rules::*;
pub use validate::*;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest accepted `peer_id`, in characters.
pub const MAX_PEER_ID_LEN: usize = 128;
/// Longest accepted multiaddr, in bytes of its canonical text form.
pub const MAX_MULTIADDR_BYTES: usize = 1024;
/// Most capabilities one peer may announce.
pub const MAX_CAPABILITIES: usize = 32;
/// Longest capability name: `capability-<name>` must fit GitHub's 50-character label limit.
pub const MAX_CAPABILITY_LEN: usize = 39;
/// Shortest and longest lease a peer may ask for.
pub const MIN_TTL_SECONDS: u64 = 1;
pub const MAX_TTL_SECONDS: u64 = 604_800;
/// The lease a peer gets when it does not ask for one (the `--default-ttl` default).
pub const DEFAULT_TTL_SECONDS: u64 = 3600;
/// Largest `metadata` object, serialized as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// How far ahead of this server's clock a stored `last_seen` may be. Leases run on the
/// server's clock: a record stamped further ahead would never expire and would outrank
/// every honest copy, so it is rejected (counted, never served) and cleanup removes it.
pub const MAX_CLOCK_AHEAD_SECONDS: f64 = 300.0;

/// A JSON object, as `metadata` is.
pub type JsonObject = Map<String, Value>;

/// The value of `source` for a copy that was read from no source yet.
const UNKNOWN_SOURCE: &str = "unknown";

/// Why a peer record, or an argument meant for one, was refused.
///
/// Each message names the field, says what was wrong and what is allowed, so that the
/// caller (often an LLM) can fix the call without reading the docs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidPeer {
    #[error(
        "peer_id must not be empty; use 1 to {MAX_PEER_ID_LEN} characters of A-Z a-z 0-9 . _ -"
    )]
    EmptyPeerId,
    #[error("peer_id is {0} characters long; the limit is {MAX_PEER_ID_LEN}")]
    PeerIdTooLong(usize),
    #[error("peer_id `{0}` contains {1:?}; only A-Z a-z 0-9 . _ - are allowed")]
    PeerIdCharacter(String, char),
    #[error(
        "multiaddr `{0}` does not parse ({1}); give an address such as /ip4/192.0.2.7/tcp/4001"
    )]
    MultiaddrSyntax(String, String),
    #[error("multiaddr must not be empty; give an address such as /ip4/192.0.2.7/tcp/4001")]
    EmptyMultiaddr,
    #[error("multiaddr is {0} bytes long; the limit is {MAX_MULTIADDR_BYTES}")]
    MultiaddrTooLong(usize),
    #[error(
        "multiaddr names peer `{found}` in its /p2p/ part but peer_id is `{peer_id}`; they must be equal (or leave /p2p/ out)"
    )]
    MultiaddrPeerMismatch { peer_id: String, found: String },
    #[error(
        "multiaddr has the DNS name `{name}`, which {reason}; a DNS name is dot-separated labels of 1 to 63 letters, digits and hyphens (not at either end of a label), at most {MAX_DNS_NAME_BYTES} bytes"
    )]
    BadDnsName { name: String, reason: &'static str },
    #[error("{0} capabilities given; at most {MAX_CAPABILITIES} are allowed")]
    TooManyCapabilities(usize),
    #[error(
        "capability `{0}` is not allowed; use 1 to {MAX_CAPABILITY_LEN} characters of a-z 0-9 . _ -, starting with a letter or digit (e.g. `storage`, `compute`)"
    )]
    BadCapability(String),
    #[error("capability `{0}` must be lower-case: use `{1}`")]
    UpperCaseCapability(String, String),
    #[error("ttl_seconds must be within {MIN_TTL_SECONDS}..={MAX_TTL_SECONDS} (got {0})")]
    TtlOutOfRange(i128),
    #[error("metadata is {0} bytes as JSON; the limit is {MAX_METADATA_BYTES}")]
    MetadataTooLarge(usize),
    #[error("{field} must be a finite number of Unix seconds (got {value})")]
    BadTimestamp { field: &'static str, value: f64 },
    #[error("source must not be empty")]
    EmptySource,
}

/// One peer's announcement, as stored in a registry.
///
/// Holds exactly the eight fields of the shared format, plus whatever unknown fields a
/// stored copy already had (kept so that writing it back loses nothing). This server
/// never adds a field of its own: the Python module rejects records with extra keys.
///
/// Deserialized by a hand-written visitor: `#[serde(flatten)]` would buffer every record
/// into serde's generic content tree first, which made loading a registry file about
/// twice as slow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerRecord {
    pub peer_id: String,
    pub multiaddr: String,
    pub capabilities: Vec<String>,
    pub first_seen: f64,
    pub last_seen: f64,
    pub source: String,
    pub ttl_seconds: u64,
    pub metadata: JsonObject,
    /// Fields written by someone else (a newer version, another tool); kept as they are.
    #[serde(flatten)]
    pub unknown_fields: JsonObject,
}

fn unknown_source() -> String {
    UNKNOWN_SOURCE.to_owned()
}

impl<'de> Deserialize<'de> for PeerRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

/// A key, borrowed from the input when it has no escapes (no allocation per field).
struct FieldName<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Names)
    }
}

impl<'de> serde::de::Visitor<'de> for RecordVisitor {
    type Value = PeerRecord;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a peer record object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PeerRecord, A::Error> {
        use serde::de::Error;
        let mut peer_id = None;
        let mut multiaddr = None;
        let mut capabilities = None;
        let mut first_seen = None;
        let mut last_seen = None;
        let mut source = None;
        let mut ttl_seconds = None;
        let mut metadata = None;
        let mut unknown_fields = JsonObject::new();
        while let Some(FieldName(key)) = map.next_key::<FieldName<'de>>()? {
            match key.as_ref() {
                "peer_id" => peer_id = Some(map.next_value()?),
                "multiaddr" => multiaddr = Some(map.next_value()?),
                "capabilities" => capabilities = Some(map.next_value()?),
                "first_seen" => first_seen = Some(map.next_value()?),
                "last_seen" => last_seen = Some(map.next_value()?),
                "source" => source = Some(map.next_value()?),
                "ttl_seconds" => ttl_seconds = Some(map.next_value()?),
                "metadata" => metadata = Some(map.next_value()?),
                other => {
                    unknown_fields.insert(other.to_owned(), map.next_value()?);
                }
            }
        }
        Ok(PeerRecord {
            peer_id: peer_id.ok_or_else(|| A::Error::missing_field("peer_id"))?,
            multiaddr: multiaddr.ok_or_else(|| A::Error::missing_field("multiaddr"))?,
            capabilities: capabilities.unwrap_or_default(),
            first_seen: first_seen.ok_or_else(|| A::Error::missing_field("first_seen"))?,
            last_seen: last_seen.ok_or_else(|| A::Error::missing_field("last_seen"))?,
            source: source.unwrap_or_else(unknown_source),
            ttl_seconds: ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS),
            metadata: metadata.unwrap_or_default(),
            unknown_fields,
        })
    }
}

/// When a record's lease ends, as every tool reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    /// Unix seconds at which the record expires (`last_seen + ttl_seconds`).
    pub expires_at: f64,
    /// Seconds from `now` until then; 0 once expired.
    pub expires_in_seconds: f64,
}

impl PeerRecord {
    /// Unix seconds at which this record stops being valid.
    pub fn expires_at(&self) -> f64 {
        self.last_seen + self.ttl_seconds as f64
    }

    /// A record is expired from the instant `last_seen + ttl_seconds` on.
    pub fn is_expired(&self, now: f64) -> bool {
        lease_ended(self.expires_at(), now)
    }

    /// Whether cleanup at `now` removes this record (see [`cleanup_removes`]).
    pub fn is_removed_by_cleanup(&self, now: f64) -> bool {
        cleanup_removes(self.last_seen, self.expires_at(), now) || self.is_ahead_of_clock(now)
    }

    /// Whether this record claims a time (`last_seen` or `first_seen`) too far ahead of
    /// `now` to be trusted ([`ahead_of_clock`]). A source that indexes only `last_seen`
    /// checks that one, with the same function.
    pub fn is_ahead_of_clock(&self, now: f64) -> bool {
        ahead_of_clock(self.last_seen, now) || ahead_of_clock(self.first_seen, now)
    }

    pub fn lease(&self, now: f64) -> Lease {
        let expires_at = self.expires_at();
        Lease {
            expires_at,
            expires_in_seconds: (expires_at - now).max(0.0),
        }
    }

    /// Whether this peer announces every capability in `required` (already normalized).
    pub fn has_capabilities(&self, required: &[String]) -> bool {
        required.iter().all(|c| self.capabilities.contains(c))
    }

    /// Checks every rule of the shared format; used on records read back from a source,
    /// which anyone could have written.
    pub fn check(&self) -> Result<(), InvalidPeer> {
        validate_peer_id(&self.peer_id)?;
        let canonical = canonical_multiaddr(&self.peer_id, &self.multiaddr)?;
        if canonical != self.multiaddr {
            return Err(InvalidPeer::MultiaddrSyntax(
                self.multiaddr.clone(),
                format!("not in canonical form `{canonical}`"),
            ));
        }
        let normalized = normalize_capabilities(&self.capabilities)?;
        if normalized != self.capabilities {
            return Err(InvalidPeer::BadCapability(self.capabilities.join(",")));
        }
        validate_ttl(i128::from(self.ttl_seconds))?;
        validate_metadata(&self.metadata)?;
        for (field, value) in [
            ("first_seen", self.first_seen),
            ("last_seen", self.last_seen),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(InvalidPeer::BadTimestamp { field, value });
            }
        }
        if self.source.is_empty() {
            return Err(InvalidPeer::EmptySource);
        }
        Ok(())
    }

    /// This announcement, stored over an `existing` copy of the same peer: `first_seen`
    /// is the existing copy's (it is set once, on the first register), and unknown fields
    /// the existing copy carried are kept.
    pub fn stored_over(mut self, existing: Option<&PeerRecord>) -> PeerRecord {
        if let Some(old) = existing {
            self.first_seen = self.first_seen.min(old.first_seen);
            for (key, value) in &old.unknown_fields {
                self.unknown_fields
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
        }
        self
    }
}

/// A validated registration, before any source stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    pub peer_id: String,
    pub multiaddr: String,
    pub capabilities: Vec<String>,
    pub ttl_seconds: u64,
    pub metadata: JsonObject,
}

impl Announcement {
    /// Validates raw arguments; `ttl_seconds` falls back to `default_ttl`.
    pub fn new(
        peer_id: String,
        multiaddr: &str,
        capabilities: &[String],
        ttl_seconds: Option<i64>,
        metadata: Option<JsonObject>,
        default_ttl: u64,
    ) -> Result<Self, InvalidPeer> {
        validate_peer_id(&peer_id)?;
        let multiaddr = canonical_multiaddr(&peer_id, multiaddr)?;
        let capabilities = normalize_capabilities(capabilities)?;
        let ttl_seconds = match ttl_seconds {
            Some(ttl) => validate_ttl(i128::from(ttl))?,
            None => default_ttl,
        };
        let metadata = metadata.unwrap_or_default();
        validate_metadata(&metadata)?;
        Ok(Self {
            peer_id,
            multiaddr,
            capabilities,
            ttl_seconds,
            metadata,
        })
    }

    /// The record as first stored at `now`; a source keeps an older `first_seen`
    /// through [`PeerRecord::stored_over`].
    pub fn into_record(self, now: f64) -> PeerRecord {
        PeerRecord {
            peer_id: self.peer_id,
            multiaddr: self.multiaddr,
            capabilities: self.capabilities,
            first_seen: now,
            last_seen: now,
            source: unknown_source(),
            ttl_seconds: self.ttl_seconds,
            metadata: self.metadata,
            unknown_fields: JsonObject::new(),
        }
    }
}

/// A heartbeat: refreshes `last_seen` and replaces the fields that are given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heartbeat {
    pub multiaddr: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub metadata: Option<JsonObject>,
    pub ttl_seconds: Option<u64>,
}

impl Heartbeat {
    /// Validates raw arguments for the peer `peer_id`.
    pub fn new(
        peer_id: &str,
        multiaddr: Option<&str>,
        capabilities: Option<&[String]>,
        metadata: Option<JsonObject>,
        ttl_seconds: Option<i64>,
    ) -> Result<Self, InvalidPeer> {
        validate_peer_id(peer_id)?;
        let multiaddr = multiaddr
            .map(|m| canonical_multiaddr(peer_id, m))
            .transpose()?;
        let capabilities = capabilities.map(normalize_capabilities).transpose()?;
        if let Some(metadata) = &metadata {
            validate_metadata(metadata)?;
        }
        let ttl_seconds = ttl_seconds
            .map(|t| validate_ttl(i128::from(t)))
            .transpose()?;
        Ok(Self {
            multiaddr,
            capabilities,
            metadata,
            ttl_seconds,
        })
    }

    /// The record after this heartbeat at `now`.
    pub fn apply(&self, existing: &PeerRecord, now: f64) -> PeerRecord {
        let mut record = existing.clone();
        record.last_seen = now.max(existing.last_seen);
        if let Some(multiaddr) = &self.multiaddr {
            record.multiaddr = multiaddr.clone();
        }
        if let Some(capabilities) = &self.capabilities {
            record.capabilities = capabilities.clone();
        }
        if let Some(metadata) = &self.metadata {
            record.metadata = metadata.clone();
        }
        if let Some(ttl) = self.ttl_seconds {
            record.ttl_seconds = ttl;
        }
        record
    }

    /// Whether applying this heartbeat changes anything but `last_seen`.
    pub fn changes_fields_of(&self, record: &PeerRecord) -> bool {
        self.multiaddr
            .as_ref()
            .is_some_and(|m| *m != record.multiaddr)
            || self
                .capabilities
                .as_ref()
                .is_some_and(|c| *c != record.capabilities)
            || self
                .metadata
                .as_ref()
                .is_some_and(|m| *m != record.metadata)
            || self.ttl_seconds.is_some_and(|t| t != record.ttl_seconds)
    }
}
