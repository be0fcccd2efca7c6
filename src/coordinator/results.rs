//! What the coordinator answers: the wire types every transport serializes, and the
//! per-source outcome that every answer carries. Nothing here names a source: `outcomes`
//! is a map from source name to one outcome type.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::peer::{JsonObject, PeerRecord};
use crate::source::{SourceError, SourceName};

/// How one source fared in one call: `ok` (it answered), `error` (it failed; see
/// `detail`), `disabled` (not configured; `detail` says how to turn it on), `rate_limited`
/// (a quota refused the call; see `retry_after_seconds`), `timeout` (no answer in time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceStatus {
    Ok,
    Error,
    Disabled,
    RateLimited,
    Timeout,
}

impl SourceStatus {
    /// The status as it appears on the wire (`rate_limited`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceStatus::Ok => "ok",
            SourceStatus::Error => "error",
            SourceStatus::Disabled => "disabled",
            SourceStatus::RateLimited => "rate_limited",
            SourceStatus::Timeout => "timeout",
        }
    }
}

/// One source's outcome in one call.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SourceOutcome {
    pub status: SourceStatus,
    /// What went wrong, or anything else worth knowing (a corrupt file kept aside).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many records this source returned, stored, or removed in this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Records this source holds that break a rule of the format and were skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u64>,
    /// Where this source keeps the peer, in its own terms (`issue #12`, `revision 4411`),
    /// for sources that can say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// With `rate_limited`: seconds to wait before calling this source again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// For a heartbeat: false when the source kept its copy because it was still fresh
    /// (sources whose writes are costly are written only when the lease is more than half
    /// used or a field changed), so its `last_seen` is older than the answer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<bool>,
}

impl SourceOutcome {
    fn with_status(status: SourceStatus) -> Self {
        SourceOutcome {
            status,
            detail: None,
            count: None,
            rejected: None,
            location: None,
            retry_after_seconds: None,
            written: None,
        }
    }

    pub(crate) fn ok(count: usize) -> Self {
        SourceOutcome {
            count: Some(count as u64),
            ..Self::with_status(SourceStatus::Ok)
        }
    }

    pub(crate) fn disabled(reason: &str) -> Self {
        SourceOutcome {
            detail: Some(reason.to_owned()),
            ..Self::with_status(SourceStatus::Disabled)
        }
    }

    pub(crate) fn failed(error: &SourceError) -> Self {
        let (status, retry_after_seconds) = match error {
            SourceError::Timeout(_) | SourceError::Withdrawn { .. } => {
                (SourceStatus::Timeout, None)
            }
            SourceError::RateLimited {
                retry_after_seconds,
            } => (SourceStatus::RateLimited, Some(*retry_after_seconds)),
            _ => (SourceStatus::Error, None),
        };
        SourceOutcome {
            detail: Some(error.to_string()),
            retry_after_seconds,
            ..Self::with_status(status)
        }
    }

    pub(crate) fn add_detail(&mut self, text: String) {
        self.detail = Some(match self.detail.take() {
            Some(d) => format!("{d}; {text}"),
            None => text,
        });
    }
}

/// The outcome of every source asked, keyed by source name. (Iterated, as the text
/// summaries do, built-in sources come first in their listed order; a JSON object has
/// no order.)
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Outcomes(BTreeMap<SourceName, SourceOutcome>);

impl Outcomes {
    pub fn get(&self, source: &str) -> Option<&SourceOutcome> {
        self.0
            .iter()
            .find(|(name, _)| name.as_str() == source)
            .map(|(_, o)| o)
    }

    pub(crate) fn get_mut(&mut self, source: &SourceName) -> Option<&mut SourceOutcome> {
        self.0.get_mut(source)
    }

    pub(crate) fn set(&mut self, source: SourceName, outcome: SourceOutcome) {
        self.0.insert(source, outcome);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SourceName, &SourceOutcome)> {
        self.0.iter()
    }

