//! Sources: where peer records live, behind one small storage-shaped trait ([`Source`]).
//!
//! A source only stores and reads records. Policy (validation, what a register keeps,
//! what a heartbeat changes, expiry, newest-wins, ranking, write coalescing) lives in
//! [`crate::peer`] and [`crate::coordinator::policy`]; fan-out and merge live in
//! [`crate::coordinator`]. A source runs the closure it is handed inside its own atomic
//! section, so that two writers never lose each other's changes.
//!
//! One module a source: [`local_file`], [`github`], [`etcd`] (feature `etcd`), [`memory`]
//! (for tests and embedding);
//! [`name`] holds the one list of the built-in sources.

pub mod etcd;
pub mod github;
pub mod local_file;
pub mod memory;
pub mod name;
mod quiet_url;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::peer::{PeerFilter, PeerRecord};

#[cfg(feature = "etcd")]
pub use etcd::EtcdSource;
pub use etcd::{EtcdCredentials, EtcdOptions};
pub use github::{GitHubIssuesSource, GitHubOptions};
pub use local_file::{LocalFileOptions, LocalFileSource};
pub use memory::MemorySource;
pub use name::{BUILT_IN, BuiltIn, SourceName};

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
    /// The remote refused the credentials (a bad or underpowered token).
    #[error("{0}")]
    Auth(String),
    /// The remote has no such thing (a deleted issue, a missing repository).
    #[error("{0}")]
    NotFound(String),
    /// The remote failed or answered something this source cannot use.
    #[error("{0}")]
    Remote(String),
    /// A fault in this program (a panic inside a source), not in the data or the remote.
    #[error("{0}")]
    Internal(String),
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
            SourceError::Auth(message) => SourceError::Auth(message.clone()),
            SourceError::NotFound(message) => SourceError::NotFound(message.clone()),
            SourceError::Remote(message) => SourceError::Remote(message.clone()),
            SourceError::Internal(message) => SourceError::Internal(message.clone()),
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
        *crate::lock(&self.waiting_on) = Some(what);
    }

    pub fn waiting_on(&self) -> Option<String> {
        crate::lock(&self.waiting_on).clone()
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

/// Every source's command-line options, each source's in its own group (flattened into
/// the command line: the flags and environment variables are the sources' own).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceOptions {
    #[command(flatten)]
    pub local_file: LocalFileOptions,
    #[command(flatten)]
    pub github: GitHubOptions,
    #[command(flatten)]
    pub etcd: EtcdOptions,
}

/// What opening one source from its options gave.
pub enum Opened {
    /// On: the source, and where it stores records (for `registry_status`).
    On {
        source: Arc<dyn Source>,
        description: String,
    },
    /// Off, with why and how to turn it on.
    Off(SourceName, String),
    /// Not asked for: reported with its [`BUILT_IN`] text.
    NotConfigured(SourceName),
}

/// Secrets the openers read from the environment, never from flags.
#[derive(Default)]
pub struct Secrets {
    pub github_token: Option<String>,
    pub etcd: EtcdCredentials,
}

impl Secrets {
    pub fn from_env() -> Self {
        Secrets {
            github_token: github::github_token_from_env(),
            etcd: EtcdCredentials::from_env(),
        }
    }
}

/// Opens every built-in source from its options, in the order they are listed: the one
/// place a new source is added (with its options group above and its [`BUILT_IN`]
/// entry). An error is a source that was asked for and cannot be used: the server does
/// not start. Needs a tokio runtime.
pub fn open_all(options: &SourceOptions, secrets: Secrets) -> Result<Vec<Opened>, String> {
    Ok(vec![
        options.local_file.open()?,
        options.github.open(secrets.github_token)?,
        options.etcd.open(secrets.etcd)?,
    ])
}

/// What a source can do, so the coordinator can adapt to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Abilities {
    /// Records leave by themselves when their lease ends (an etcd lease): cleanup has
    /// nothing to remove there and does not ask.
    pub expires_by_itself: bool,
    /// Each write costs quota or time (GitHub's content limits): the coordinator coalesces
    /// heartbeats to it ([`crate::coordinator::policy::heartbeat_can_wait`]).
    pub costly_writes: bool,
}

