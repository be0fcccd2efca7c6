//! The coordinator: one front over every source. It fans each call out to the chosen
//! sources concurrently (each under its own timeout), merges what they say (dedup by
//! `peer_id`, newest `last_seen` wins, every holding source listed), ranks, and reports a
//! per-source outcome. A failing source never hides what the others found; a call fails
//! as a whole only when no source could serve it.
//!
//! [`Coordinator::new`] and the [`crate::source::Source`] trait are the crate's extension
//! API: a program that embeds the crate can add a source of its own under its own name.
//!
//! - `direct.rs`: the same operations on one source alone, for tests and benchmarks.
//! - `merge.rs`: the rules applied once more to what sources return, and the merge.
//! - `policy.rs`: what a source is told to do with the copy it holds, per operation.
//! - `query.rs`: a discover's checked arguments.
//! - `results.rs`: the wire types every answer is made of (outcomes keyed by source name).
//! - `stats.rs`: per-source counters for `registry_status`.
//! - `background.rs`: warm-up and periodic cleanup, stopped by a drop guard.

mod background;
mod direct;
mod merge;
pub mod policy;
mod query;
mod results;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::join_all;

pub use background::BackgroundTasks;
pub use direct::Direct;
pub use query::DiscoverQuery;
pub use results::*;

use crate::feed::ChangeFeed;
use crate::peer::{Announcement, Heartbeat, InvalidPeer, PeerFilter, PeerId, PeerRecord};
use crate::source::{BUILT_IN, Commitment, Modified, Progress, Source, SourceError, SourceName};
use merge::{merge, recheck};
use stats::StatsBook;

/// Where the coordinator reads the time: Unix seconds. Tests pass their own.
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// Largest `max_peers` a discover may ask for, and its default.
pub const MAX_DISCOVER_PEERS: i64 = 1000;
pub const DEFAULT_DISCOVER_PEERS: i64 = 50;

/// Why a whole call failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Invalid(#[from] InvalidPeer),
    #[error("{0}")]
    BadArgument(String),
    #[error(
        "peer `{0}` is not registered in any source asked ({1}); call register_peer to announce it first"
    )]
    UnknownPeer(String, String),
    #[error("no source could serve this call: {0}")]
    NoSource(String),
}

/// One enabled source and what to say about it in a status report.
pub struct EnabledSource {
    pub source: Arc<dyn Source>,
    /// Where it stores records, for `registry_status`.
    pub description: String,
}

pub struct CoordinatorConfig {
    pub default_ttl_seconds: u64,
    pub source_timeout: Duration,
    pub cleanup_interval: Duration,
}

pub struct Coordinator {
    sources: Vec<EnabledSource>,
    /// Sources that are not on, each with why and how to turn it on. A built-in source
    /// that is neither enabled nor here is reported with its [`BUILT_IN`] text.
    disabled: BTreeMap<SourceName, String>,
    config: CoordinatorConfig,
    clock: Clock,
    stats: StatsBook,
    /// The change feed, made and started on first use ([`Coordinator::change_feed`]).
    feed: std::sync::OnceLock<ChangeFeed>,
}

/// The sources one call goes to, and the outcomes already known (disabled sources).
struct Selection {
    chosen: Vec<Arc<dyn Source>>,
    outcomes: Outcomes,
}

impl Coordinator {
    /// A coordinator over `sources` (in the order given, which is the order `sources`
    /// lists holders in), reporting `disabled` ones with their reason.
    pub fn new(
        sources: Vec<EnabledSource>,
        disabled: BTreeMap<SourceName, String>,
        config: CoordinatorConfig,
        clock: Clock,
    ) -> Self {
        Coordinator {
            sources,
            disabled,
            config,
            clock,
            stats: StatsBook::default(),
            feed: std::sync::OnceLock::new(),
        }
    }

    /// The change feed over every enabled source, started (one listing of each) by the
    /// first caller.
    pub async fn change_feed(&self) -> &ChangeFeed {
        let feed = self.change_feed_now();
        feed.ready().await;
        feed
    }

