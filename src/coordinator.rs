//! The coordinator: one front over every source. It fans each call out to the chosen
//! sources concurrently (each under its own timeout), merges what they say (dedup by
//! `peer_id`, newest `last_seen` wins, every holding source listed), ranks, and reports a
//! per-source outcome. A failing source never hides what the others found; a call fails
//! as a whole only when no source could serve it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use schemars::JsonSchema;
use serde::Serialize;

use crate::peer::{Announcement, Heartbeat, InvalidPeer, JsonObject, PeerFilter, PeerRecord};
use crate::source::{Commitment, Progress, Source, SourceError, SourceName};

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
    /// The GitHub issue that holds the peer, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue_number: Option<u64>,
    /// With `rate_limited`: seconds to wait before calling this source again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// For a heartbeat: false when the source kept its copy because it was still fresh
    /// (the GitHub source writes only when the lease is more than half used or a field
    /// changed), so its `last_seen` is older than the answer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<bool>,
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

impl SourceOutcome {
    fn with_status(status: SourceStatus) -> Self {
        SourceOutcome {
            status,
            detail: None,
            count: None,
            rejected: None,
            issue_number: None,
            retry_after_seconds: None,
            written: None,
        }
    }

    fn ok(count: usize) -> Self {
        SourceOutcome {
            count: Some(count as u64),
            ..Self::with_status(SourceStatus::Ok)
        }
    }

    fn disabled(reason: &str) -> Self {
        SourceOutcome {
            detail: Some(reason.to_owned()),
            ..Self::with_status(SourceStatus::Disabled)
        }
    }

    fn failed(error: &SourceError) -> Self {
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

    fn add_detail(&mut self, text: String) {
        self.detail = Some(match self.detail.take() {
            Some(d) => format!("{d}; {text}"),
            None => text,
        });
    }
}

/// The outcome of every source asked, keyed by source name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Outcomes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_file: Option<SourceOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github: Option<SourceOutcome>,
}

impl Outcomes {
    fn slot(&mut self, source: SourceName) -> &mut Option<SourceOutcome> {
        match source {
            SourceName::LocalFile => &mut self.local_file,
            SourceName::Github => &mut self.github,
        }
    }

    pub fn get(&self, source: SourceName) -> Option<&SourceOutcome> {
        match source {
            SourceName::LocalFile => self.local_file.as_ref(),
            SourceName::Github => self.github.as_ref(),
        }
    }

    fn set(&mut self, source: SourceName, outcome: SourceOutcome) {
        *self.slot(source) = Some(outcome);
    }

    fn iter(&self) -> impl Iterator<Item = (SourceName, &SourceOutcome)> {
        SourceName::ALL
            .into_iter()
            .filter_map(|s| self.get(s).map(|o| (s, o)))
    }

