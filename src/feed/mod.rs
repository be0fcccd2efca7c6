//! The change feed: who came, who changed and who left, as one numbered history that the
//! `peer_changes` tool, resource subscriptions and `peers watch` read.
//!
//! It is written once, here, for every source. It keeps what it last observed of each
//! live peer (the copy each source holds, [`state`]) and turns every new observation into
//! at most one event of the merged peer:
//! - this server's own writes, reported by the coordinator as they complete, so none is
//!   ever missed;
//! - other parties' writes: a source that can tell ([`Source::watch_changes`]: the local
//!   file's folder watch, etcd's watch) is read again when it says so; one that cannot
//!   (GitHub) is read every [`POLL_UNWATCHED`] (a conditional request, free when nothing
//!   changed). These are observed states: a peer that came and went between two reads
//!   may show as nothing;
//! - time: a lease that ends is an `expired` event within a second of `expires_at`,
//!   whether or not cleanup ran.
//!
//! The feed starts on first use (a `peer_changes` call, a subscription) with one listing
//! of every source, which is the state its first cursor starts from; a server whose agents
//! never ask pays nothing. Cursors name positions in a bounded history ([`history`]); one
//! from another process, or older than the history, is refused with what to do instead.

pub mod events;
mod history;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use events::{ChangeEvent, ChangeKind, Event, PeerChangesResult, RemovalReason};
pub use history::{MAX_BYTES, MAX_EVENTS};
pub use state::Gone;

use crate::coordinator::Clock;
use crate::peer::{PeerFilter, PeerRecord};
use crate::source::{Progress, Source, SourceName};
use history::{History, cursor, parse_cursor};
use state::{Change, Observed, PeerTable};

/// How often a source that cannot watch is read for changes made by others.
pub const POLL_UNWATCHED: Duration = Duration::from_secs(30);

/// Longest a `peer_changes` call may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(50);

/// After a failed read of a watched source, when to try again.
const RETRY_FAILED_READ: Duration = Duration::from_millis(500);

/// Why a read of the feed was refused. Each message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(
        "the cursor `{0}` is from before this server restarted (or from another server); call discover_peers for the current set of peers, then peer_changes without a cursor"
    )]
    OtherEpoch(String),
    #[error(
        "the cursor `{0}` is older than the {1} events this server keeps; call discover_peers for the current set of peers, then peer_changes without a cursor"
    )]
    TooOld(String, usize),
    #[error(
        "`{0}` is not a cursor from peer_changes; call discover_peers for the current set of peers, then peer_changes without a cursor"
    )]
    NotACursor(String),
}

/// What a reader asks for.
#[derive(Debug, Clone, Default)]
pub struct ReadChanges {
    /// Where to start (`None`: from now).
    pub cursor: Option<String>,
    /// Only peers with every one of these (normalized) capabilities.
    pub capabilities: Vec<String>,
    /// Longest to wait for a first event (0: answer at once).
    pub wait: Duration,
    /// Most events in one answer.
    pub max_events: usize,
}

struct Inner {
    state: Mutex<State>,
    /// The head position, for readers waiting for new events.
    head: watch::Sender<u64>,
    /// Every event, for subscribers (resource subscriptions).
    subscribers: broadcast::Sender<Arc<Event>>,
    /// Wakes the expiry task when a lease may end sooner than it planned.
    rescheduled: Notify,
    /// Drawn once per feed: cursors of another epoch are from another process.
    epoch: u64,
    clock: Clock,
    /// Set on shutdown: waiting readers answer at once.
    closed: CancellationToken,
}

struct State {
    peers: PeerTable,
    history: History,
    /// How many writes of this server were observed; with [`State::written`], lets a
    /// listing that began before a write leave that peer alone (the write is newer).
    writes: u64,
    /// The write number of the latest write of this server to each (source, peer) that a
    /// listing of that source has not caught up with yet.
    written: HashMap<(SourceName, String), u64>,
    /// Peers this server is writing now ([`ChangeFeed::write_starts`]): a listing may
    /// already hold the new copy, whose event the write itself reports when it ends.
    writing: HashMap<String, usize>,
}

/// The feed of one server process. Its tasks stop when it is dropped.
pub struct ChangeFeed {
    inner: Arc<Inner>,
    sources: Vec<Arc<dyn Source>>,
    timeout: Duration,
    /// Set once the first listing is taken and the tasks run ([`ChangeFeed::ready`]).
    started: tokio::sync::OnceCell<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        for task in crate::lock(&self.tasks).iter() {
            task.abort();
        }
    }
}