    /// The change feed, made now if it was not, perhaps still starting: subscribe to it
    /// here before waiting for [`Coordinator::change_feed`], so that no event of the
    /// start-up is missed.
    pub fn change_feed_now(&self) -> &ChangeFeed {
        self.feed.get_or_init(|| {
            let sources = self.sources.iter().map(|s| Arc::clone(&s.source)).collect();
            ChangeFeed::new(sources, Arc::clone(&self.clock), self.config.source_timeout)
        })
    }

    /// Ends the waits of change-feed readers (a shutdown): they answer at once.
    pub fn close_change_feed(&self) {
        if let Some(feed) = self.feed.get() {
            feed.close();
        }
    }

    /// Tells the change feed, once made, that a write of `peer_id` starts; it ends when the
    /// guard drops, after every [`Coordinator::saw`] of the write.
    fn write_starts(&self, peer_id: &str) -> Option<crate::feed::WriteInFlight<'_>> {
        self.feed.get().map(|feed| feed.write_starts(peer_id))
    }

    /// Tells the change feed, once made, what a write of this server left in `source`.
    fn saw(&self, source: &SourceName, peer_id: &str, record: Option<&PeerRecord>) {
        if let Some(feed) = self.feed.get() {
            feed.observe_write(source, peer_id, record);
        }
    }

    pub fn default_ttl_seconds(&self) -> u64 {
        self.config.default_ttl_seconds
    }

    fn now(&self) -> f64 {
        (self.clock)()
    }

    /// Every source this coordinator can name: the enabled ones, the disabled ones and
    /// the built-in ones, in name order.
    fn known_names(&self) -> Vec<SourceName> {
        let mut names: Vec<SourceName> = self
            .sources
            .iter()
            .map(|s| s.source.name())
            .chain(self.disabled.keys().cloned())
            .chain(SourceName::built_in())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn disabled_reason(&self, name: &SourceName) -> String {
        self.disabled.get(name).cloned().unwrap_or_else(|| {
            BUILT_IN
                .iter()
                .find(|b| b.name == name.as_str())
                .map_or("not configured", |b| b.how_to_enable)
                .to_owned()
        })
    }

    /// The enabled sources among those asked (all when `asked` is `None`), and outcomes
    /// already filled for the disabled ones.
    fn select(&self, asked: Option<&[SourceName]>) -> Result<Selection, CallError> {
        let known = self.known_names();
        let asked: Vec<SourceName> = match asked {
            None => known.clone(),
            Some([]) => {
                return Err(CallError::BadArgument(format!(
                    "sources is empty; leave it out to use every source, or name some of: {}",
                    join_names(&known)
                )));
            }
            Some(list) => {
                if let Some(unknown) = list.iter().find(|n| !known.contains(n)) {
                    return Err(CallError::BadArgument(format!(
                        "unknown source `{unknown}`; name some of: {}",
                        join_names(&known)
                    )));
                }
                list.to_vec()
            }
        };
        let mut outcomes = Outcomes::default();
        let chosen = self
            .sources
            .iter()
            .filter(|s| asked.contains(&s.source.name()))
            .map(|s| Arc::clone(&s.source))
            .collect::<Vec<_>>();
        for name in asked {
            if !chosen.iter().any(|s| s.name() == name) {
                let reason = self.disabled_reason(&name);
                outcomes.set(name, SourceOutcome::disabled(&reason));
            }
        }
        if chosen.is_empty() {
            return Err(CallError::NoSource(outcomes.describe()));
        }
        Ok(Selection { chosen, outcomes })
    }

    /// Runs `op` on every source at once, each under the source timeout, and records stats.
    /// At the timeout a source's change is withdrawn unless the source already took it
    /// (see [`Commitment`]); a taken change is waited for, so no answer says "timeout" for
    /// a change that lands. A source that panics answers `error` for its part alone: the
    /// call, and every other source's answer, goes on.
    async fn fan_out<T, F, Fut>(
        &self,
        sources: &[Arc<dyn Source>],
        op: F,
    ) -> Vec<(SourceName, Result<T, SourceError>)>
    where
        F: Fn(Arc<dyn Source>) -> Fut,
        Fut: Future<Output = Result<T, SourceError>>,
    {
        let timeout = self.config.source_timeout;
        join_all(sources.iter().map(|source| {
            let name = source.name();
            let commitment = Arc::new(Commitment::default());
            let call = Commitment::scope(Arc::clone(&commitment), op(Arc::clone(source)));
            let call = AssertUnwindSafe(call).catch_unwind().map(|answer| {
                answer.unwrap_or_else(|panic| Err(SourceError::Internal(panic_text(&*panic))))
            });
            async move {
                let started = Instant::now();
                tokio::pin!(call);
                let result = tokio::select! {
                    result = &mut call => result,
                    () = tokio::time::sleep(timeout) => {
                        if commitment.withdraw() {
                            Err(match commitment.waiting_on() {
                                Some(waiting_on) => SourceError::Withdrawn { after: timeout, waiting_on },
                                None => SourceError::Timeout(timeout),
                            })
                        } else {
                            // The source took the change before the deadline: it lands,
                            // so the caller waits for it rather than report a failure.
                            call.await
                        }
                    }
                };
                self.stats
                    .record(&name, started.elapsed(), result.as_ref().err());
                (name, result)
            }
        }))
        .await
    }

    /// Attaches what each source asked has to report (a corrupt file kept aside...).
    fn attach_notices(&self, sources: &[Arc<dyn Source>], outcomes: &mut Outcomes) {
        for source in sources {
            let notices = source.take_notices();
            if notices.is_empty() {
                continue;
            }
            if let Some(outcome) = outcomes.get_mut(&source.name()) {
                outcome.add_detail(notices.join("; "));
            }
        }
    }

    /// Registers (or refreshes) a peer in every chosen source.
    pub async fn register(
        &self,
        announcement: Announcement,
        asked: Option<&[SourceName]>,
    ) -> Result<RegisterResult, CallError> {
        let Selection {
            chosen: sources,
            mut outcomes,
        } = self.select(asked)?;
        let now = self.now();
        let record = announcement.into_record(now);
        let peer_id = record.peer_id.clone();
        let _in_flight = self.write_starts(&peer_id);
        let results = self
            .fan_out(&sources, |s| {
                let decide = policy::register(record.clone(), now);
                let peer_id = peer_id.clone();
                async move { s.modify(peer_id.as_str(), decide).await }
            })
            .await;
        let mut stored = Vec::new();
        let mut created = true;
        for (name, result) in results {
            match written(result) {
                Ok(Written {
                    record,
                    created: new,
                    location,
                }) => {
                    let mut outcome = SourceOutcome::ok(1);
                    outcome.location = location;
                    outcomes.set(name.clone(), outcome);
                    created &= new;
                    self.saw(&name, &peer_id, Some(&record));
                    stored.push((name, record));
                }
                Err(e) => outcomes.set(name, SourceOutcome::failed(&e)),
            }
        }
        self.attach_notices(&sources, &mut outcomes);
        if stored.is_empty() {
            return Err(CallError::NoSource(outcomes.describe()));
        }
        let holders: Vec<SourceName> = stored.iter().map(|(n, _)| n.clone()).collect();
        // Sources may disagree on first_seen (one saw the peer earlier): report the earliest.
        let record = stored
            .into_iter()
            .map(|(_, r)| r)
            .min_by(|a, b| a.first_seen.total_cmp(&b.first_seen))
            .unwrap_or(record);
        Ok(RegisterResult {
            peer: PeerView::new(record, holders, now),
            created,
            outcomes,
        })
    }

    /// Finds peers by capability across the chosen sources.
    pub async fn discover(
        &self,
        query: &DiscoverQuery,
        asked: Option<&[SourceName]>,
        progress: &Progress,
    ) -> Result<DiscoverResult, CallError> {
        let max_peers = query.max_peers;
        let now = self.now();
        let mut filter = PeerFilter::new(&query.capabilities, query.include_expired, now)?;
        let Selection {
            chosen: sources,
            mut outcomes,
        } = self.select(asked)?;
        if sources.len() == 1 {
            // Nothing to merge with: the source itself keeps only the best max_peers.
            filter.limit = Some(max_peers);
        }
        let results = self
            .fan_out(&sources, |s| {
                let filter = filter.clone();
                let progress = progress.clone();
                async move { s.scan(&filter, &progress).await }
            })
            .await;
        let mut listings = Vec::new();
        for (name, result) in results {
            match result {
                Ok(mut listing) => {
                    recheck(&mut listing, &filter);
                    let mut outcome = SourceOutcome::ok(listing.matched);
                    if listing.rejected > 0 {
                        outcome.rejected = Some(listing.rejected as u64);
                    }
                    if let Some(detail) = listing.detail.take() {
                        outcome.add_detail(detail);
                    }
                    outcomes.set(name.clone(), outcome);
                    listings.push((name, listing.peers, listing.matched));
                }
                Err(e) => outcomes.set(name, SourceOutcome::failed(&e)),
            }
        }
        self.attach_notices(&sources, &mut outcomes);
        if listings.is_empty() {
            return Err(CallError::NoSource(outcomes.describe()));
        }
        let single_source_matched = match listings.as_slice() {
            [(_, _, matched)] => Some(*matched as u64),
            _ => None,
        };
        let mut ranked = merge(
            listings
                .into_iter()
                .map(|(name, peers, _)| (name, peers))
                .collect(),
        );
        let total_matched = single_source_matched.unwrap_or(ranked.len() as u64);
        ranked.truncate(max_peers);
        Ok(DiscoverResult {
            peers: ranked
                .into_iter()
                .map(|(record, holders)| PeerView::new(record, holders, now))
                .collect(),
            total_matched,
            outcomes,
        })
    }

    /// Heartbeats a peer: `last_seen` refreshed, the given fields replaced, in every chosen
    /// source that holds it. A source that does not hold it gets the refreshed copy.
    pub async fn update(
        &self,
        peer_id: &PeerId,
        heartbeat: Heartbeat,
        asked: Option<&[SourceName]>,
    ) -> Result<UpdateResult, CallError> {
        let Selection {
            chosen: sources,
            mut outcomes,
        } = self.select(asked)?;
        let now = self.now();
        let _in_flight = self.write_starts(peer_id.as_str());
        let results = self
            .fan_out(&sources, |s| {
                let decide = policy::heartbeat(heartbeat.clone(), now, s.abilities());
                let peer_id = peer_id.to_owned();
                async move { s.modify(peer_id.as_str(), decide).await }
            })
            .await;
        let mut held = Vec::new();
        let mut lacking = Vec::new();
        let mut failures = 0;
        for (name, result) in results {
            // A copy stamped ahead of the clock was kept, not refreshed: it counts as none.
            let result = result.map(|mut m| {
                m.after = m.after.filter(|r| !r.is_ahead_of_clock(now));
                m
            });
            match result {
                Ok(Modified {
                    after: Some(after),
                    written,
                    location,
                    ..
                }) => {
                    let mut outcome = SourceOutcome::ok(1);
                    outcome.location = location;
                    outcome.written = Some(written);
                    if !written {
                        outcome.add_detail(
                            "the held copy is still fresh; the heartbeat was not written".into(),
                        );
                    }
                    outcomes.set(name.clone(), outcome);
                    self.saw(&name, peer_id.as_str(), Some(&after));
                    held.push((name, after));
                }
                Ok(Modified { after: None, .. }) => lacking.push(name),
                Err(e) => {
                    failures += 1;
                    outcomes.set(name, SourceOutcome::failed(&e));
                }
            }
        }
        let Some(newest) = held
            .iter()
            .map(|(_, r)| r)
            .reduce(crate::peer::newest)
            .cloned()
        else {
            self.attach_notices(&sources, &mut outcomes);
            if failures > 0 {
                for name in lacking {
                    outcomes.set(name, SourceOutcome::ok(0));
                }
                return Err(CallError::NoSource(outcomes.describe()));
            }
            let asked_names: Vec<SourceName> = sources.iter().map(|s| s.name()).collect();
            return Err(CallError::UnknownPeer(
                peer_id.to_string(),
                join_names(&asked_names),
            ));
        };
        // Sources that lost their copy (expired and cleaned up, or never had it) get the
        // refreshed one, so that every source asked agrees after a heartbeat. The newest
        // held copy may be one a costly source kept unwritten: refresh it here.
        let refreshed = heartbeat.apply(&newest, now);
        let lacking_sources: Vec<Arc<dyn Source>> = sources
            .iter()
            .filter(|s| lacking.contains(&s.name()))
            .cloned()
            .collect();
        let restored = self
            .fan_out(&lacking_sources, |s| {
                let decide = policy::register(refreshed.clone(), now);
                let peer_id = peer_id.to_owned();
                async move { s.modify(peer_id.as_str(), decide).await }
            })
            .await;
        for (name, result) in restored {
            match written(result) {
                Ok(Written {
                    record, location, ..
                }) => {
                    let mut outcome = SourceOutcome::ok(1);
                    outcome.location = location;
                    outcome.add_detail("this source did not hold the peer; it was registered again from another source".into());
                    outcomes.set(name.clone(), outcome);
                    self.saw(&name, peer_id.as_str(), Some(&record));
                    held.push((name, record));
                }
                Err(e) => outcomes.set(name, SourceOutcome::failed(&e)),
            }
        }
        self.attach_notices(&sources, &mut outcomes);
        // The newest copy now held, restored ones included.
        let answer = held
            .iter()
            .map(|(_, r)| r)
            .reduce(crate::peer::newest)
            .cloned()
            .unwrap_or(newest);
        let holders = in_source_order(&sources, held.into_iter().map(|(n, _)| n));
        Ok(UpdateResult {
            peer: PeerView::new(answer, holders, now),
            outcomes,
        })
    }

    /// Removes a peer from every chosen source.
    pub async fn unregister(
        &self,
        peer_id: &PeerId,
        asked: Option<&[SourceName]>,
    ) -> Result<UnregisterResult, CallError> {
        let Selection {
            chosen: sources,
            mut outcomes,
        } = self.select(asked)?;
        let _in_flight = self.write_starts(peer_id.as_str());
        let results = self
            .fan_out(&sources, |s| {
                let peer_id = peer_id.to_owned();
                async move { s.modify(peer_id.as_str(), policy::unregister()).await }
            })
            .await;
        let mut served = false;
        let mut removed = false;
        for (name, result) in results {
            match result {
                Ok(modified) => {
                    let was_held = modified.written && modified.after.is_none();
                    if was_held {
                        self.saw(&name, peer_id.as_str(), None);
                    }
                    served = true;
                    removed |= was_held;
                    outcomes.set(name, SourceOutcome::ok(usize::from(was_held)));
                }
                Err(e) => outcomes.set(name, SourceOutcome::failed(&e)),
            }
        }
        self.attach_notices(&sources, &mut outcomes);
        if !served {
            return Err(CallError::NoSource(outcomes.describe()));
        }
        Ok(UnregisterResult {
            peer_id: peer_id.to_string(),
            removed,
            outcomes,
        })
    }

    /// Removes expired records from every chosen source (or reports them with `dry_run`).
    pub async fn cleanup(
        &self,
        dry_run: bool,
        asked: Option<&[SourceName]>,
        progress: &Progress,
    ) -> Result<CleanupResult, CallError> {
        let Selection {
            chosen: sources,
            mut outcomes,
        } = self.select(asked)?;
        let now = self.now();
        let results = self
            .fan_out(&sources, |s| {
                let progress = progress.clone();
                async move { clean_up(s.as_ref(), now, dry_run, &progress).await }
            })
            .await;
        let cache_evicted: usize = if dry_run {
            0
        } else {
            sources.iter().map(|s| s.evict_stale_cache(now)).sum()
        };
        let mut removed = BTreeMap::new();
        let mut ids = Vec::new();
        let mut served = false;
        for (name, result) in results {
            match result {
                Ok(gone) => {
                    if !dry_run {
                        for peer_id in &gone {
                            self.saw(&name, peer_id, None);
                        }
                    }
                    served = true;
                    outcomes.set(name.clone(), SourceOutcome::ok(gone.len()));
                    removed.insert(name.as_str().to_owned(), gone.len() as u64);
                    ids.extend(gone);
                }
                Err(e) => outcomes.set(name, SourceOutcome::failed(&e)),
            }
        }
        self.attach_notices(&sources, &mut outcomes);
        if !served {
            return Err(CallError::NoSource(outcomes.describe()));
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(CleanupResult {
            dry_run,
            removed,
            cache_evicted: cache_evicted as u64,
            removed_peer_ids: ids,
            outcomes,
        })
    }

    /// Every source, enabled or not, with its counters.
    pub fn status(&self) -> StatusResult {
        let sources = self
            .known_names()
            .into_iter()
            .map(|name| {
                let enabled = self.sources.iter().find(|s| s.source.name() == name);
                SourceStatusReport {
                    enabled: enabled.is_some(),
                    detail: match enabled {
                        Some(s) => s.description.clone(),
                        None => self.disabled_reason(&name),
                    },
                    stats: self.stats.get(&name),
                    source: name,
                }
            })
            .collect();
        StatusResult {
            sources,
            default_ttl_seconds: self.config.default_ttl_seconds,
            cleanup_interval_seconds: self.config.cleanup_interval.as_secs(),
            source_timeout_seconds: self.config.source_timeout.as_secs_f64(),
        }
    }
}

/// Cleanup of one source at `now`: the source removes what [`crate::peer::cleanup_removes`]
/// says, in one step; a dry run scans for the same records instead. A source whose
/// records expire by themselves has nothing to remove.
async fn clean_up<S: Source + ?Sized>(
    source: &S,
    now: f64,
    dry_run: bool,
    progress: &Progress,
) -> Result<Vec<String>, SourceError> {
    if source.abilities().expires_by_itself {
        return Ok(Vec::new());
    }
    if !dry_run {
        return source.remove_stale(now, progress).await;
    }
    let listing = source.scan(&PeerFilter::stale(now), progress).await?;
    Ok(listing
        .peers
        .into_iter()
        .filter(|r| r.is_removed_by_cleanup(now))
        .map(|r| r.peer_id)
        .collect())
}

/// What a source holds after a register.
struct Written {
    record: PeerRecord,
    /// It held no copy before.
    created: bool,
    location: Option<String>,
}

/// A register's answer from one source: the copy it now holds. A source that answers a
/// register by holding nothing has broken the trait's contract.
fn written(result: Result<Modified, SourceError>) -> Result<Written, SourceError> {
    let modified = result?;
    let record = modified.after.ok_or_else(|| {
        SourceError::Internal("the source kept nothing for a register (a bug in the source)".into())
    })?;
    Ok(Written {
        record,
        created: modified.before.is_none(),
        location: modified.location,
    })
}

fn join_names(names: &[SourceName]) -> String {
    names
        .iter()
        .map(SourceName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `names` in the order the coordinator holds `sources`.
fn in_source_order(
    sources: &[Arc<dyn Source>],
    names: impl Iterator<Item = SourceName>,
) -> Vec<SourceName> {
    let names: Vec<SourceName> = names.collect();
    sources
        .iter()
        .map(|s| s.name())
        .filter(|n| names.contains(n))
        .collect()
}

/// What a panic said, for the `error` outcome of the source that panicked.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("the source failed unexpectedly (a bug; please report it): {said}")
}