/// What to do with the copy a source holds of one peer, decided by the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Store this record as the peer's copy (the source sets `source` to its name).
    Write(PeerRecord),
    /// Leave the held copy (or the absence of one) as it is.
    Keep,
    /// Remove the held copy.
    Remove,
}

/// The coordinator's rule for one change: given the copy the source holds (or none),
/// what to do. It may be asked more than once in one step (a source that finds the copy
/// it should have written over only after writing, as GitHub's create race does); each
/// answer is for the copy it is given. Built from [`crate::peer`]'s rules by [`crate::coordinator::policy`].
pub type Decide = Box<dyn Fn(Option<&PeerRecord>) -> Decision + Send + Sync>;

/// What [`Source::modify`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Modified {
    /// The copy the source held before (`None`: it held none it could read).
    pub before: Option<PeerRecord>,
    /// The copy it holds now (`None`: it holds none).
    pub after: Option<PeerRecord>,
    /// False when nothing was written ([`Decision::Keep`]).
    pub written: bool,
    /// Where the source keeps the record, in its own terms (`issue #12`), if it can say.
    pub location: Option<String>,
}

/// Where peer records are stored: a plug-in of the coordinator. A source stores and
/// reads; it applies no rule of its own (what a register keeps, what a heartbeat changes,
/// when a lease ends, which copy wins, how peers rank): those come from [`crate::peer`]
/// and [`crate::coordinator::policy`], as closures and filters it is handed.
///
/// Every method is one atomic step with respect to other writers of the same store,
/// including other processes. Together with [`crate::coordinator::Coordinator::new`],
/// this trait is the crate's extension API; `docs/architecture.md` has the checklist for
/// adding a source, and `tests/source_contract.rs` the promises every source keeps.
#[async_trait]
pub trait Source: Send + Sync {
    /// The name this source reports in outcomes and in each record's `source`.
    fn name(&self) -> SourceName;

    /// What this source can do; the default is a plain store.
    fn abilities(&self) -> Abilities {
        Abilities::default()
    }

    /// Reads the held copy of `peer_id` (`None` when there is none, or none that keeps
    /// the format's rules), asks `decide` what to do with it, and does it, as one step:
    /// no other writer changes the peer in between. A [`Decision::Write`]'s record is
    /// stored with `source` set to this source's name, and returned as `after` that way.
    async fn modify(&self, peer_id: &str, decide: Decide) -> Result<Modified, SourceError>;

    /// The valid records that `hint` admits ([`PeerFilter::admits`] on what the source
    /// indexes, [`PeerFilter::matches`] on records), one per peer (the newest copy,
    /// [`crate::peer::newest`], where the store holds several): all of them, or the best
    /// `hint.limit` by [`crate::peer::rank_order`] when a limit is set
    /// ([`crate::peer::top_ranked`] picks them), with `matched` counting all that match.
    /// With a limit the capability and expiry parts of the hint are binding (the best
    /// `limit` must be the best of what matches); the coordinator checks every returned
    /// record again as a safety net and lowers `matched` for any it drops. Records that
    /// break a rule of the format, or claim a time ahead of the clock, are counted in
    /// `rejected`, never returned (except to a [`PeerFilter::stale`] scan, which asks
    /// for exactly the records cleanup removes).
    async fn scan(&self, hint: &PeerFilter, progress: &Progress) -> Result<Listing, SourceError>;

    /// Removes every record that cleanup at `now` removes ([`crate::peer::cleanup_removes`]:
    /// its lease is over, or it claims a time ahead of the clock), as one step, so a peer
    /// that heartbeats meanwhile is either refreshed or removed, never both. Returns the
    /// ids removed.
    async fn remove_stale(&self, now: f64, progress: &Progress)
    -> Result<Vec<String>, SourceError>;

    /// Drops records that cleanup at `now` removes from any in-memory cache the source
    /// keeps (not from the store), and says how many went.
    fn evict_stale_cache(&self, _now: f64) -> usize {
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

    /// A signal that the store may have changed through someone else (another process
    /// on the same file, another server on the same etcd): the value counts changes, and
    /// a receiver wakes on each (`changed().await`); the change feed then scans the source
    /// and compares. `None`: the source cannot tell, and its changes are seen when it is
    /// next read. Called once, when the change feed starts.
    fn watch_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