/// A write of this server in flight ([`ChangeFeed::write_starts`]).
pub struct WriteInFlight<'a> {
    feed: &'a ChangeFeed,
    peer_id: String,
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.feed.inner.lock();
        if let Some(count) = state.writing.get_mut(&self.peer_id) {
            *count -= 1;
            if *count == 0 {
                state.writing.remove(&self.peer_id);
            }
        }
    }
}

/// A read of every live record of `source` (its own timeout applies).
async fn list(source: &dyn Source, now: f64, timeout: Duration) -> Option<Vec<PeerRecord>> {
    let everything = PeerFilter::new(&[], false, now).ok()?;
    match tokio::time::timeout(timeout, source.scan(&everything, &Progress::default())).await {
        Ok(Ok(listing)) => Some(listing.peers),
        Ok(Err(e)) => {
            tracing::debug!(source = %source.name(), error = %e, "the change feed could not read a source");
            None
        }
        Err(_) => {
            tracing::debug!(source = %source.name(), "the change feed's read of a source timed out");
            None
        }
    }
}

impl ChangeFeed {
    /// Starts the feed over `sources`: lists each once (the state the first cursor starts
    /// from), then keeps watching. `timeout` bounds each read.
    pub async fn start(sources: Vec<Arc<dyn Source>>, clock: Clock, timeout: Duration) -> Self {
        Self::start_with(sources, clock, timeout, MAX_EVENTS, MAX_BYTES).await
    }

    /// [`ChangeFeed::start`] with the history's bounds given (tests, benchmarks).
    pub async fn start_with(
        sources: Vec<Arc<dyn Source>>,
        clock: Clock,
        timeout: Duration,
        max_events: usize,
        max_bytes: usize,
    ) -> Self {
        let feed = Self::new_with(sources, clock, timeout, max_events, max_bytes);
        feed.ready().await;
        feed
    }

    /// A feed that takes this server's writes and has subscribers at once, and starts
    /// (lists every source, watches) at the first [`ChangeFeed::ready`]. A write made
    /// while it starts is an event, never folded silently into the first listing.
    pub fn new(sources: Vec<Arc<dyn Source>>, clock: Clock, timeout: Duration) -> Self {
        Self::new_with(sources, clock, timeout, MAX_EVENTS, MAX_BYTES)
    }

