//! Registries ("sources"): where peer records live, behind one small trait.
//!
//! A registry only stores and reads records. Policy (validation, what a register keeps,
//! what a heartbeat changes, expiry) lives in [`crate::peer`]; fan-out, merge and ranking
//! live in [`crate::coordinator`]. A registry calls those rules inside its own atomic
//! section, so that two writers never lose each other's changes.

pub mod github;
pub mod local_file;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::peer::{Heartbeat, PeerFilter, PeerRecord};

pub use github::GitHubIssuesSource;
pub use local_file::LocalFileSource;

/// The name of a source, as tools accept and report it: `local_file` (the JSON file on
/// this machine) or `github` (one issue per peer in a shared repository).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceName {
    // The JSON file on this machine, shared by every server process.
    LocalFile,
    // One GitHub issue per peer in a shared repository.
    Github,
}

impl SourceName {
    pub const ALL: [SourceName; 2] = [SourceName::LocalFile, SourceName::Github];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceName::LocalFile => "local_file",
            SourceName::Github => "github",
        }
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a source did with one record it was asked to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The copy as the source now holds it (`source` set to the source's name).
    pub record: PeerRecord,
    /// True when the source held no copy of this peer before.
    pub created: bool,
    /// False when the source decided the write was not needed (the held copy was still
    /// fresh enough); the record is then the held copy.
    pub written: bool,
    /// The GitHub issue that holds the record, for sources that have one.
    pub issue_number: Option<u64>,
}

/// The records a source holds that match a filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// The matching records; only the best `filter.limit` of them when a limit was set.
    pub peers: Vec<PeerRecord>,
    /// How many records matched in all (at least `peers.len()`).
    pub matched: usize,
    /// Records found but skipped because they break a rule of the format.
    pub rejected: usize,
    /// Something the caller should hear about this listing (for example that it was
    /// served from a cache while a refresh is under way); for the source's outcome.
    pub detail: Option<String>,
}

/// Where a source reports progress of long work (many pages, many closes). Cheap to
/// clone; the default reports nowhere.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Arc<ProgressSink>>,
}

/// Receives (steps done, total steps when known, a message).
type ProgressSink = dyn Fn(u64, Option<u64>, String) + Send + Sync;

impl Progress {
    pub fn new(sink: impl Fn(u64, Option<u64>, String) + Send + Sync + 'static) -> Self {
        Progress {
            sink: Some(Arc::new(sink)),
        }
    }

    /// `done` steps so far, of `total` when known.
    pub fn report(&self, done: u64, total: Option<u64>, message: String) {
        if let Some(sink) = &self.sink {
            sink(done, total, message);
        }
    }
}

/// Why a source could not serve a call. Messages name the source's resource and never
/// contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{action} `{path}` failed: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("did not answer within {0:?}")]
    Timeout(Duration),
    /// A timeout while the source was waiting on something it can name (a lock another
    /// process holds); the change was withdrawn, never applied.
    #[error(
        "did not answer within {after:?}: {waiting_on}; the change was withdrawn and not applied"
    )]
    Withdrawn { after: Duration, waiting_on: String },
    #[error("rate limited; retry after {retry_after_seconds} s")]
    RateLimited { retry_after_seconds: u64 },
    #[error("{0}")]
    Remote(String),
}

/// A copy for each of the callers that one failure answers (a batch of local file writes
/// fails together). `std::io::Error` is not `Clone`; its kind and message are what the
/// callers see, so the copy keeps those.
impl Clone for SourceError {
    fn clone(&self) -> Self {
        match self {
            SourceError::Io {
                action,
                path,
                source,
            } => SourceError::Io {
                action,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            SourceError::Timeout(after) => SourceError::Timeout(*after),
            SourceError::Withdrawn { after, waiting_on } => SourceError::Withdrawn {
                after: *after,
                waiting_on: waiting_on.clone(),
            },
            SourceError::RateLimited {
                retry_after_seconds,
            } => SourceError::RateLimited {
                retry_after_seconds: *retry_after_seconds,
            },
            SourceError::Remote(message) => SourceError::Remote(message.clone()),
        }
    }
}

impl SourceError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SourceError::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}

