//! What the feed last observed: every live peer with the copy each source holds, and the
//! one change (if any) that a new observation makes to the merged peer.

use std::collections::HashMap;
use std::sync::Arc;

use crate::peer::{PeerRecord, lease_ended, newest};
use crate::source::SourceName;

/// One observation about one source's copy of one peer.
pub(super) enum Observed {
    /// The source holds this copy.
    Copy(SourceName, Arc<PeerRecord>),
    /// The source holds no copy (removed, or gone from its listing).
    NoCopy(SourceName),
}

/// Why a peer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Unregistered,
    Expired,
}

/// A change of a merged peer: what it was and what it is.
pub(super) struct Change {
    pub before: Option<Arc<PeerRecord>>,
    pub after: Option<Arc<PeerRecord>>,
    /// The sources holding it after.
    pub holders: Vec<SourceName>,
    /// Why it left, when `after` is `None`.
    pub gone: Option<Gone>,
}

/// Every peer with a live copy somewhere, and those copies.
#[derive(Default)]
pub(super) struct PeerTable {
    peers: HashMap<String, Vec<(SourceName, Arc<PeerRecord>)>>,
}

/// The newest of `copies` ([`newest`], the coordinator's merge rule).
fn merged(copies: &[(SourceName, Arc<PeerRecord>)]) -> Option<&Arc<PeerRecord>> {
    copies.iter().map(|(_, r)| r).reduce(|a, b| {
        if std::ptr::eq(newest(a, b), &**a) {
            a
        } else {
            b
        }
    })
}

/// Whether two copies differ in more than their lease renewal (`last_seen`) and where
/// they were read from.
fn same_content(a: &PeerRecord, b: &PeerRecord) -> bool {
    a.multiaddr == b.multiaddr
        && a.capabilities == b.capabilities
        && a.ttl_seconds == b.ttl_seconds
        && a.metadata == b.metadata
        && a.unknown_fields == b.unknown_fields
}

impl PeerTable {
    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// The copy `source` is known to hold of `peer_id`.
    pub(super) fn copy_of(&self, peer_id: &str, source: &SourceName) -> Option<&Arc<PeerRecord>> {
        self.peers
            .get(peer_id)?
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, r)| r)
    }

    /// The merged peer `peer_id` and the sources holding it.
    pub(super) fn get(&self, peer_id: &str) -> Option<(Arc<PeerRecord>, Vec<SourceName>)> {
        let copies = self.peers.get(peer_id)?;
        let record = merged(copies)?.clone();
        Some((record, copies.iter().map(|(s, _)| s.clone()).collect()))
    }

    /// The peers `source` is known to hold a copy of.
    pub(super) fn held_by(&self, source: &SourceName) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, copies)| copies.iter().any(|(s, _)| s == source))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Applies one observation at `now` and returns the change it makes to the merged
    /// peer, if any. A copy older than the one already held from the same source is
    /// ignored (a listing read before a write of this server lands after it); copies
    /// whose lease has ended are dropped.
    pub(super) fn observe(
        &mut self,
        peer_id: &str,
        observed: Observed,
        now: f64,
    ) -> Option<Change> {
        let copies = self.peers.entry(peer_id.to_owned()).or_default();
        let before = merged(copies).cloned();
        match observed {
            Observed::Copy(source, record) => match copies.iter_mut().find(|(s, _)| *s == source) {
                Some((_, held)) if held.last_seen > record.last_seen => {}
                Some((_, held)) => *held = record,
                None => copies.push((source, record)),
            },
            Observed::NoCopy(source) => copies.retain(|(s, _)| *s != source),
        }
        copies.retain(|(_, r)| !lease_ended(r.expires_at(), now));
        self.settle(peer_id, before, now)
    }

    /// Drops every copy whose lease has ended at `now`; the changes that makes.
    pub(super) fn expire(&mut self, now: f64) -> Vec<(String, Change)> {
        let due: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, copies)| copies.iter().any(|(_, r)| lease_ended(r.expires_at(), now)))
            .map(|(id, _)| id.clone())
            .collect();
        let mut changes = Vec::new();
        for peer_id in due {
            let Some(copies) = self.peers.get_mut(&peer_id) else {
                continue;
            };
            let before = merged(copies).cloned();
            copies.retain(|(_, r)| !lease_ended(r.expires_at(), now));
            if let Some(change) = self.settle(&peer_id, before, now) {
                changes.push((peer_id, change));
            }
        }
        changes
    }

    /// The earliest time a held copy's lease ends.
    pub(super) fn next_expiry(&self) -> Option<f64> {
        self.peers
            .values()
            .flatten()
            .map(|(_, r)| r.expires_at())
            .min_by(f64::total_cmp)
    }

    /// Compares the merged peer with `before` and forgets a peer with no copy left.
    fn settle(
        &mut self,
        peer_id: &str,
        before: Option<Arc<PeerRecord>>,
        now: f64,
    ) -> Option<Change> {
        let copies = self.peers.get(peer_id)?;
        let after = merged(copies).cloned();
        let holders: Vec<SourceName> = copies.iter().map(|(s, _)| s.clone()).collect();
        if after.is_none() {
            self.peers.remove(peer_id);
        }
        let gone = match (&before, &after) {
            (None, None) => return None,
            (Some(b), Some(a)) if same_content(b, a) => return None,
            (Some(b), None) if lease_ended(b.expires_at(), now) => Some(Gone::Expired),
            (Some(_), None) => Some(Gone::Unregistered),
            _ => None,
        };
        Some(Change {
            before,
            after,
            holders,
            gone,
        })
    }
}
