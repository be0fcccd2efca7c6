//! The peer record: its fields, the rules every stored copy obeys, and the lease maths.
//!
//! Field names and JSON shape are those of the Python `ipfs_datasets_py` peer discovery
//! module (`PeerInfo`), so both can share one registry file and one GitHub repository.
//! Time is always an argument (`now`, Unix seconds): nothing here reads the clock.

use std::str::FromStr;

use multiaddr::{Multiaddr, Protocol};
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
        cleanup_removes(self.last_seen, self.expires_at(), now)
    }

    /// Whether this record claims a `last_seen` too far ahead of `now` to be trusted.
    pub fn is_ahead_of_clock(&self, now: f64) -> bool {
        ahead_of_clock(self.last_seen, now)
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

/// What a discover asks for; each source applies it while reading.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerFilter {
    /// Every one of these (normalized) capabilities must be announced.
    pub capabilities: Vec<String>,
    /// Keep records whose lease has ended.
    pub include_expired: bool,
    pub now: f64,
    /// Only the best `limit` records by [`rank_order`] are wanted (the rest are counted).
    /// Set when one source answers alone, so it can skip copying the others.
    pub limit: Option<usize>,
    /// Cleanup's scan: only the records cleanup at `now` removes ([`cleanup_removes`]:
    /// leases over, and records stamped ahead of the clock), nothing else.
    pub stale_only: bool,
}

impl PeerFilter {
    /// Validates the capability filter; the names follow the same rules as announcements.
    pub fn new(
        capabilities: &[String],
        include_expired: bool,
        now: f64,
    ) -> Result<Self, InvalidPeer> {
        Ok(Self {
            capabilities: normalize_capabilities(capabilities)?,
            include_expired,
            now,
            limit: None,
            stale_only: false,
        })
    }

    /// What cleanup at `now` scans for: every record it removes, whatever its capabilities.
    pub fn stale(now: f64) -> Self {
        Self {
            capabilities: Vec::new(),
            include_expired: true,
            now,
            limit: None,
            stale_only: true,
        }
    }

    pub fn matches(&self, record: &PeerRecord) -> bool {
        self.admits(record.last_seen, record.expires_at(), || {
            record.has_capabilities(&self.capabilities)
        })
    }

    /// The same rule for a source that keeps an index rather than records: a record seen
    /// at `last_seen` (not ahead of the clock, see [`ahead_of_clock`]) whose lease ends at
    /// `expires_at` and that has (`has_capabilities`) every capability asked.
    pub fn admits(
        &self,
        last_seen: f64,
        expires_at: f64,
        has_capabilities: impl FnOnce() -> bool,
    ) -> bool {
        if self.stale_only {
            return cleanup_removes(last_seen, expires_at, self.now);
        }
        !ahead_of_clock(last_seen, self.now)
            && (self.include_expired || !lease_ended(expires_at, self.now))
            && has_capabilities()
    }
}

/// Whether a lease that ends at `expires_at` is over at `now`.
pub fn lease_ended(expires_at: f64, now: f64) -> bool {
    now >= expires_at
}

/// Whether a record seen at `last_seen` claims a time more than
/// [`MAX_CLOCK_AHEAD_SECONDS`] ahead of `now`: such a record is rejected by every source
/// (counted in `rejected`, never served) and removed by cleanup.
pub fn ahead_of_clock(last_seen: f64, now: f64) -> bool {
    last_seen > now + MAX_CLOCK_AHEAD_SECONDS
}

/// Whether cleanup at `now` removes a record seen at `last_seen` whose lease ends at
/// `expires_at`: its lease is over, or its clock is not to be trusted.
pub fn cleanup_removes(last_seen: f64, expires_at: f64, now: f64) -> bool {
    lease_ended(expires_at, now) || ahead_of_clock(last_seen, now)
}

/// Newest wins: of two copies of one peer, the one with the later `last_seen` (`held` on
/// a tie). Merging sources, and a source that finds several copies, both choose by it.
pub fn newest<'a>(held: &'a PeerRecord, other: &'a PeerRecord) -> &'a PeerRecord {
    if other.last_seen > held.last_seen {
        other
    } else {
        held
    }
}

/// How discover ranks peers: newest `last_seen` first, ties by `peer_id`.
pub fn rank_order(a: &PeerRecord, b: &PeerRecord) -> std::cmp::Ordering {
    rank_key_order(
        (a.last_seen, a.peer_id.as_str()),
        (b.last_seen, b.peer_id.as_str()),
    )
}

