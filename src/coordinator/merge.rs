//! What the coordinator does with the sources' answers: checks them against the rules
//! once more (a source's filter is a hint), and merges them into one ranked list in
//! which the newest copy of each peer wins.

use std::collections::HashMap;

use crate::peer::{PeerFilter, PeerRecord};
use crate::source::{Listing, SourceName};

/// Applies `filter` to what a source returned for it: the filter is only a hint to the
/// source, the rule is applied here.
pub(super) fn recheck(listing: &mut Listing, filter: &PeerFilter) {
    let before = listing.peers.len();
    listing.peers.retain(|r| filter.matches(r));
    listing.matched = listing.matched.saturating_sub(before - listing.peers.len());
}

/// Dedups by `peer_id` (the copy with the newest `last_seen` wins, every holding source is
/// listed in the order of `listings`) and ranks newest first, ties by `peer_id`.
pub(super) fn merge(
    listings: Vec<(SourceName, Vec<PeerRecord>)>,
) -> Vec<(PeerRecord, Vec<SourceName>)> {
    let mut by_id: HashMap<String, (PeerRecord, Vec<SourceName>)> = HashMap::new();
    for (source, records) in listings {
        for record in records {
            match by_id.get_mut(&record.peer_id) {
                Some((kept, holders)) => {
                    holders.push(source.clone());
                    if std::ptr::eq(crate::peer::newest(kept, &record), &record) {
                        *kept = record;
                    }
                }
                None => {
                    by_id.insert(record.peer_id.clone(), (record, vec![source.clone()]));
                }
            }
        }
    }
    let mut ranked: Vec<_> = by_id.into_values().collect();
    ranked.sort_by(|(a, _), (b, _)| crate::peer::rank_order(a, b));
    ranked
}
