//! The rules every source and the coordinator apply, each one named function: when a
//! lease ends, which records a discover or a cleanup admits, which of two copies wins,
//! and how peers rank.

use super::*;

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
        if self.stale_only {
            return record.is_removed_by_cleanup(self.now);
        }
        !record.is_ahead_of_clock(self.now)
            && self.admits(record.last_seen, record.expires_at(), || {
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
    best_first(records.collect(), limit, |a, b| rank_order(a, b))
        .into_iter()
        .cloned()
        .collect()
}

/// The best `limit` of `items` (all of them without a limit), best first, by `order`:
/// the selection behind [`top_ranked`], for a source that ranks an index of its own
/// with [`rank_key_order`] and copies only what it returns.
pub fn best_first<T>(
    mut items: Vec<T>,
    limit: Option<usize>,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    if let Some(limit) = limit
        && limit < items.len()
    {
        if limit == 0 {
            return Vec::new();
        }
        items.select_nth_unstable_by(limit - 1, &order);
        items.truncate(limit);
    }
    items.sort_unstable_by(&order);
    items
}