    /// One line per failed source, for the message of a call that failed as a whole.
    fn describe(&self) -> String {
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
    pub sources: Vec<SourceName>,
}

impl PeerView {
    fn new(record: PeerRecord, sources: Vec<SourceName>, now: f64) -> Self {
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
    /// How many expired records each source removed (or would remove), and how many
    /// expired entries left the in-memory listing cache (`cache`).
    pub removed: BTreeMap<String, u64>,
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
    total_latency: Duration,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SourceStatusReport {
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

/// One enabled source and what to say about it in a status report.
pub struct EnabledSource {
    pub registry: Arc<dyn Source>,
    pub description: String,
}

pub struct CoordinatorConfig {
    pub default_ttl_seconds: u64,
    pub source_timeout: Duration,
    pub cleanup_interval: Duration,
}

pub struct Coordinator {
    sources: Vec<EnabledSource>,
    disabled: BTreeMap<SourceName, String>,
    config: CoordinatorConfig,
    clock: Clock,
    stats: Mutex<BTreeMap<SourceName, SourceStats>>,
}

impl Coordinator {
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
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn default_ttl_seconds(&self) -> u64 {
        self.config.default_ttl_seconds
    }

    fn now(&self) -> f64 {
        (self.clock)()
    }

    /// The enabled sources among those asked, and outcomes already filled for the disabled ones.
    fn select(
        &self,
        asked: Option<&[SourceName]>,
    ) -> Result<(Vec<Arc<dyn Source>>, Outcomes), CallError> {
        let asked: Vec<SourceName> = match asked {
            None => SourceName::ALL.to_vec(),
            Some([]) => {
                return Err(CallError::BadArgument(
                    "sources is empty; leave it out to use every enabled source, or name some of: local_file, github".into(),
                ));
            }
            Some(list) => list.to_vec(),
        };
        let mut outcomes = Outcomes::default();
        let mut chosen = Vec::new();
        for name in SourceName::ALL.into_iter().filter(|n| asked.contains(n)) {
            if let Some(source) = self.sources.iter().find(|s| s.registry.name() == name) {
                chosen.push(Arc::clone(&source.registry));
            } else {
                let reason = self
                    .disabled
                    .get(&name)
                    .map_or("not configured", String::as_str);
                outcomes.set(name, SourceOutcome::disabled(reason));
            }
        }
        if chosen.is_empty() {
            return Err(CallError::NoSource(outcomes.describe()));
        }
        Ok((chosen, outcomes))
    }

    /// Runs `op` on every source at once, each under the source timeout, and records stats.
    /// At the timeout a source's change is withdrawn unless the source already took it
    /// (see [`Commitment`]); a taken change is waited for, so no answer says "timeout" for
    /// a change that lands.
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
                self.record_stats(name, started.elapsed(), result.as_ref().err());
                (name, result)
            }
        }))
        .await
    }

    fn record_stats(&self, source: SourceName, took: Duration, error: Option<&SourceError>) {
        if let Some(e) = error {
            tracing::warn!(%source, error = %e, "source call failed");
        }
        let Ok(mut stats) = self.stats.lock() else {
            return;
        };
        let entry = stats.entry(source).or_default();
        entry.calls += 1;
        entry.total_latency += took;
        entry.mean_latency_ms = entry.total_latency.as_secs_f64() * 1000.0 / entry.calls as f64;
        if let Some(e) = error {
            entry.failures += 1;
            entry.last_error = Some(e.to_string());
        }
    }

    /// Attaches what each source asked has to report (a corrupt file kept aside...).
    fn attach_notices(&self, sources: &[Arc<dyn Source>], outcomes: &mut Outcomes) {
        for source in sources {
            let notices = source.take_notices();
            if notices.is_empty() {
                continue;
            }
            if let Some(outcome) = outcomes.slot(source.name()).as_mut() {
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
        let (sources, mut outcomes) = self.select(asked)?;
        let now = self.now();
        let record = announcement.into_record(now);
        let results = self
            .fan_out(&sources, |s| {
                let record = record.clone();
                async move { s.register(record).await }
            })
            .await;
        let mut stored = Vec::new();
        for (name, result) in results {
            match result {
                Ok(s) => {
                    let mut outcome = SourceOutcome::ok(1);
                    outcome.issue_number = s.issue_number;
                    outcomes.set(name, outcome);
                    stored.push((name, s));
                }
                Err(e) => outcomes.set(name, SourceOutcome::failed(&e)),
            }
        }
        self.attach_notices(&sources, &mut outcomes);
        if stored.is_empty() {
            return Err(CallError::NoSource(outcomes.describe()));
        }
        let created = stored.iter().all(|(_, s)| s.created);
        let mut holders: Vec<SourceName> = stored.iter().map(|(n, _)| *n).collect();
        holders.sort_unstable();
        // Sources may disagree on first_seen (one saw the peer earlier): report the earliest.
        let record = stored
            .into_iter()
            .map(|(_, s)| s.record)
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
        capability_filter: &[String],
        max_peers: Option<i64>,
        include_expired: bool,
        asked: Option<&[SourceName]>,
        progress: &Progress,
    ) -> Result<DiscoverResult, CallError> {
        let max_peers = max_peers.unwrap_or(DEFAULT_DISCOVER_PEERS);
        if !(1..=MAX_DISCOVER_PEERS).contains(&max_peers) {
            return Err(CallError::BadArgument(format!(
                "max_peers must be within 1..={MAX_DISCOVER_PEERS} (got {max_peers})"
            )));
        }
        let now = self.now();
        let mut filter = PeerFilter::new(capability_filter, include_expired, now)?;
        let (sources, mut outcomes) = self.select(asked)?;
        if sources.len() == 1 {
            // Nothing to merge with: the source itself keeps only the best max_peers.
            filter.limit = Some(max_peers as usize);
        }
        let results = self
            .fan_out(&sources, |s| {
                let filter = filter.clone();
                let progress = progress.clone();
                async move { s.list(&filter, &progress).await }
            })
            .await;
        let mut listings = Vec::new();
        for (name, result) in results {
            match result {
                Ok(listing) => {
                    let mut outcome = SourceOutcome::ok(listing.matched);
                    if listing.rejected > 0 {
                        outcome.rejected = Some(listing.rejected as u64);
                    }
                    outcomes.set(name, outcome);
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
        ranked.truncate(max_peers as usize);
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
        peer_id: &str,
        heartbeat: Heartbeat,
        asked: Option<&[SourceName]>,
    ) -> Result<UpdateResult, CallError> {
        let (sources, mut outcomes) = self.select(asked)?;
        let now = self.now();
        let results = self
            .fan_out(&sources, |s| {
                let heartbeat = heartbeat.clone();
                let peer_id = peer_id.to_owned();
                async move { s.update(&peer_id, &heartbeat, now).await }
            })
            .await;
        let mut held = Vec::new();
        let mut lacking = Vec::new();
        let mut failures = 0;
        for (name, result) in results {
            match result {
                Ok(Some(stored)) => {
                    let mut outcome = SourceOutcome::ok(1);
                    outcome.issue_number = stored.issue_number;
                    outcome.written = Some(stored.written);
                    if !stored.written {
                        outcome.add_detail(
                            "the held copy is still fresh; the heartbeat was not written".into(),
                        );
                    }
                    outcomes.set(name, outcome);
                    held.push((name, stored.record));
                }
                Ok(None) => lacking.push(name),
                Err(e) => {
                    failures += 1;
                    outcomes.set(name, SourceOutcome::failed(&e));
                }
            }
        }
        let Some(newest) = held
            .iter()
            .map(|(_, r)| r)
            .max_by(|a, b| a.last_seen.total_cmp(&b.last_seen))
            .cloned()
        else {
            self.attach_notices(&sources, &mut outcomes);
            if failures > 0 {
                for name in lacking {
                    outcomes.set(name, SourceOutcome::ok(0));
                }
                return Err(CallError::NoSource(outcomes.describe()));
            }
            let asked_names = sources
                .iter()
                .map(|s| s.name().as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CallError::UnknownPeer(peer_id.to_owned(), asked_names));
        };
        // Sources that lost their copy (expired and cleaned up, or never had it) get the
        // refreshed one, so that every source asked agrees after a heartbeat.
        let lacking_sources: Vec<Arc<dyn Source>> = sources
            .iter()
            .filter(|s| lacking.contains(&s.name()))
            .cloned()
            .collect();
        let restored = self
            .fan_out(&lacking_sources, |s| {
                let record = newest.clone();
                async move { s.register(record).await }
            })
            .await;
        for (name, result) in restored {
            match result {
                Ok(stored) => {
                    let mut outcome = SourceOutcome::ok(1);
                    outcome.issue_number = stored.issue_number;
                    outcome.add_detail("this source did not hold the peer; it was registered again from another source".into());
                    outcomes.set(name, outcome);
                    held.push((name, stored.record));
                }
                Err(e) => outcomes.set(name, SourceOutcome::failed(&e)),
            }
        }
        self.attach_notices(&sources, &mut outcomes);
        let mut holders: Vec<SourceName> = held.iter().map(|(n, _)| *n).collect();
        holders.sort_unstable();
        Ok(UpdateResult {
            peer: PeerView::new(newest, holders, now),
            outcomes,
        })
    }

    /// Removes a peer from every chosen source.
    pub async fn unregister(
        &self,
        peer_id: &str,
        asked: Option<&[SourceName]>,
    ) -> Result<UnregisterResult, CallError> {
        crate::peer::validate_peer_id(peer_id)?;
        let (sources, mut outcomes) = self.select(asked)?;
        let results = self
            .fan_out(&sources, |s| {
                let peer_id = peer_id.to_owned();
                async move { s.unregister(&peer_id).await }
            })
            .await;
        let mut served = false;
        let mut removed = false;
        for (name, result) in results {
            match result {
                Ok(was_held) => {
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
            peer_id: peer_id.to_owned(),
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
        let (sources, mut outcomes) = self.select(asked)?;
        let now = self.now();
        let results = self
            .fan_out(&sources, |s| {
                let progress = progress.clone();
                async move { s.cleanup(now, dry_run, &progress).await }
            })
            .await;
        let mut removed = BTreeMap::new();
        let evicted: usize = if dry_run {
            0
        } else {
            sources.iter().map(|s| s.evict_expired_cache(now)).sum()
        };
        removed.insert("cache".to_owned(), evicted as u64);
        let mut ids = Vec::new();
        let mut served = false;
        for (name, result) in results {
            match result {
                Ok(gone) => {
                    served = true;
                    outcomes.set(name, SourceOutcome::ok(gone.len()));
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
            removed_peer_ids: ids,
            outcomes,
        })
    }

    /// Every source, enabled or not, with its counters.
    pub fn status(&self) -> StatusResult {
        let stats = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        let sources = SourceName::ALL
            .into_iter()
            .map(|name| {
                let enabled = self.sources.iter().find(|s| s.registry.name() == name);
                SourceStatusReport {
                    source: name,
                    enabled: enabled.is_some(),
                    detail: match enabled {
                        Some(s) => s.description.clone(),
                        None => self
                            .disabled
                            .get(&name)
                            .cloned()
                            .unwrap_or_else(|| "not configured".into()),
                    },
                    stats: stats.get(&name).cloned().unwrap_or_default(),
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

    /// Lets every source read ahead in the background, so the first call is fast.
    pub fn spawn_warm_up(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            join_all(this.sources.iter().map(|s| s.registry.warm_up())).await;
        });
    }

    /// Runs cleanup on every source every `cleanup_interval` in the background, without
    /// blocking calls. Returns `None` when the interval is 0 (off).
    pub fn spawn_background_cleanup(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.config.cleanup_interval;
        if every.is_zero() {
            return None;
        }
        let this = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match this.cleanup(false, None, &Progress::default()).await {
                    Ok(result) if !result.removed_peer_ids.is_empty() => tracing::info!(
                        removed = result.removed_peer_ids.len(),
                        "background cleanup removed expired peers"
                    ),
                    Ok(_) => tracing::debug!("background cleanup found nothing expired"),
                    Err(e) => tracing::warn!(error = %e, "background cleanup failed"),
                }
            }
        }))
    }
}

/// Dedups by `peer_id` (the copy with the newest `last_seen` wins, every holding source is
/// listed) and ranks newest first, ties by `peer_id`.
fn merge(listings: Vec<(SourceName, Vec<PeerRecord>)>) -> Vec<(PeerRecord, Vec<SourceName>)> {
    let mut by_id: HashMap<String, (PeerRecord, Vec<SourceName>)> = HashMap::new();
    for (source, records) in listings {
        for record in records {
            match by_id.get_mut(&record.peer_id) {
                Some((kept, holders)) => {
                    holders.push(source);
                    if record.last_seen > kept.last_seen {
                        *kept = record;
                    }
                }
                None => {
                    by_id.insert(record.peer_id.clone(), (record, vec![source]));
                }
            }
        }
    }
    let mut ranked: Vec<_> = by_id.into_values().collect();
    ranked.sort_by(|(a, _), (b, _)| crate::peer::rank_order(a, b));
    for (_, holders) in &mut ranked {
        holders.sort_unstable();
    }
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::DEFAULT_TTL_SECONDS;
    use crate::source::{Listing, Stored};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn rec(id: &str, last_seen: f64, source: &str) -> PeerRecord {
        let mut r = Announcement::new(
            id.into(),
            "/ip4/127.0.0.1/tcp/1",
            &[],
            None,
            None,
            DEFAULT_TTL_SECONDS,
        )
        .expect("valid")
        .into_record(last_seen);
        r.source = source.into();
        r
    }

    /// The newest copy wins, every holder is listed, ranking is newest first then by id.
    #[test]
    fn merge_dedups_and_ranks() {
        let merged = merge(vec![
            (
                SourceName::LocalFile,
                vec![rec("b", 10.0, "local_file"), rec("a", 5.0, "local_file")],
            ),
            (
                SourceName::Github,
                vec![rec("a", 20.0, "github"), rec("c", 10.0, "github")],
            ),
        ]);
        let order: Vec<(&str, f64, &str)> = merged
            .iter()
            .map(|(r, _)| (r.peer_id.as_str(), r.last_seen, r.source.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("a", 20.0, "github"),
                ("b", 10.0, "local_file"),
                ("c", 10.0, "github")
            ]
        );
        assert_eq!(merged[0].1, vec![SourceName::LocalFile, SourceName::Github]);
    }

    /// A source that is always slow, to prove the timeout and the degraded answer.
    struct Stalled;

    #[async_trait]
    impl Source for Stalled {
        fn name(&self) -> SourceName {
            SourceName::Github
        }
        async fn register(&self, _: PeerRecord) -> Result<Stored, SourceError> {
            futures::future::pending().await
        }
        async fn update(
            &self,
            _: &str,
            _: &Heartbeat,
            _: f64,
        ) -> Result<Option<Stored>, SourceError> {
            futures::future::pending().await
        }
        async fn list(&self, _: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
            futures::future::pending().await
        }
        async fn unregister(&self, _: &str) -> Result<bool, SourceError> {
            futures::future::pending().await
        }
        async fn cleanup(&self, _: f64, _: bool, _: &Progress) -> Result<Vec<String>, SourceError> {
            futures::future::pending().await
        }
    }

    fn coordinator(sources: Vec<Arc<dyn Source>>, clock: Clock) -> Coordinator {
        Coordinator::new(
            sources
                .into_iter()
                .map(|registry| EnabledSource {
                    registry,
                    description: String::new(),
                })
                .collect(),
            BTreeMap::new(),
            CoordinatorConfig {
                default_ttl_seconds: DEFAULT_TTL_SECONDS,
                source_timeout: Duration::from_millis(200),
                cleanup_interval: Duration::ZERO,
            },
            clock,
        )
    }

    fn announcement(id: &str, ttl: i64) -> Announcement {
        Announcement::new(
            id.into(),
            "/ip4/127.0.0.1/tcp/1",
            &["compute".into()],
            Some(ttl),
            None,
            DEFAULT_TTL_SECONDS,
        )
        .expect("valid")
    }

    /// A stalled source times out; the local results still come back with its outcome.
    #[tokio::test]
    async fn stalled_source_degrades_to_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = crate::source::LocalFileSource::open(dir.path().join("r.json")).expect("open");
        let c = coordinator(vec![Arc::new(local), Arc::new(Stalled)], Arc::new(|| 100.0));
        let reg = c
            .register(announcement("p", 60), None)
            .await
            .expect("register");
        assert_eq!(
            reg.outcomes.github.as_ref().map(|o| o.status),
            Some(SourceStatus::Timeout)
        );
        assert_eq!(reg.peer.sources, vec![SourceName::LocalFile]);
        let found = c
            .discover(&[], None, false, None, &Progress::default())
            .await
            .expect("discover");
        assert_eq!(found.peers.len(), 1);
        assert_eq!(
            found.outcomes.local_file.as_ref().map(|o| o.status),
            Some(SourceStatus::Ok)
        );
        let only_stalled = c
            .discover(
                &[],
                None,
                false,
                Some(&[SourceName::Github]),
                &Progress::default(),
            )
            .await;
        assert!(matches!(only_stalled, Err(CallError::NoSource(_))));
    }

    /// Expiry follows the injected clock: a peer leaves discover at last_seen + ttl.
    #[tokio::test]
    async fn expiry_follows_the_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = crate::source::LocalFileSource::open(dir.path().join("r.json")).expect("open");
        let now = Arc::new(AtomicU64::new(1000));
        let clock_now = Arc::clone(&now);
        let c = coordinator(
            vec![Arc::new(local)],
            Arc::new(move || clock_now.load(Ordering::SeqCst) as f64),
        );
        c.register(announcement("short", 10), None)
            .await
            .expect("register");
        c.register(announcement("long", 100), None)
            .await
            .expect("register");
        now.store(1010, Ordering::SeqCst);
        let found = c
            .discover(&["compute".into()], None, false, None, &Progress::default())
            .await
            .expect("discover");
        assert_eq!(
            found
                .peers
                .iter()
                .map(|p| p.peer_id.as_str())
                .collect::<Vec<_>>(),
            ["long"]
        );
        let all = c
            .discover(&[], None, true, None, &Progress::default())
            .await
            .expect("discover");
        assert_eq!(all.total_matched, 2);
        let cleaned = c
            .cleanup(false, None, &Progress::default())
            .await
            .expect("cleanup");
        assert_eq!(cleaned.removed_peer_ids, vec!["short"]);
        assert_eq!(cleaned.removed.get("local_file"), Some(&1));
    }

    /// max_peers cuts after ranking, so the newest peers are never missed.
    #[tokio::test]
    async fn max_peers_cuts_after_ranking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = crate::source::LocalFileSource::open(dir.path().join("r.json")).expect("open");
        let now = Arc::new(AtomicU64::new(1));
        let clock_now = Arc::clone(&now);
        let c = coordinator(
            vec![Arc::new(local)],
            Arc::new(move || clock_now.load(Ordering::SeqCst) as f64),
        );
        for (i, id) in ["z", "y", "x", "w"].iter().enumerate() {
            now.store(10 + i as u64, Ordering::SeqCst);
            c.register(announcement(id, 1000), None)
                .await
                .expect("register");
        }
        let found = c
            .discover(&[], Some(2), false, None, &Progress::default())
            .await
            .expect("discover");
        assert_eq!(
            found
                .peers
                .iter()
                .map(|p| p.peer_id.as_str())
                .collect::<Vec<_>>(),
            ["w", "x"]
        );
        assert_eq!(found.total_matched, 4);
        assert!(matches!(
            c.discover(&[], Some(0), false, None, &Progress::default())
                .await,
            Err(CallError::BadArgument(_))
        ));
    }
}