/// A caller's hold on one change it asked a source to make, shared by the caller (the
/// coordinator, which gives up at the source timeout) and the source (which applies the
/// change later, for example once it holds a lock).
///
/// The rule it enforces: no answer says "failed" for a change that later lands. A change
/// the source has not yet *taken* when its caller gives up is withdrawn and never applied;
/// once taken, the caller does not give up: the change completes and is reported as done.
#[derive(Debug, Default)]
pub struct Commitment {
    state: std::sync::atomic::AtomicU8,
    waiting_on: std::sync::Mutex<Option<String>>,
}

const OPEN: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Commitment {
    /// The source is about to apply the change. False when the caller already withdrew
    /// it: the source must then drop it unapplied.
    pub fn take(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        match self.state.compare_exchange(OPEN, TAKEN, AcqRel, Acquire) {
            Ok(_) => true,
            Err(state) => state == TAKEN,
        }
    }

    /// The caller gives up. True when the change is withdrawn (it will never be applied);
    /// false when the source already took it, so the caller must wait for its answer.
    pub fn withdraw(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        match self
            .state
            .compare_exchange(OPEN, WITHDRAWN, AcqRel, Acquire)
        {
            Ok(_) => true,
            Err(state) => state == WITHDRAWN,
        }
    }

    pub fn is_withdrawn(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Acquire) == WITHDRAWN
    }

    /// What the source is waiting for before it can take the change (said to the caller
    /// if it gives up), e.g. a lock held by another process.
    pub fn set_waiting_on(&self, what: String) {
        if let Ok(mut slot) = self.waiting_on.lock() {
            *slot = Some(what);
        }
    }

    pub fn waiting_on(&self) -> Option<String> {
        self.waiting_on.lock().ok().and_then(|w| w.clone())
    }

    /// The commitment of the change being made in this task: the one the coordinator set
    /// around the call ([`Commitment::scope`]), or a fresh one when there is none (a
    /// direct call; dropping such a call's future withdraws its change).
    pub fn current() -> Arc<Commitment> {
        CURRENT_COMMITMENT
            .try_with(Arc::clone)
            .unwrap_or_else(|_| Arc::new(Commitment::default()))
    }

    /// Runs `call` with `commitment` as [`Commitment::current`].
    pub async fn scope<F: std::future::Future>(commitment: Arc<Commitment>, call: F) -> F::Output {
        CURRENT_COMMITMENT.scope(commitment, call).await
    }
}

tokio::task_local! {
    static CURRENT_COMMITMENT: Arc<Commitment>;
}

/// A registry of peer records. Every method is one atomic step with respect to other
/// writers of the same registry, including other processes.
#[async_trait]
pub trait Source: Send + Sync {
    /// The name this source reports in outcomes and in each record's `source`.
    fn name(&self) -> SourceName;

    /// Stores `record` as the peer's current announcement: creates it, or replaces the held
    /// copy through [`PeerRecord::stored_over`] (so `first_seen` and unknown fields of the
    /// held copy survive).
    async fn register(&self, record: PeerRecord) -> Result<Stored, SourceError>;

    /// Applies a heartbeat at `now` to the held copy of `peer_id`.
    /// `Ok(None)` when this source holds no copy of the peer.
    async fn update(
        &self,
        peer_id: &str,
        heartbeat: &Heartbeat,
        now: f64,
    ) -> Result<Option<Stored>, SourceError>;

    /// The valid records that match `filter`, one per peer: all of them, or only the best
    /// `filter.limit` by [`crate::peer::rank_order`] when a limit is set.
    async fn list(&self, filter: &PeerFilter, progress: &Progress) -> Result<Listing, SourceError>;

    /// Removes the peer. `Ok(false)` when this source held no copy of it.
    async fn unregister(&self, peer_id: &str) -> Result<bool, SourceError>;

    /// Removes every record expired at `now`, or with `dry_run` only says which would go.
    /// Returns the removed peer ids.
    async fn cleanup(
        &self,
        now: f64,
        dry_run: bool,
        progress: &Progress,
    ) -> Result<Vec<String>, SourceError>;

    /// Drops records expired at `now` from any in-memory cache the source keeps, and says
    /// how many went.
    fn evict_expired_cache(&self, _now: f64) -> usize {
        0
    }

    /// Reads ahead what the first call would otherwise read (runs in the background once
    /// the server is up). Sources whose reads cost quota do nothing.
    async fn warm_up(&self) {}

    /// Things the caller should hear about that happened since the last call (for example
    /// a corrupt file kept aside). Each notice is returned once.
    fn take_notices(&self) -> Vec<String> {
        Vec::new()
    }
}