    fn new_with(
        sources: Vec<Arc<dyn Source>>,
        clock: Clock,
        timeout: Duration,
        max_events: usize,
        max_bytes: usize,
    ) -> Self {
        let epoch = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                peers: PeerTable::default(),
                history: History::new(max_events, max_bytes),
                writes: 0,
                written: HashMap::new(),
                writing: HashMap::new(),
            }),
            head: watch::Sender::new(0),
            subscribers: broadcast::channel(1024).0,
            rescheduled: Notify::new(),
            epoch,
            clock,
            closed: CancellationToken::new(),
        });
        ChangeFeed {
            inner,
            sources,
            timeout,
            started: tokio::sync::OnceCell::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Waits until the feed has started: the first caller lists every source once (quietly:
    /// the state the first cursor starts from) and starts the tasks that keep watching.
    pub async fn ready(&self) {
        self.started.get_or_init(|| self.begin()).await;
    }

    async fn begin(&self) {
        let inner = &self.inner;
        // Subscribed before the first listing, so that no change after it goes unsignalled.
        let signals: Vec<_> = self.sources.iter().map(|s| s.watch_changes()).collect();
        let writes_before = inner.lock().writes;
        let now = (inner.clock)();
        let listed = join_all(
            self.sources
                .iter()
                .map(|s| list(s.as_ref(), now, self.timeout)),
        )
        .await;
        let mut tasks = Vec::new();
        for ((source, signal), listing) in self.sources.iter().zip(signals).zip(listed) {
            // The first listing is the state the first cursor starts from: no events
            // (peers this server wrote meanwhile already have theirs). A source that could
            // not be listed now is read again at once, with events for what it holds (it
            // comes into view).
            let listed_now = listing.is_some();
            if let Some(records) = listing {
                inner.take_listing(&source.name(), records, writes_before, true);
            }
            tasks.push(tokio::spawn(follow(
                Arc::clone(inner),
                Arc::clone(source),
                signal,
                self.timeout,
                !listed_now,
            )));
        }
        tasks.push(tokio::spawn(expire_on_time(Arc::clone(inner))));
        *crate::lock(&self.tasks) = tasks;
    }

    /// Marks `peer_id` as being written by this server until the returned guard drops
    /// (after [`ChangeFeed::observe_write`]): listings leave it alone meanwhile, so the
    /// first listing, which makes no events, cannot swallow the write's event.
    pub fn write_starts(&self, peer_id: &str) -> WriteInFlight<'_> {
        *self
            .inner
            .lock()
            .writing
            .entry(peer_id.to_owned())
            .or_default() += 1;
        WriteInFlight {
            feed: self,
            peer_id: peer_id.to_owned(),
        }
    }

    /// Records what this server wrote: `source` now holds `record` of `peer_id` (`None`:
    /// no copy).
    pub fn observe_write(&self, source: &SourceName, peer_id: &str, record: Option<&PeerRecord>) {
        let observed = match record {
            Some(r) => Observed::Copy(source.clone(), Arc::new(r.clone())),
            None => Observed::NoCopy(source.clone()),
        };
        let now = (self.inner.clock)();
        self.inner.take(|state| {
            state.writes += 1;
            let number = state.writes;
            state
                .written
                .insert((source.clone(), peer_id.to_owned()), number);
            state
                .peers
                .observe(peer_id, observed, now)
                .map(|c| vec![(peer_id.to_owned(), c)])
                .unwrap_or_default()
        });
    }

    /// The events after the reader's cursor that concern it, waiting up to `wait` for a
    /// first one; `on_wait` is called about once a second while it waits (for progress
    /// notifications). Answers at once, empty, once the feed is closed.
    pub async fn read(
        &self,
        ask: &ReadChanges,
        on_wait: impl Fn(Duration),
    ) -> Result<PeerChangesResult, FeedError> {
        self.ready().await;
        let inner = &self.inner;
        let mut position = match &ask.cursor {
            None => inner.lock().history.head(),
            Some(text) => {
                let Some((epoch, position)) = parse_cursor(text) else {
                    return Err(FeedError::NotACursor(text.clone()));
                };
                if epoch != inner.epoch {
                    return Err(FeedError::OtherEpoch(text.clone()));
                }
                position
            }
        };
        let mut heads = inner.head.subscribe();
        let started = tokio::time::Instant::now();
        let deadline = started + ask.wait.min(MAX_WAIT);
        loop {
            heads.borrow_and_update();
            let (events, reached, more) = self.collect(ask, position)?;
            position = reached;
            let now = tokio::time::Instant::now();
            if !events.is_empty() || now >= deadline || inner.closed.is_cancelled() {
                return Ok(PeerChangesResult {
                    cursor: cursor(inner.epoch, position),
                    events,
                    more,
                });
            }
            let tick = (now + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                _ = heads.changed() => {}
                () = tokio::time::sleep_until(tick) => on_wait(started.elapsed()),
                () = inner.closed.cancelled() => {}
            }
        }
    }

    /// The events after `position` that concern the reader, at most `max_events`; the
    /// position reached, and whether events remain after it.
    fn collect(
        &self,
        ask: &ReadChanges,
        position: u64,
    ) -> Result<(Vec<ChangeEvent>, u64, bool), FeedError> {
        let now = (self.inner.clock)();
        let state = self.inner.lock();
        let history = &state.history;
        if position > history.head() {
            let text = ask.cursor.clone().unwrap_or_default();
            return Err(FeedError::NotACursor(text));
        }
        if !history.serves(position) {
            let text = ask
                .cursor
                .clone()
                .unwrap_or_else(|| cursor(self.inner.epoch, position));
            return Err(FeedError::TooOld(text, history.len()));
        }
        let mut events = Vec::new();
        let mut reached = position;
        let mut later = history.after(position);
        for event in later.by_ref() {
            if events.len() >= ask.max_events.max(1) {
                // `more` only when an event after these concerns this reader.
                let more = event.seen_through(&ask.capabilities, now).is_some()
                    || later.any(|e| e.seen_through(&ask.capabilities, now).is_some());
                return Ok((events, reached, more));
            }
            reached = event.seq;
            if let Some(seen) = event.seen_through(&ask.capabilities, now) {
                events.push(seen);
            }
        }
        Ok((events, history.head(), false))
    }

    /// The live peer `peer_id` as last observed, with its lease and holders.
    pub fn peer(&self, peer_id: &str) -> Option<crate::coordinator::PeerView> {
        let now = (self.inner.clock)();
        let (record, holders) = self.inner.lock().peers.get(peer_id)?;
        Some(crate::coordinator::PeerView::new(
            (*record).clone(),
            holders,
            now,
        ))
    }

    /// Every event from now on, as it happens (resource subscriptions). A subscriber that
    /// falls behind by more than 1,024 events gets `Lagged` and should treat every
    /// resource as changed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.subscribers.subscribe()
    }

    /// Ends every wait at once (a shutdown): waiting readers answer, empty.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Peers known live, events kept and their bytes (for status and benchmarks).
    pub fn size(&self) -> (usize, usize, usize) {
        let state = self.inner.lock();
        (
            state.peers.len(),
            state.history.len(),
            state.history.bytes(),
        )
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Applies observations under the lock, appends the events they make, and tells
    /// waiting readers and subscribers.
    fn take(&self, observe: impl FnOnce(&mut State) -> Vec<(String, Change)>) {
        let now = (self.clock)();
        let mut published = Vec::new();
        let head = {
            let mut state = self.lock();
            for (peer_id, change) in observe(&mut state) {
                let bytes = change.after.as_deref().map_or(0, events::record_bytes) + 64;
                let event = Arc::new(Event {
                    seq: state.history.next_seq(),
                    peer_id,
                    seen_at: now,
                    before: change.before,
                    after: change.after,
                    holders: change.holders,
                    gone: change.gone,
                    bytes,
                });
                state.history.push(Arc::clone(&event));
                published.push(event);
            }
            state.history.head()
        };
        if published.is_empty() {
            return;
        }
        // Only an event can bring the earliest lease end forward (a new peer, a shorter
        // lease); renewals move it later, and the expiry task finds that when it wakes.
        self.rescheduled.notify_one();
        self.head.send_replace(head);
        for event in published {
            let _ = self.subscribers.send(event);
        }
    }

    /// Takes a whole listing of `source`, read when this server had made `writes_before`
    /// writes: copies that changed, and copies no longer listed. A peer this server wrote
    /// to since is left alone (the listing may predate the write). Quiet (no events) for
    /// the first listing, the state the feed starts from.
    fn take_listing(
        &self,
        source: &SourceName,
        records: Vec<PeerRecord>,
        writes_before: u64,
        quiet: bool,
    ) {
        let now = (self.clock)();
        let mut changes = Vec::new();
        {
            let mut state = self.lock();
            let State {
                peers,
                written,
                writing,
                ..
            } = &mut *state;
            let newer = |peer_id: &str| {
                writing.contains_key(peer_id)
                    || written
                        .get(&(source.clone(), peer_id.to_owned()))
                        .is_some_and(|number| *number > writes_before)
            };
            let mut listed = HashSet::with_capacity(records.len());
            for record in records {
                listed.insert(record.peer_id.clone());
                if newer(&record.peer_id)
                    || peers
                        .copy_of(&record.peer_id, source)
                        .is_some_and(|held| **held == record)
                {
                    continue;
                }
                let peer_id = record.peer_id.clone();
                let observed = Observed::Copy(source.clone(), Arc::new(record));
                if let Some(change) = peers.observe(&peer_id, observed, now) {
                    changes.push((peer_id, change));
                }
            }
            for peer_id in peers.held_by(source) {
                if listed.contains(&peer_id) || newer(&peer_id) {
                    continue;
                }
                if let Some(change) = peers.observe(&peer_id, Observed::NoCopy(source.clone()), now)
                {
                    changes.push((peer_id, change));
                }
            }
            // Writes this listing has caught up with need no more protecting.
            written.retain(|(s, _), number| s != source || *number > writes_before);
        }
        if quiet {
            self.rescheduled.notify_one();
        } else {
            self.take(|_| changes);
        }
    }
}

