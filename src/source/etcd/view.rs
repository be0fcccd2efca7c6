//! The watch-kept view (the informer pattern of Kubernetes clients): every record under
//! `<prefix>peers/` listed once, in pages at one pinned revision, then kept current by a
//! watch from the next revision. Discover answers from it without a round trip, through
//! an in-memory capability index; a watch that breaks resumes from the last revision it
//! applied (no gap, no duplicate), and one whose revision was compacted away lists again.
//!
//! The view is only served while its watch is up (`live`); otherwise the source reads
//! etcd directly, so a broken watch never serves an old view as current.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

use super::client::{Connection, Retry};
use super::keys::{Layout, decode};
use crate::lock;
use crate::peer::{PeerFilter, PeerRecord, top_ranked};
use crate::source::{Listing, SourceError};

/// Records a listing page holds: with records of a few hundred bytes, well under etcd's
/// 4 MiB message limit (which a 10,000-record range exceeds).
const PAGE: i64 = 1000;
/// How long a resumed watch that may be replaying missed events stays silent before the
/// view serves again (see [`View::follow`]).
const SETTLE: Duration = Duration::from_millis(500);
/// Longest pause between attempts to list or watch again while etcd fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One record key as read from etcd.
pub(crate) struct Stored {
    pub peer_id: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A record as the view holds it, with what a guarded write compares.
pub(crate) struct Entry {
    pub record: PeerRecord,
    pub mod_revision: i64,
    pub lease: i64,
}

/// The records, indexed by capability, and the keys whose value is not served.
#[derive(Default)]
pub(crate) struct Table {
    records: HashMap<Arc<str>, Entry>,
    by_capability: HashMap<String, HashSet<Arc<str>>>,
    unusable: HashSet<Arc<str>>,
}

impl Table {
    pub(crate) fn from_stored(stored: &[Stored]) -> Table {
        let mut table = Table::default();
        for kv in stored {
            table.put(&kv.peer_id, &kv.value, kv.mod_revision, kv.lease);
        }
        table
    }

    fn put(&mut self, peer_id: &str, value: &[u8], mod_revision: i64, lease: i64) {
        self.delete(peer_id);
        let id: Arc<str> = Arc::from(peer_id);
        match decode(peer_id, value) {
            Ok(record) => {
                for capability in &record.capabilities {
                    self.by_capability
                        .entry(capability.clone())
                        .or_default()
                        .insert(Arc::clone(&id));
                }
                self.records.insert(
                    id,
                    Entry {
                        record,
                        mod_revision,
                        lease,
                    },
                );
            }
            Err(why) => {
                tracing::debug!(peer_id, "etcd record not served: {why}");
                self.unusable.insert(id);
            }
        }
    }

    fn delete(&mut self, peer_id: &str) {
        self.unusable.remove(peer_id);
        if let Some(old) = self.records.remove(peer_id) {
            for capability in &old.record.capabilities {
                if let Some(ids) = self.by_capability.get_mut(capability) {
                    ids.remove(peer_id);
                    if ids.is_empty() {
                        self.by_capability.remove(capability);
                    }
                }
            }
        }
    }

    /// What `hint` admits: candidates come from the rarest capability asked (the index),
    /// every candidate is checked against the whole filter, the best `limit` are copied.
    pub(crate) fn scan(&self, hint: &PeerFilter) -> Listing {
        let candidates: Vec<&PeerRecord> = if hint.capabilities.is_empty() {
            self.records.values().map(|e| &e.record).collect()
        } else {
            let rarest = hint
                .capabilities
                .iter()
                .map(|c| self.by_capability.get(c))
                .min_by_key(|ids| ids.map_or(0, HashSet::len))
                .flatten();
            rarest
                .into_iter()
                .flatten()
                .filter_map(|id| self.records.get(id).map(|e| &e.record))
                .collect()
        };
        let mut rejected = self.unusable.len();
        let mut matching = Vec::new();
        for record in candidates {
            if hint.matches(record) {
                matching.push(record);
            } else if record.is_ahead_of_clock(hint.now) {
                rejected += 1;
            }
        }
        Listing {
            matched: matching.len(),
            peers: top_ranked(matching.into_iter(), hint.limit),
            rejected,
            detail: None,
        }
    }
}

/// How far the view has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The last revision applied.
    pub revision: i64,
    /// The watch is up: the view follows etcd.
    pub live: bool,
    /// The last attempt to list or watch failed (it is being tried again).
    pub failing: bool,
}

pub(crate) struct View {
    layout: Layout,
    table: Mutex<Table>,
    progress: watch::Sender<Progress>,
    /// Counts the changes seen (by anyone), for [`crate::source::Source::watch_changes`].
    changes: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
}