/// [`rank_order`] on `(last_seen, peer_id)` alone, for sources that rank an index (the id
/// as text or as its UTF-8 bytes, which order alike).
pub fn rank_key_order<K: Ord + ?Sized>(a: (f64, &K), b: (f64, &K)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

/// The best `limit` of `records` by [`rank_order`], ranked, copied; the rest are only
/// looked at, never copied.
pub fn top_ranked<'a>(
    records: impl Iterator<Item = &'a PeerRecord>,
    limit: Option<usize>,
) -> Vec<PeerRecord> {
    let mut refs: Vec<&PeerRecord> = records.collect();
    if let Some(limit) = limit
        && limit < refs.len()
    {
        if limit == 0 {
            return Vec::new();
        }
        refs.select_nth_unstable_by(limit - 1, |a, b| rank_order(a, b));
        refs.truncate(limit);
    }
    refs.sort_unstable_by(|a, b| rank_order(a, b));
    refs.into_iter().cloned().collect()
}

pub fn validate_peer_id(peer_id: &str) -> Result<(), InvalidPeer> {
    if peer_id.is_empty() {
        return Err(InvalidPeer::EmptyPeerId);
    }
    let len = peer_id.chars().count();
    if len > MAX_PEER_ID_LEN {
        return Err(InvalidPeer::PeerIdTooLong(len));
    }
    if let Some(bad) = peer_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(InvalidPeer::PeerIdCharacter(peer_id.to_owned(), bad));
    }
    Ok(())
}

/// Parses `text` as a multiaddr and returns its canonical form (`/ipfs/` becomes `/p2p/`).
///
/// The last `/p2p/` part names the peer reached at this address and must equal `peer_id`;
/// earlier ones, before a `/p2p-circuit`, name relays and may differ.
pub fn canonical_multiaddr(peer_id: &str, text: &str) -> Result<String, InvalidPeer> {
    if text.len() > MAX_MULTIADDR_BYTES {
        return Err(InvalidPeer::MultiaddrTooLong(text.len()));
    }
    if text.trim().is_empty() {
        return Err(InvalidPeer::EmptyMultiaddr);
    }
    let addr = Multiaddr::from_str(text)
        .map_err(|e| InvalidPeer::MultiaddrSyntax(text.to_owned(), e.to_string()))?;
    for part in addr.iter() {
        if let Protocol::Dns(name)
        | Protocol::Dns4(name)
        | Protocol::Dns6(name)
        | Protocol::Dnsaddr(name) = part
        {
            check_dns_name(&name)?;
        }
    }
    let target = addr
        .iter()
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id.to_base58()),
            _ => None,
        })
        .last();
    if let Some(found) = target
        && found != peer_id
    {
        return Err(InvalidPeer::MultiaddrPeerMismatch {
            peer_id: peer_id.to_owned(),
            found,
        });
    }
    let canonical = addr.to_string();
    if canonical.len() > MAX_MULTIADDR_BYTES {
        return Err(InvalidPeer::MultiaddrTooLong(canonical.len()));
    }
    Ok(canonical)
}

/// Longest DNS name accepted in a multiaddr (RFC 1035's limit on a name's text form).
pub const MAX_DNS_NAME_BYTES: usize = 253;

/// Checks a host name of a `/dns/`, `/dns4/`, `/dns6/` or `/dnsaddr/` part against
/// RFC 1123: labels of 1 to 63 ASCII letters, digits and hyphens, no hyphen at either
/// end, at most 253 bytes (one trailing dot, the root, is allowed). Anything else
/// (spaces, control characters, other scripts) is refused: the name reaches people and
/// models, and resolvers would refuse it anyway (internationalized names are written
/// in their `xn--` form).
fn check_dns_name(name: &str) -> Result<(), InvalidPeer> {
    let refuse = |reason| {
        Err(InvalidPeer::BadDnsName {
            name: name.to_owned(),
            reason,
        })
    };
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return refuse("is empty");
    }
    if bare.len() > MAX_DNS_NAME_BYTES {
        return refuse("is too long");
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return refuse("has an empty label");
        }
        if label.len() > 63 {
            return refuse("has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return refuse("has a character other than a letter, digit, hyphen or dot");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse("has a label that starts or ends with a hyphen");
        }
    }
    Ok(())
}