/// Reads `source` again whenever it says it changed (or every [`POLL_UNWATCHED`] when
/// it cannot say), and takes the listing; `read_now`: read once at start (its first
/// listing failed).
async fn follow(
    inner: Arc<Inner>,
    source: Arc<dyn Source>,
    mut signal: Option<watch::Receiver<u64>>,
    timeout: Duration,
    read_now: bool,
) {
    let name = source.name();
    let mut retry = read_now;
    loop {
        if !retry {
            match signal.as_mut() {
                Some(changes) => {
                    if changes.changed().await.is_err() {
                        tracing::warn!(source = %name, "the source stopped reporting changes; reading it every {POLL_UNWATCHED:?} instead");
                        signal = None;
                        tokio::time::sleep(POLL_UNWATCHED).await;
                    }
                }
                None => tokio::time::sleep(POLL_UNWATCHED).await,
            }
        }
        let writes_before = inner.lock().writes;
        let read_at = (inner.clock)();
        match list(source.as_ref(), read_at, timeout).await {
            Some(records) => {
                inner.take_listing(&name, records, writes_before, false);
                retry = false;
            }
            None => {
                retry = true;
                tokio::time::sleep(RETRY_FAILED_READ).await;
            }
        }
    }
}

/// Ends leases on time: sleeps until the earliest lease ends (or until a change may have
/// brought it forward) and turns what ended into `expired` events.
async fn expire_on_time(inner: Arc<Inner>) {
    loop {
        let next = inner.lock().peers.next_expiry();
        let now = (inner.clock)();
        let wait = next.map_or(Duration::from_secs(3600), |at| {
            Duration::from_secs_f64((at - now).clamp(0.0, 3600.0)) + Duration::from_millis(5)
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = inner.rescheduled.notified() => continue,
        }
        let now = (inner.clock)();
        inner.take(|state| state.peers.expire(now));
    }
}