    /// One line per source, for the message of a call that failed as a whole.
    pub(crate) fn describe(&self) -> String {
        self.iter()
            .map(|(s, o)| {
                let status = o.status.as_str();
                match &o.detail {
                    Some(d) => format!("{s}: {status} ({d})"),
                    None => format!("{s}: {status}"),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// An object with one [`SourceOutcome`] per source, under `additionalProperties`: the
/// schema names no source, so a new source changes no tool's schema.
impl JsonSchema for Outcomes {
    fn schema_name() -> Cow<'static, str> {
        "Outcomes".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let outcome = generator.subschema_for::<SourceOutcome>();
        schemars::json_schema!({
            "type": "object",
            "description": "How each source asked fared, keyed by source name.",
            "additionalProperties": outcome
        })
    }
}

/// A peer as the tools return it: the record, its lease, and every source holding it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PeerView {
    pub peer_id: String,
    /// Canonical multiaddr to reach the peer at.
    pub multiaddr: String,
    pub capabilities: Vec<String>,
    /// Unix seconds of the first registration.
    pub first_seen: f64,
    /// Unix seconds of the last register or heartbeat.
    pub last_seen: f64,
    /// The source this copy was read from.
    pub source: String,
    pub ttl_seconds: u64,
    pub metadata: JsonObject,
    /// Unix seconds at which the lease ends unless the peer heartbeats (update_peer).
    pub expires_at: f64,
    /// Seconds left on the lease; 0 once expired.
    pub expires_in_seconds: f64,
    /// Every source that holds this peer.
    #[schemars(with = "Vec<String>")]
    pub sources: Vec<SourceName>,
}

impl PeerView {
    pub(crate) fn new(record: PeerRecord, sources: Vec<SourceName>, now: f64) -> Self {
        let lease = record.lease(now);
        PeerView {
            peer_id: record.peer_id,
            multiaddr: record.multiaddr,
            capabilities: record.capabilities,
            first_seen: record.first_seen,
            last_seen: record.last_seen,
            source: record.source,
            ttl_seconds: record.ttl_seconds,
            metadata: record.metadata,
            expires_at: lease.expires_at,
            // Whole milliseconds: a countdown needs no more, and 3599.998155117 reads badly.
            expires_in_seconds: (lease.expires_in_seconds * 1000.0).round() / 1000.0,
            sources,
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RegisterResult {
    /// The stored record with its lease.
    pub peer: PeerView,
    /// True when no source held this peer before; false when an existing registration was refreshed.
    pub created: bool,
    pub outcomes: Outcomes,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DiscoverResult {
    /// Matching peers, newest `last_seen` first, at most `max_peers`.
    pub peers: Vec<PeerView>,
    /// How many distinct peers matched before the cut to `max_peers`.
    pub total_matched: u64,
    pub outcomes: Outcomes,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UpdateResult {
    /// The refreshed record with its new lease.
    pub peer: PeerView,
    pub outcomes: Outcomes,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UnregisterResult {
    pub peer_id: String,
    /// True when at least one source held the peer and removed it.
    pub removed: bool,
    pub outcomes: Outcomes,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CleanupResult {
    /// True when nothing was removed, only reported.
    pub dry_run: bool,
    /// How many expired records each source removed (or would remove), keyed by source name.
    pub removed: BTreeMap<String, u64>,
    /// Expired entries dropped from in-memory listing caches (not records of any source).
    pub cache_evicted: u64,
    /// The distinct peer ids removed (or that would be), sorted.
    pub removed_peer_ids: Vec<String>,
    pub outcomes: Outcomes,
}

/// Counters kept per source for status reporting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct SourceStats {
    pub calls: u64,
    pub failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Mean time a call to this source took, in milliseconds.
    pub mean_latency_ms: f64,
    #[serde(skip)]
    pub(crate) total_latency: std::time::Duration,
    /// Whether the latest call failed (what `/healthz` reports; not part of the tools'
    /// answers).
    #[serde(skip)]
    pub last_call_failed: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SourceStatusReport {
    #[schemars(with = "String")]
    pub source: SourceName,
    pub enabled: bool,
    /// Why the source is disabled, or where it stores records.
    pub detail: String,
    pub stats: SourceStats,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusResult {
    pub sources: Vec<SourceStatusReport>,
    /// The lease a peer gets when it registers without `ttl_seconds`.
    pub default_ttl_seconds: u64,
    /// Seconds between background cleanups; 0 when off.
    pub cleanup_interval_seconds: u64,
    /// How long one source may take before it is reported as `timeout`, in seconds.
    pub source_timeout_seconds: f64,
}