/// Checks and de-duplicates capability names, keeping their order.
///
/// Upper-case names are refused rather than folded (the contract's issue asks for an
/// error), with the lower-case spelling in the message so the caller can fix the call.
pub fn normalize_capabilities(capabilities: &[String]) -> Result<Vec<String>, InvalidPeer> {
    let mut normalized: Vec<String> = Vec::with_capacity(capabilities.len().min(MAX_CAPABILITIES));
    for raw in capabilities {
        let name = raw.to_ascii_lowercase();
        if !is_capability_name(&name) {
            return Err(InvalidPeer::BadCapability(raw.clone()));
        }
        if name != *raw {
            return Err(InvalidPeer::UpperCaseCapability(raw.clone(), name));
        }
        if !normalized.contains(&name) {
            normalized.push(name);
        }
        if normalized.len() > MAX_CAPABILITIES {
            return Err(InvalidPeer::TooManyCapabilities(capabilities.len()));
        }
    }
    Ok(normalized)
}

/// `[a-z0-9][a-z0-9._-]{0,38}`
fn is_capability_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_CAPABILITY_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

pub fn validate_ttl(ttl: i128) -> Result<u64, InvalidPeer> {
    if (i128::from(MIN_TTL_SECONDS)..=i128::from(MAX_TTL_SECONDS)).contains(&ttl) {
        Ok(ttl as u64)
    } else {
        Err(InvalidPeer::TtlOutOfRange(ttl))
    }
}

