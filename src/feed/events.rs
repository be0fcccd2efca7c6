//! Events as the feed keeps them, and as `peer_changes` returns them: the change of the
//! whole registry, seen through a capability filter.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

use super::state::Gone;
use crate::coordinator::PeerView;
use crate::peer::PeerRecord;
use crate::source::SourceName;

/// One change of one peer, as kept in the history.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub peer_id: String,
    /// When this server saw the change (Unix seconds).
    pub seen_at: f64,
    /// The peer before and after (`None`: not registered, or its lease had ended).
    pub before: Option<Arc<PeerRecord>>,
    pub after: Option<Arc<PeerRecord>>,
    /// The sources holding it after.
    pub holders: Vec<SourceName>,
    /// Why it left, when `after` is `None`.
    pub gone: Option<Gone>,
    /// What this event is counted as in the history's byte bound.
    pub bytes: usize,
}

/// An estimate of the memory a record takes, for the history's byte bound.
pub(super) fn record_bytes(record: &PeerRecord) -> usize {
    let metadata = serde_json::to_string(&record.metadata).map_or(0, |m| m.len());
    let unknown = if record.unknown_fields.is_empty() {
        0
    } else {
        serde_json::to_string(&record.unknown_fields).map_or(0, |u| u.len())
    };
    std::mem::size_of::<PeerRecord>()
        + record.peer_id.len()
        + record.multiaddr.len()
        + record.source.len()
        + record
            .capabilities
            .iter()
            .map(|c| c.len() + 24)
            .sum::<usize>()
        + metadata
        + unknown
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// The peer registered, or (under a filter) started to match it.
    Added,
    /// A field other than the lease renewal changed (`ttl_seconds` included).
    Updated,
    /// The peer left; `reason` says how.
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// Unregistered (by this server or another process, or gone from a source).
    Unregistered,
    /// Its lease ended without a heartbeat.
    Expired,
    /// Still registered, but no longer has every capability of the filter.
    NoLongerMatches,
}

/// One event as `peer_changes` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ChangeEvent {
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    pub peer_id: String,
    /// Unix seconds: the record's `last_seen` for added/updated, `expires_at` for an
    /// expiry, otherwise when this server saw the change.
    pub at: f64,
    /// Why the peer was removed (removed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RemovalReason>,
    /// The record as of the event, with its lease and holders (added/updated only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerView>,
}

/// The `peer_changes` result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PeerChangesResult {
    /// Pass it to the next call to get the events after these.
    pub cursor: String,
    /// Oldest first; no event is given twice and none is skipped.
    pub events: Vec<ChangeEvent>,
    /// More events are waiting after these (call again at once with `cursor`).
    pub more: bool,
}

impl Event {
    /// This event as seen by a reader that watches only peers with every one of
    /// `capabilities` (all peers when empty), at `now`; `None` when it does not concern
    /// that reader.
    pub fn seen_through(&self, capabilities: &[String], now: f64) -> Option<ChangeEvent> {
        let matches = |r: &Option<Arc<PeerRecord>>| {
            r.as_ref().is_some_and(|r| r.has_capabilities(capabilities))
        };
        let (was, is) = (matches(&self.before), matches(&self.after));
        let (kind, reason) = match (was, is) {
            (false, false) => return None,
            (false, true) => (ChangeKind::Added, None),
            (true, true) => (ChangeKind::Updated, None),
            (true, false) if self.after.is_some() => {
                (ChangeKind::Removed, Some(RemovalReason::NoLongerMatches))
            }
            (true, false) => (
                ChangeKind::Removed,
                Some(match self.gone {
                    Some(Gone::Expired) => RemovalReason::Expired,
                    _ => RemovalReason::Unregistered,
                }),
            ),
        };
        let at = match (kind, reason) {
            (ChangeKind::Removed, Some(RemovalReason::Expired)) => self
                .before
                .as_ref()
                .map_or(self.seen_at, |b| b.expires_at()),
            (ChangeKind::Removed, _) => self.seen_at,
            _ => self.after.as_ref().map_or(self.seen_at, |a| a.last_seen),
        };
        let peer = match kind {
            ChangeKind::Removed => None,
            _ => self
                .after
                .as_ref()
                .map(|a| PeerView::new((**a).clone(), self.holders.clone(), now)),
        };
        Some(ChangeEvent {
            kind,
            peer_id: self.peer_id.clone(),
            at,
            reason,
            peer,
        })
    }

    /// The capabilities the peer had before or has after (what `peers://capability/..`
    /// resources the event touches).
    pub fn capabilities(&self) -> impl Iterator<Item = &String> {
        self.before
            .iter()
            .chain(self.after.iter())
            .flat_map(|r| r.capabilities.iter())
    }
}
