//! [`PeerTable`]: the `peers` object of the registry file, held compactly in memory.
//!
//! Every peer id and record text lives back to back in one byte arena; one slot per peer,
//! kept sorted by peer id, says where they are and holds the few fields that a discover or
//! a cleanup looks at (`last_seen`, the expiry, interned capability ids). A table of N
//! peers is therefore a handful of allocations instead of several per peer, which is what
//! keeps 100,000 peers within the memory target (see docs/performance.md): per peer, the
//! text as the file holds it plus a 40-byte slot. A `PeerRecord` is parsed from its text
//! only for the records an answer returns or a write changes, and a write copies the
//! texts of unchanged records instead of serializing them.
//!
//! A replaced or removed text stays in the arena as garbage until garbage reaches a
//! quarter of the live bytes (and at least 64 KiB); the arena is then compacted in place,
//! so it holds at most a quarter more than the live records, and never needs a second
//! copy of itself.

use std::collections::HashMap;

use crate::peer::{PeerFilter, PeerRecord};

/// Compaction starts when garbage exceeds live bytes divided by this...
const GARBAGE_DIVISOR: usize = 4;
/// ...and is at least this many bytes (or capability entries): a compaction walks every
/// slot, which small amounts of garbage are not worth. (None in unit tests, so that
/// their small tables compact too.)
fn min_garbage() -> usize {
    if cfg!(test) { 0 } else { 64 * 1024 }
}
/// A load reserves the arena at the file's size, but never more than this up front (a
/// file can claim any size; the arena grows as records are actually read).
pub(super) const MAX_ARENA_RESERVE: usize = 1 << 30;

#[derive(Debug, Clone, Default)]
pub(super) struct PeerTable {
    /// Peer ids and record texts, each text right after its id.
    arena: Vec<u8>,
    /// One per peer, sorted by peer id (byte order, which is `str` order).
    slots: Vec<Slot>,
    /// The capability ids of every served record, back to back.
    capability_lists: Vec<u32>,
    /// Capability names as small numbers.
    capability_ids: HashMap<String, u32>,
    /// Arena bytes and capability entries no slot points at any more.
    garbage_bytes: usize,
    garbage_capabilities: usize,
    /// Slots whose record this server does not serve.
    unusable: usize,
}

/// Where one peer's id and text are, and what filtering and ranking need.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: usize,
    key_len: u32,
    text_len: u32,
    last_seen: f64,
    expires_at: f64,
    capabilities_start: u32,
    capabilities_len: u16,
    /// False for a value that broke a rule when it was read: it is kept in the file as
    /// written (someone else wrote it) but never served.
    served: bool,
}

/// A value too large for the table's 32-bit lengths (4 GiB): not a registry to serve.
#[derive(Debug)]
pub(super) struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a value of the registry file is larger than 4 GiB")
    }
}

impl Slot {
    fn key_range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.key_len as usize
    }

    fn text_range(&self) -> std::ops::Range<usize> {
        let text_start = self.start + self.key_len as usize;
        text_start..text_start + self.text_len as usize
    }

    fn len(&self) -> usize {
        self.key_len as usize + self.text_len as usize
    }

    /// Whether this is a served record that cleanup removes at `now` (its lease has
    /// ended, or it claims a time too far ahead of the clock).
    fn expired_at(&self, now: f64) -> bool {
        self.served && crate::peer::cleanup_removes(self.last_seen, self.expires_at, now)
    }

    /// The peer id, owned (ids enter the arena only from `&str`, so the lossy
    /// conversion changes nothing).
    fn id(&self, arena: &[u8]) -> String {
        String::from_utf8_lossy(&arena[self.key_range()]).into_owned()
    }

    fn capabilities_range(&self) -> std::ops::Range<usize> {
        let start = self.capabilities_start as usize;
        start..start + self.capabilities_len as usize
    }
}