pub fn validate_metadata(metadata: &JsonObject) -> Result<(), InvalidPeer> {
    let size = serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len());
    if size > MAX_METADATA_BYTES {
        return Err(InvalidPeer::MetadataTooLarge(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIBP2P_ID: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    fn announce(peer_id: &str, multiaddr: &str) -> Result<Announcement, InvalidPeer> {
        Announcement::new(
            peer_id.into(),
            multiaddr,
            &[],
            None,
            None,
            DEFAULT_TTL_SECONDS,
        )
    }

    /// Opaque ids and libp2p ids are both accepted; bad characters and lengths are not.
    #[test]
    fn peer_id_rules() {
        assert!(validate_peer_id("agent-7").is_ok());
        assert!(validate_peer_id(LIBP2P_ID).is_ok());
        assert!(validate_peer_id(&"a".repeat(128)).is_ok());
        assert_eq!(validate_peer_id(""), Err(InvalidPeer::EmptyPeerId));
        assert_eq!(
            validate_peer_id(&"a".repeat(129)),
            Err(InvalidPeer::PeerIdTooLong(129))
        );
        assert!(matches!(
            validate_peer_id("a b"),
            Err(InvalidPeer::PeerIdCharacter(_, ' '))
        ));
        assert!(matches!(
            validate_peer_id("é"),
            Err(InvalidPeer::PeerIdCharacter(_, 'é'))
        ));
    }

    /// `/ipfs/` is stored as `/p2p/`, and the `/p2p/` part must name the registering peer.
    #[test]
    fn multiaddr_is_canonicalised_and_checked_against_peer_id() {
        let addr = format!("/ip4/192.0.2.7/tcp/4001/ipfs/{LIBP2P_ID}");
        let a = announce(LIBP2P_ID, &addr).expect("valid");
        assert_eq!(
            a.multiaddr,
            format!("/ip4/192.0.2.7/tcp/4001/p2p/{LIBP2P_ID}")
        );

        let err = announce("agent-7", &addr).expect_err("mismatch");
        assert!(matches!(err, InvalidPeer::MultiaddrPeerMismatch { .. }));
        assert!(err.to_string().contains("must be equal"), "{err}");

        let err = announce("agent-7", "not-a-multiaddr").expect_err("garbage");
        assert!(
            err.to_string()
                .starts_with("multiaddr `not-a-multiaddr` does not parse"),
            "{err}"
        );
        assert_eq!(
            announce("agent-7", "").expect_err("empty"),
            InvalidPeer::EmptyMultiaddr
        );
    }

    /// A relayed address names the relay first; only the last `/p2p/` is the peer itself.
    #[test]
    fn relay_address_checks_the_target_peer_only() {
        let relay = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN";
        let addr = format!("/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{LIBP2P_ID}");
        assert!(announce(LIBP2P_ID, &addr).is_ok());
        assert!(announce(relay, &addr).is_err());
    }

    #[test]
    fn multiaddr_length_is_limited() {
        let long = format!("/dns4/{}.example/tcp/1", "a".repeat(1100));
        assert!(matches!(
            announce("p", &long),
            Err(InvalidPeer::MultiaddrTooLong(_))
        ));
    }

    /// Capabilities are de-duplicated in order; upper case, bad names and counts fail.
    #[test]
    fn capability_rules() {
        let caps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize_capabilities(&caps(&["storage", "compute", "storage"])),
            Ok(caps(&["storage", "compute"]))
        );
        assert_eq!(
            normalize_capabilities(&caps(&["Storage"])),
            Err(InvalidPeer::UpperCaseCapability(
                "Storage".into(),
                "storage".into()
            ))
        );
        assert!(normalize_capabilities(&caps(&["a".repeat(39).as_str()])).is_ok());
        assert!(normalize_capabilities(&caps(&["a".repeat(40).as_str()])).is_err());
        assert!(normalize_capabilities(&caps(&["-x"])).is_err());
        assert!(normalize_capabilities(&caps(&["has space"])).is_err());
        assert!(normalize_capabilities(&caps(&[""])).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
        assert_eq!(
            normalize_capabilities(&many),
            Err(InvalidPeer::TooManyCapabilities(33))
        );
        assert!(normalize_capabilities(&many[..32]).is_ok());
    }

    #[test]
    fn ttl_and_metadata_limits() {
        assert_eq!(
            validate_ttl(0).expect_err("0").to_string(),
            "ttl_seconds must be within 1..=604800 (got 0)"
        );
        assert!(validate_ttl(1_000_000_000).is_err());
        assert_eq!(validate_ttl(604_800), Ok(604_800));
        let mut big = JsonObject::new();
        big.insert("blob".into(), json!("x".repeat(5000)));
        assert!(matches!(
            validate_metadata(&big),
            Err(InvalidPeer::MetadataTooLarge(_))
        ));
    }

    /// The lease ends exactly at `last_seen + ttl_seconds`.
    #[test]
    fn expiry_boundary() {
        let r = announce("p", "/ip4/127.0.0.1/tcp/1")
            .expect("valid")
            .into_record(100.0);
        assert!(!r.is_expired(100.0 + 3599.9));
        assert!(r.is_expired(100.0 + 3600.0));
        assert_eq!(r.lease(200.0).expires_in_seconds, 3500.0);
        assert_eq!(r.lease(1e9).expires_in_seconds, 0.0);
    }

    /// Re-registering keeps the first `first_seen` and unknown fields of the old copy.
    #[test]
    fn stored_over_keeps_first_seen_and_unknown_fields() {
        let mut old = announce("p", "/ip4/127.0.0.1/tcp/1")
            .expect("valid")
            .into_record(10.0);
        old.unknown_fields.insert("signature".into(), json!("abc"));
        let new = announce("p", "/ip4/127.0.0.1/tcp/2")
            .expect("valid")
            .into_record(50.0);
        let stored = new.stored_over(Some(&old));
        assert_eq!(stored.first_seen, 10.0);
        assert_eq!(stored.last_seen, 50.0);
        assert_eq!(stored.multiaddr, "/ip4/127.0.0.1/tcp/2");
        assert_eq!(stored.unknown_fields["signature"], "abc");
    }

    /// A heartbeat moves `last_seen` and replaces only the given fields.
    #[test]
    fn heartbeat_replaces_given_fields_only() {
        let old = Announcement::new(
            "p".into(),
            "/ip4/127.0.0.1/tcp/1",
            &["storage".into()],
            Some(60),
            None,
            DEFAULT_TTL_SECONDS,
        )
        .expect("valid")
        .into_record(10.0);
        let beat = Heartbeat::new("p", None, Some(&["compute".into()]), None, None).expect("valid");
        assert!(beat.changes_fields_of(&old));
        let new = beat.apply(&old, 20.0);
        assert_eq!((new.first_seen, new.last_seen), (10.0, 20.0));
        assert_eq!(new.capabilities, vec!["compute"]);
        assert_eq!(new.ttl_seconds, 60);
        assert!(!Heartbeat::default().changes_fields_of(&old));
    }

    /// The top of the ranking is the same whether it is cut before or after sorting.
    #[test]
    fn top_ranked_keeps_the_best_in_order() {
        let records: Vec<PeerRecord> = [("c", 5.0), ("a", 9.0), ("b", 9.0), ("d", 1.0), ("e", 7.0)]
            .iter()
            .map(|(id, t)| {
                announce(id, "/ip4/127.0.0.1/tcp/1")
                    .expect("valid")
                    .into_record(*t)
            })
            .collect();
        let ids = |v: Vec<PeerRecord>| v.into_iter().map(|r| r.peer_id).collect::<Vec<_>>();
        assert_eq!(
            ids(top_ranked(records.iter(), None)),
            ["a", "b", "e", "c", "d"]
        );
        assert_eq!(ids(top_ranked(records.iter(), Some(3))), ["a", "b", "e"]);
        assert_eq!(ids(top_ranked(records.iter(), Some(10))).len(), 5);
        assert!(top_ranked(records.iter(), Some(0)).is_empty());
    }

    /// A record in the Python module's shape round-trips with exactly its eight keys.
    #[test]
    fn python_shape_round_trips() {
        let python = json!({
            "peer_id": "agent-7", "multiaddr": "/ip4/127.0.0.1/tcp/4001",
            "capabilities": ["storage"], "first_seen": 1.5, "last_seen": 2.5,
            "source": "local_file", "ttl_seconds": 3600, "metadata": {"k": 1}
        });
        let record: PeerRecord = serde_json::from_value(python.clone()).expect("parses");
        record.check().expect("valid");
        assert_eq!(serde_json::to_value(&record).expect("serializes"), python);
    }

    /// Unknown fields survive a read and a write; missing required fields are refused and
    /// missing optional ones take their defaults.
    #[test]
    fn unknown_fields_are_kept_and_defaults_apply() {
        let text = r#"{"peer_id":"p","multiaddr":"/ip4/127.0.0.1/tcp/1","first_seen":1,"last_seen":2,"signature":{"alg":"ed25519"}}"#;
        let record: PeerRecord = serde_json::from_str(text).expect("parses");
        assert_eq!(record.unknown_fields["signature"]["alg"], "ed25519");
        assert_eq!(
            (record.ttl_seconds, record.source.as_str()),
            (DEFAULT_TTL_SECONDS, "unknown")
        );
        let written = serde_json::to_value(&record).expect("serializes");
        assert_eq!(written["signature"]["alg"], "ed25519");
        let err =
            serde_json::from_str::<PeerRecord>(r#"{"peer_id":"p","first_seen":1,"last_seen":2}"#)
                .expect_err("no multiaddr");
        assert!(
            err.to_string().contains("missing field `multiaddr`"),
            "{err}"
        );
    }

    /// Records read back are held to every rule: a bad capability is refused.
    #[test]
    fn check_rejects_records_that_break_a_rule() {
        let mut r = announce("p", "/ip4/127.0.0.1/tcp/1")
            .expect("valid")
            .into_record(1.0);
        r.source = "local_file".into();
        assert!(r.check().is_ok());
        r.capabilities = vec!["UPPER".into()];
        assert!(r.check().is_err());
        r.capabilities = vec![];
        r.last_seen = f64::NAN;
        assert!(r.check().is_err());
    }

    /// DNS names in multiaddrs follow RFC 1123; anything else is refused, naming why.
    #[test]
    fn dns_names_are_checked() {
        for good in [
            "/dns4/node.example.org/tcp/443/wss",
            "/dns6/a-1.b2.example/tcp/1",
            "/dns/localhost/tcp/1",
            "/dnsaddr/bootstrap.libp2p.io",
            "/dns4/example.org./tcp/1",
            "/dns4/xn--bcher-kva.example/tcp/1",
        ] {
            assert!(canonical_multiaddr("p", good).is_ok(), "{good}");
        }
        let long_label = format!("/dns4/{}.example/tcp/1", "a".repeat(64));
        let long_name = format!("/dns4/{}a/tcp/1", "abcdefghi.".repeat(26));
        let bad: [(&str, &str); 9] = [
            ("/dns4/bad name.example/tcp/1", "character other than"),
            ("/dns4/bad\nname.example/tcp/1", "character other than"),
            ("/dns6/nul\u{0}.example/tcp/1", "character other than"),
            ("/dns/\u{202e}gro.example/tcp/1", "character other than"),
            ("/dnsaddr/a..b", "empty label"),
            ("/dns4/-a.example/tcp/1", "hyphen"),
            ("/dns4/b\u{fc}cher.example/tcp/1", "character other than"),
            (&long_label, "longer than 63"),
            (&long_name, "too long"),
        ];
        for (text, reason) in bad {
            match canonical_multiaddr("p", text) {
                Err(e @ InvalidPeer::BadDnsName { .. }) => {
                    assert!(e.to_string().contains(reason), "{text:?}: {e}");
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }
}