/// Why following the watch stopped.
enum WatchEnd {
    /// The revision to resume from was compacted away: list again.
    Compacted(i64),
    Failed(SourceError),
}

impl View {
    pub(crate) fn new(layout: Layout) -> Self {
        View {
            layout,
            table: Mutex::new(Table::default()),
            progress: watch::Sender::new(Progress::default()),
            changes: watch::Sender::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Waits (at most `wait`) until the view is live and has applied `revision`; false
    /// when it did not get there, or the view is failing (then there is no point waiting).
    pub(crate) async fn current_at(&self, revision: i64, wait: Duration) -> bool {
        let mut progress = self.progress.subscribe();
        let reached = tokio::time::timeout(
            wait,
            progress.wait_for(|p| p.failing || (p.live && p.revision >= revision)),
        )
        .await;
        matches!(reached, Ok(Ok(p)) if p.live && p.revision >= revision)
    }

    pub(crate) fn scan(&self, hint: &PeerFilter) -> Listing {
        lock(&self.table).scan(hint)
    }

    /// What the view holds for `peer_id`, while it is live: `Some(None)` for no key,
    /// `Some(Some(..))` for a record it serves; `None` when it cannot say (not live, or
    /// a value it does not serve). It may trail etcd: only a guarded write may build on it.
    pub(crate) fn held(&self, peer_id: &str) -> Option<Option<(PeerRecord, i64, i64)>> {
        if !self.progress.borrow().live {
            return None;
        }
        let table = lock(&self.table);
        if table.unusable.contains(peer_id) {
            return None;
        }
        Some(
            table
                .records
                .get(peer_id)
                .map(|e| (e.record.clone(), e.mod_revision, e.lease)),
        )
    }

    /// Lists, then follows the watch, for as long as the task runs (it is aborted when
    /// the source goes).
    pub(crate) async fn keep_current(self: Arc<Self>, connection: Arc<Connection>) {
        let mut pause = Duration::from_millis(100);
        loop {
            let listed = match list(&connection, &self.layout).await {
                Ok(listed) => listed,
                Err(e) => {
                    self.failed(&e, "listing the records");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let (stored, revision) = listed;
            *lock(&self.table) = Table::from_stored(&stored);
            self.progress.send_replace(Progress {
                revision,
                live: false,
                failing: false,
            });
            self.changes.send_modify(|n| *n += 1);
            tracing::debug!(records = stored.len(), revision, "etcd view listed");
            drop(stored);
            // Follow the watch; after a failure, resume from the last revision applied.
            loop {
                let from = self.progress.borrow().revision + 1;
                match self.follow(&connection, from).await {
                    WatchEnd::Compacted(compacted) => {
                        tracing::info!(
                            "etcd compacted revision {from} away (now from {compacted}): listing again"
                        );
                        break;
                    }
                    WatchEnd::Failed(e) => {
                        self.failed(&e, "watching the records");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// The watch has sent every event up to `revision`: the view is current.
    fn caught_up(&self, revision: i64) {
        self.progress.send_modify(|p| {
            p.revision = p.revision.max(revision);
            p.live = true;
            p.failing = false;
        });
    }

    fn failed(&self, error: &SourceError, doing: &str) {
        tracing::warn!("etcd source: {doing} failed: {error}; trying again");
        *lock(&self.last_error) = Some(error.to_string());
        self.progress.send_modify(|p| {
            p.live = false;
            p.failing = true;
        });
    }

    /// Applies the watch's events from `from` on, until it ends.
    async fn follow(&self, connection: &Connection, from: i64) -> WatchEnd {
        let mut client = match connection.watch_client().await {
            Ok(client) => client,
            Err(e) => return WatchEnd::Failed(e),
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_fragment();
        let mut stream = match client.watch(self.layout.peers(), Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                return WatchEnd::Failed(
                    super::client::classify(e, connection.request_timeout()).error,
                );
            }
        };
        // After a resume, when etcd is already past where the watch resumed from: the
        // view is not current until the missed events are replayed (or the watch is
        // canceled for compaction). etcd 3.4 sends no reliable "caught up" signal (its
        // progress answer does not wait for a replaying watcher), so the view goes live
        // on the first replayed event at or past that revision, or after `SETTLE` of
        // silence: etcd's replay loop runs every 100 ms.
        let mut replaying_until: Option<(i64, tokio::time::Instant)> = None;
        loop {
            let next = match replaying_until {
                Some((at, deadline)) => {
                    match tokio::time::timeout_at(deadline, stream.message()).await {
                        Ok(next) => next,
                        Err(_) => {
                            replaying_until = None;
                            self.caught_up(at);
                            continue;
                        }
                    }
                }
                None => stream.message().await,
            };
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return WatchEnd::Failed(SourceError::Remote(
                        "etcd ended the watch stream".into(),
                    ));
                }
                Err(e) => {
                    return WatchEnd::Failed(
                        super::client::classify(e, connection.request_timeout()).error,
                    );
                }
            };
            if message.canceled() {
                if message.compact_revision() > 0 {
                    return WatchEnd::Compacted(message.compact_revision());
                }
                return WatchEnd::Failed(SourceError::Remote(format!(
                    "etcd canceled the watch: {}",
                    message.cancel_reason()
                )));
            }
            let at = message.header().map_or(0, |h| h.revision());
            if message.created() {
                *lock(&self.last_error) = None;
                self.progress.send_modify(|p| p.failing = false);
                if at < from {
                    // Nothing happened since the revision resumed from: current now.
                    self.caught_up(at);
                } else {
                    replaying_until = Some((at, tokio::time::Instant::now() + SETTLE));
                }
                continue;
            }
            if message.events().is_empty() {
                continue;
            }
            let mut applied = 0;
            {
                let mut table = lock(&self.table);
                for event in message.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(peer_id) = self.layout.peer_id_of(kv.key()) else {
                        continue;
                    };
                    match event.event_type() {
                        EventType::Put => {
                            table.put(peer_id, kv.value(), kv.mod_revision(), kv.lease())
                        }
                        EventType::Delete => table.delete(peer_id),
                    }
                    applied = applied.max(kv.mod_revision());
                }
            }
            self.progress
                .send_modify(|p| p.revision = p.revision.max(applied));
            if let Some((at, _)) = replaying_until
                && applied >= at
            {
                replaying_until = None;
                self.caught_up(applied);
            }
            self.changes.send_modify(|n| *n += 1);
        }
    }
}

/// Every record key under the prefix, read in pages at the revision of the first page
/// (so the pages agree), and that revision.
pub(crate) async fn list(
    connection: &Connection,
    layout: &Layout,
) -> Result<(Vec<Stored>, i64), SourceError> {
    let prefix = layout.peers();
    let end = prefix_end(prefix.as_bytes());
    let mut start = prefix.clone().into_bytes();
    let mut revision = 0;
    let mut stored = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = connection
            .call(Retry::Reads, |client| {
                let options = options.clone();
                let start = start.clone();
                async move {
                    client
                        .kv_client()
                        .max_decoding_message_size(super::client::MAX_MESSAGE_BYTES)
                        .get(start, Some(options))
                        .await
                }
            })
            .await
            .map_err(|f| f.error)?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            if let Some(peer_id) = layout.peer_id_of(kv.key()) {
                stored.push(Stored {
                    peer_id: peer_id.to_owned(),
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                    lease: kv.lease(),
                });
            }
        }
        let Some(last) = page.kvs().last() else { break };
        if !page.more() {
            break;
        }
        // The next page starts just after the last key of this one.
        start = last.key().to_vec();
        start.push(0);
    }
    Ok((stored, revision))
}

/// The end of the key range that holds every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Announcement;

    fn value(id: &str, caps: &[&str], at: f64) -> Vec<u8> {
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        let record = Announcement::new(
            id.into(),
            "/ip4/192.0.2.1/tcp/4001",
            &caps,
            Some(60),
            None,
            3600,
        )
        .expect("valid")
        .into_record(at);
        serde_json::to_vec(&record).expect("json")
    }

    /// The index follows puts and deletes: a capability dropped by a later put no longer
    /// finds the peer; unusable values are counted, and forgotten once deleted.
    #[test]
    fn the_capability_index_follows_changes() {
        let mut table = Table::default();
        table.put("a", &value("a", &["gpu", "cpu"], 1000.0), 1, 0);
        table.put("b", &value("b", &["gpu"], 1001.0), 2, 0);
        table.put("c", b"{broken", 3, 0);
        let gpu = PeerFilter::new(&["gpu".into()], false, 1002.0).expect("filter");
        let listing = table.scan(&gpu);
        assert_eq!(listing.matched, 2);
        assert_eq!(listing.rejected, 1);
        assert_eq!(listing.peers[0].peer_id, "b", "newest first");

        table.put("a", &value("a", &["cpu"], 1003.0), 4, 0);
        let listing = table.scan(&gpu);
        assert_eq!(listing.matched, 1);
        table.delete("b");
        table.delete("c");
        let listing = table.scan(&gpu);
        assert_eq!((listing.matched, listing.rejected), (0, 0));
        let both = PeerFilter::new(&["cpu".into(), "gpu".into()], false, 1004.0).expect("f");
        assert_eq!(table.scan(&both).matched, 0);
        assert!(!table.by_capability.contains_key("gpu"), "empty sets go");
    }

    /// The range end of a prefix is the prefix with its last byte raised.
    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/pd/peers/"), b"/pd/peers0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