impl PeerTable {
    /// An empty table that expects about `bytes` of ids and texts (the file's size, on a
    /// load), so the arena is allocated once.
    pub(super) fn with_capacity(bytes: usize) -> Self {
        let mut arena = Vec::new();
        // Only a hint: if the memory is not there, grow as the records come instead.
        let _ = arena.try_reserve_exact(bytes.min(MAX_ARENA_RESERVE));
        PeerTable {
            arena,
            ..PeerTable::default()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub(super) fn arena_capacity(&self) -> usize {
        self.arena.capacity()
    }

    pub(super) fn unusable_count(&self) -> usize {
        self.unusable
    }

    fn key(&self, slot: &Slot) -> &[u8] {
        &self.arena[slot.key_range()]
    }

    fn text(&self, slot: &Slot) -> &[u8] {
        &self.arena[slot.text_range()]
    }

    fn find(&self, peer_id: &str) -> Result<usize, usize> {
        self.slots
            .binary_search_by(|slot| self.key(slot).cmp(peer_id.as_bytes()))
    }

    fn capability_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.capability_ids.get(name) {
            return *id;
        }
        let id = self.capability_ids.len() as u32;
        self.capability_ids.insert(name.to_owned(), id);
        id
    }

    /// Appends `peer_id` and `text` to the arena and returns their slot; `record` is the
    /// parsed text when it is to be served. Every check comes first: on error nothing was
    /// added.
    fn append(
        &mut self,
        peer_id: &str,
        text: &[u8],
        record: Option<&PeerRecord>,
    ) -> Result<Slot, TooLarge> {
        let key_len = u32::try_from(peer_id.len()).map_err(|_| TooLarge)?;
        let text_len = u32::try_from(text.len()).map_err(|_| TooLarge)?;
        let capabilities = record.map_or(&[][..], |r| r.capabilities.as_slice());
        let capabilities_len = u16::try_from(capabilities.len()).map_err(|_| TooLarge)?;
        let capabilities_start = u32::try_from(self.capability_lists.len())
            .ok()
            .filter(|start| start.checked_add(u32::from(capabilities_len)).is_some())
            .ok_or(TooLarge)?;
        let mut slot = Slot {
            start: self.arena.len(),
            key_len,
            text_len,
            last_seen: 0.0,
            expires_at: 0.0,
            capabilities_start,
            capabilities_len,
            served: false,
        };
        self.arena.extend_from_slice(peer_id.as_bytes());
        self.arena.extend_from_slice(text);
        if let Some(record) = record {
            for name in capabilities {
                let id = self.capability_id(name);
                self.capability_lists.push(id);
            }
            slot.last_seen = record.last_seen;
            slot.expires_at = record.expires_at();
            slot.served = true;
        }
        Ok(slot)
    }

    /// Adds a value read from the file, in file order; call [`PeerTable::finish_load`]
    /// when all are in. `record` is the parsed value when it passed every rule.
    pub(super) fn push_loaded(
        &mut self,
        peer_id: &str,
        text: &str,
        record: Option<&PeerRecord>,
    ) -> Result<(), TooLarge> {
        let slot = self.append(peer_id, text.as_bytes(), record)?;
        self.unusable += usize::from(!slot.served);
        self.slots.push(slot);
        Ok(())
    }

    /// Sorts the loaded slots by peer id; of a peer id the file holds twice, the last
    /// value wins (as in any JSON reader that builds a map).
    pub(super) fn finish_load(&mut self) {
        let arena = &self.arena;
        // Stable, so equal ids keep file order and the last of a run is the last read.
        self.slots
            .sort_by(|a, b| arena[a.key_range()].cmp(&arena[b.key_range()]));
        let mut kept: Vec<Slot> = Vec::with_capacity(self.slots.len());
        let mut replaced = Vec::new();
        for slot in self.slots.drain(..) {
            match kept.last_mut() {
                Some(last) if arena[last.key_range()] == arena[slot.key_range()] => {
                    replaced.push(std::mem::replace(last, slot));
                }
                _ => kept.push(slot),
            }
        }
        self.slots = kept;
        for slot in &replaced {
            self.forget(slot);
        }
        self.compact_if_worth_it();
    }

    /// The served record of `peer_id`, parsed from its text.
    pub(super) fn record(&self, peer_id: &str) -> Option<PeerRecord> {
        let slot = &self.slots[self.find(peer_id).ok()?];
        slot.served.then(|| self.parse(slot)).flatten()
    }

    /// Stores `record` in place of any value of its peer (serialized now, so that a write
    /// only copies text). On error the table is unchanged.
    pub(super) fn upsert(&mut self, record: &PeerRecord) -> Result<(), serde_json::Error> {
        let text = serde_json::to_vec(record)?;
        let slot = self
            .append(&record.peer_id, &text, Some(record))
            .map_err(serde::ser::Error::custom)?;
        match self.find(&record.peer_id) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.slots[i], slot);
                self.forget(&old);
            }
            Err(i) => self.slots.insert(i, slot),
        }
        self.compact_if_worth_it();
        Ok(())
    }

    /// Removes the value of `peer_id`, served or not; whether there was one.
    pub(super) fn remove(&mut self, peer_id: &str) -> bool {
        let Ok(i) = self.find(peer_id) else {
            return false;
        };
        let old = self.slots.remove(i);
        self.forget(&old);
        self.compact_if_worth_it();
        true
    }

    /// Removes every served record that cleanup at `now` removes, in one pass over the
    /// slots (removing them one by one would move the slots after each); their ids.
    pub(super) fn remove_stale(&mut self, now: f64) -> Vec<String> {
        let mut removed = Vec::new();
        let mut dropped = Vec::new();
        let arena = &self.arena;
        self.slots.retain(|slot| {
            let expired = slot.expired_at(now);
            if expired {
                removed.push(slot.id(arena));
                dropped.push(*slot);
            }
            !expired
        });
        for slot in &dropped {
            self.forget(slot);
        }
        if !dropped.is_empty() {
            self.compact_if_worth_it();
        }
        removed
    }

    /// Counts a slot that was dropped as garbage.
    fn forget(&mut self, old: &Slot) {
        self.garbage_bytes += old.len();
        if old.served {
            self.garbage_capabilities += old.capabilities_len as usize;
        } else {
            self.unusable -= 1;
        }
    }

    /// Every peer id (as UTF-8) with its value's text, in peer id order, for writing the
    /// file.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.slots
            .iter()
            .map(|slot| (self.key(slot), self.text(slot)))
    }

    /// Served records that claim a `last_seen` too far ahead of `now`: rejected, not served.
    pub(super) fn ahead_of_clock_count(&self, now: f64) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.served && crate::peer::ahead_of_clock(slot.last_seen, now))
            .count()
    }

    /// The records that match `filter`: all of them, or the best `filter.limit`; and how
    /// many matched. Only the returned records are parsed.
    pub(super) fn matching(&self, filter: &PeerFilter) -> (Vec<PeerRecord>, usize) {
        // A capability no record has cannot match: no id, no records.
        let wanted: Option<Vec<u32>> = filter
            .capabilities
            .iter()
            .map(|c| self.capability_ids.get(c).copied())
            .collect();
        let Some(wanted) = wanted else {
            return (Vec::new(), 0);
        };
        let hits: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|slot| {
                slot.served
                    && filter.admits(slot.last_seen, slot.expires_at, || {
                        let have = &self.capability_lists[slot.capabilities_range()];
                        wanted.iter().all(|w| have.contains(w))
                    })
            })
            .collect();
        let matched = hits.len();
        let order = |a: &&Slot, b: &&Slot| {
            crate::peer::rank_key_order((a.last_seen, self.key(a)), (b.last_seen, self.key(b)))
        };
        let hits = crate::peer::best_first(hits, filter.limit, order);
        let records = hits
            .into_iter()
            .filter_map(|slot| self.parse(slot))
            .collect();
        (records, matched)
    }

    /// The record behind a served slot. Its text passed every rule when it was stored, so
    /// this fails only on a bug; such a record is logged and skipped rather than served
    /// wrong.
    fn parse(&self, slot: &Slot) -> Option<PeerRecord> {
        match serde_json::from_slice(self.text(slot)) {
            Ok(record) => Some(record),
            Err(e) => {
                let peer_id = slot.id(&self.arena);
                tracing::error!(%peer_id, error = %e, "a stored record no longer parses");
                None
            }
        }
    }

    fn compact_if_worth_it(&mut self) {
        let worth = |garbage: usize, total: usize| {
            garbage > 0 && garbage >= ((total - garbage) / GARBAGE_DIVISOR).max(min_garbage())
        };
        if worth(self.garbage_bytes, self.arena.len()) {
            self.compact_arena();
        }
        if worth(self.garbage_capabilities, self.capability_lists.len()) {
            self.compact_capabilities();
        }
    }

    /// Slides every live id and text down over the garbage, in arena order, so each move
    /// goes to a lower address and the arena is compacted without a second copy.
    fn compact_arena(&mut self) {
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        order.sort_unstable_by_key(|&i| self.slots[i].start);
        let mut cursor = 0;
        for i in order {
            let slot = &mut self.slots[i];
            let len = slot.len();
            self.arena.copy_within(slot.start..slot.start + len, cursor);
            slot.start = cursor;
            cursor += len;
        }
        self.arena.truncate(cursor);
        self.garbage_bytes = 0;
    }

    fn compact_capabilities(&mut self) {
        let mut order: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].served)
            .collect();
        order.sort_unstable_by_key(|&i| self.slots[i].capabilities_start);
        let mut cursor = 0u32;
        for i in order {
            let slot = &mut self.slots[i];
            self.capability_lists
                .copy_within(slot.capabilities_range(), cursor as usize);
            slot.capabilities_start = cursor;
            cursor += u32::from(slot.capabilities_len);
        }
        self.capability_lists.truncate(cursor as usize);
        self.garbage_capabilities = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Announcement;

    fn record(peer_id: &str, caps: &[&str], last_seen: f64) -> PeerRecord {
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        Announcement::new(
            peer_id.into(),
            "/ip4/127.0.0.1/tcp/4001",
            &caps,
            Some(100),
            None,
            crate::peer::DEFAULT_TTL_SECONDS,
        )
        .expect("valid")
        .into_record(last_seen)
    }

    fn written(table: &PeerTable) -> Vec<(String, String)> {
        table
            .entries()
            .map(|(k, t)| {
                let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).expect("utf-8");
                (utf8(k), utf8(t))
            })
            .collect()
    }

    fn ids(records: &[PeerRecord]) -> Vec<&str> {
        records.iter().map(|r| r.peer_id.as_str()).collect()
    }

    fn filter(caps: &[&str], now: f64, limit: Option<usize>) -> PeerFilter {
        PeerFilter {
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            include_expired: false,
            now,
            limit,
            stale_only: false,
        }
    }

    #[test]
    fn load_sorts_and_the_last_duplicate_wins() {
        let mut table = PeerTable::default();
        let b = record("b", &["storage"], 10.0);
        let a = record("a", &["compute"], 10.0);
        let b_text = serde_json::to_string(&b).expect("json");
        table.push_loaded("b", "{\"old\":1}", None).expect("fits");
        table
            .push_loaded("a", &serde_json::to_string(&a).expect("json"), Some(&a))
            .expect("fits");
        table.push_loaded("b", &b_text, Some(&b)).expect("fits");
        table.finish_load();
        let entries = written(&table);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "a");
        assert_eq!(entries[1], ("b".to_owned(), b_text));
        assert_eq!(
            table.unusable_count(),
            0,
            "the unusable first `b` was replaced"
        );
        assert_eq!(table.record("b"), Some(b));
    }

    #[test]
    fn many_replacements_compact_the_arena_and_keep_every_record() {
        let mut table = PeerTable::default();
        for i in 0..200 {
            table
                .upsert(&record(&format!("p{i:03}"), &["storage"], 1.0))
                .expect("upsert");
        }
        let after_inserts = table.arena.len();
        for round in 0..20 {
            for i in 0..200 {
                let caps: &[&str] = if i % 2 == 0 {
                    &["compute", "storage"]
                } else {
                    &["storage"]
                };
                table
                    .upsert(&record(&format!("p{i:03}"), caps, 2.0 + f64::from(round)))
                    .expect("upsert");
            }
        }
        // 4,000 replacements of 200 records: the arena stays near the live size.
        assert!(
            table.arena.len() < after_inserts * 3 / 2,
            "{} vs {after_inserts}",
            table.arena.len()
        );
        assert!(table.capability_lists.len() <= 300 * 5 / 4 + 1);
        for i in 0..200 {
            let r = table.record(&format!("p{i:03}")).expect("present");
            assert_eq!(r.last_seen, 21.0);
            assert_eq!(r.capabilities.len(), if i % 2 == 0 { 2 } else { 1 });
        }
        let (found, matched) = table.matching(&filter(&["compute"], 0.0, None));
        assert_eq!((found.len(), matched), (100, 100));
    }

    #[test]
    fn remove_and_rank() {
        let mut table = PeerTable::default();
        for (id, seen) in [("a", 5.0), ("b", 7.0), ("c", 7.0), ("d", 1.0)] {
            table
                .upsert(&record(id, &["storage"], seen))
                .expect("upsert");
        }
        assert!(table.remove("c"));
        assert!(!table.remove("c"));
        assert!(table.record("c").is_none());
        let (found, matched) = table.matching(&filter(&["storage"], 0.0, Some(2)));
        assert_eq!((ids(&found), matched), (vec!["b", "a"], 3));
        // Equal last_seen: ranked by peer id.
        table
            .upsert(&record("ba", &["storage"], 7.0))
            .expect("upsert");
        let (found, _) = table.matching(&filter(&["storage"], 0.0, Some(3)));
        assert_eq!(ids(&found), ["b", "ba", "a"]);
        // Leases of 100 s: at 102 `d` (seen at 1) has expired, the others not yet.
        let (stale, _) = table.matching(&PeerFilter::stale(102.0));
        assert_eq!(ids(&stale), ["d"]);
        assert_eq!(table.matching(&filter(&["gpu"], 0.0, None)).1, 0);
    }

    /// A record stamped far ahead of the clock is not served even though it would rank
    /// first and never expire: it is counted as rejected and cleanup removes it.
    #[test]
    fn records_from_the_future_are_rejected_and_cleaned_up() {
        let mut table = PeerTable::default();
        table
            .upsert(&record("honest", &["compute"], 1000.0))
            .expect("upsert");
        table
            .upsert(&record("hijack", &["compute"], 1e15))
            .expect("upsert");
        // 299 s ahead is clock skew, tolerated.
        table
            .upsert(&record("skewed", &["compute"], 1299.0))
            .expect("upsert");
        let (found, matched) = table.matching(&filter(&["compute"], 1000.0, Some(1)));
        assert_eq!((found[0].peer_id.as_str(), matched), ("skewed", 2));
        assert_eq!(table.ahead_of_clock_count(1000.0), 1);
        assert_eq!(table.remove_stale(1000.0), vec!["hijack".to_owned()]);
        assert_eq!(table.ahead_of_clock_count(1000.0), 0);
    }

    /// The table against a plain map, over random loads (with duplicate ids and
    /// rule-breaking values), upserts, removals and expiry sweeps; after every step the
    /// written entries, lookups, capability matches and garbage counters must agree.
    /// (Contributed by a review of the table.)
    #[test]
    fn behaves_like_a_map() {
        use std::collections::BTreeMap;

        struct Lcg(u64);
        impl Lcg {
            fn next(&mut self) -> u64 {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                self.0 >> 33
            }
        }
        type Model = BTreeMap<String, (String, Option<PeerRecord>)>;

        fn check(table: &PeerTable, model: &Model) {
            let want: Vec<(String, String)> = model
                .iter()
                .map(|(k, (t, _))| (k.clone(), t.clone()))
                .collect();
            assert_eq!(written(table), want);
            let unusable = model.values().filter(|(_, r)| r.is_none()).count();
            assert_eq!(table.unusable_count(), unusable);
            for cap in ["a", "b", "c", "d"] {
                let mut f = filter(&[cap], 0.0, None);
                f.include_expired = true;
                let want = model
                    .values()
                    .filter(|(_, r)| {
                        r.as_ref()
                            .is_some_and(|r| r.capabilities.iter().any(|c| c == cap))
                    })
                    .count();
                assert_eq!(table.matching(&f).1, want, "capability {cap}");
            }
            for (k, (_, r)) in model {
                assert_eq!(table.record(k).as_ref(), r.as_ref());
            }
            let live: usize = table.slots.iter().map(|s| s.len()).sum();
            assert_eq!(
                table.arena.len() - table.garbage_bytes,
                live,
                "garbage bytes"
            );
            let live_capabilities: usize = table
                .slots
                .iter()
                .filter(|s| s.served)
                .map(|s| s.capabilities_len as usize)
                .sum();
            assert_eq!(
                table.capability_lists.len() - table.garbage_capabilities,
                live_capabilities,
                "garbage capabilities"
            );
        }

        let capability_sets: [&[&str]; 5] = [&[], &["a"], &["a", "b"], &["b", "c", "d"], &["d"]];
        for seed in 0..200u64 {
            let mut rng = Lcg(seed);
            let mut model = Model::new();
            let mut table = PeerTable::default();
            let random_record = |rng: &mut Lcg, id: &str| {
                let caps = capability_sets[(rng.next() % 5) as usize];
                record(id, caps, (rng.next() % 100) as f64)
            };
            for _ in 0..rng.next() % 30 {
                let id = format!("p{}", rng.next() % 12);
                if rng.next().is_multiple_of(3) {
                    let text = format!("{{\"junk\":{}}}", rng.next() % 1000);
                    table.push_loaded(&id, &text, None).expect("fits");
                    model.insert(id, (text, None));
                } else {
                    let r = random_record(&mut rng, &id);
                    let text = serde_json::to_string(&r).expect("json");
                    table.push_loaded(&id, &text, Some(&r)).expect("fits");
                    model.insert(id, (text, Some(r)));
                }
            }
            table.finish_load();
            check(&table, &model);
            for _ in 0..300 {
                let id = format!("p{}", rng.next() % 12);
                match rng.next() % 10 {
                    0..=2 => assert_eq!(table.remove(&id), model.remove(&id).is_some()),
                    3 => {
                        // Leases are 100 s from last_seen in 0..100.
                        let now = 100.0 + (rng.next() % 100) as f64;
                        let mut removed = table.remove_stale(now);
                        removed.sort();
                        let expired: Vec<String> = model
                            .iter()
                            .filter(|(_, (_, r))| {
                                r.as_ref().is_some_and(|r| r.is_removed_by_cleanup(now))
                            })
                            .map(|(k, _)| k.clone())
                            .collect();
                        assert_eq!(removed, expired);
                        model.retain(|k, _| !expired.contains(k));
                    }
                    _ => {
                        let r = random_record(&mut rng, &id);
                        table.upsert(&r).expect("upsert");
                        let text = serde_json::to_string(&r).expect("json");
                        model.insert(id, (text, Some(r)));
                    }
                }
                check(&table, &model);
            }
        }
    }
}
