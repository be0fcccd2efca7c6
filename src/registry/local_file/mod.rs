//! `LocalFileRegistry`: one JSON file on this machine, shared by every server process
//! (and by the Python `ipfs_datasets_py` module) that points at it.
//!
//! File format: `{"peers": {"<peer_id>": {record}}, "last_cleanup": <unix seconds>}`.
//!
//! What it promises, and how (docs/registry-format.md says the same for users):
//! - Writers never lose each other's changes. Every read-modify-write holds an advisory
//!   lock on the registry's *folder*, which no tmp cleaner can delete from under its
//!   holder (a lock on a sidecar file can be: the file is deleted, the next writer makes a
//!   new one and both "hold the lock"). The sidecar `<file>.lock` that earlier releases
//!   locked is locked too, so servers of both releases exclude each other during an
//!   upgrade. The data file itself cannot carry the lock: each rename replaces its inode.
//! - A crash or a power cut leaves the old file or the new one, never half of one: every
//!   write goes to a temp file in the same folder, which is fsynced, renamed over the data
//!   file, and the folder is fsynced. The answer goes out only after that.
//! - A file that does not parse may be half-written by a writer that takes no lock (the
//!   Python module writes in place): readers retry briefly and then serve the last good
//!   view; they never move a file. Only a writer, under the lock, keeps a file aside
//!   (`<file>.corrupt-<unix time>`), and only once it has stayed unparseable and unchanged
//!   (inode, size, mtime) for [`CORRUPT_AFTER`]. Records that break a rule are kept in the
//!   file as written but not served.
//! - A change whose caller gave up before the lock was taken is withdrawn, never applied
//!   later; one that took the lock completes (see [`crate::registry::Commitment`]).
//! - A symlinked registry path is resolved: the target is read, written and locked.
//! - The file is written with mode 0600 (peer records are no one else's business).
//! - A parsed file is cached and re-read only when its inode, size or mtime change.
//!
//! The parsed file is a [`format::RegistryFile`] (the file's layout, streamed in and
//! written back) over a [`table::PeerTable`] (the records, held compactly).

mod format;
mod table;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Commitment, Listing, PeerRegistry, Progress, RegistryError, SourceName, Stored};
use crate::peer::{Heartbeat, PeerFilter, PeerRecord};
use format::RegistryFile;
#[doc(hidden)]
pub use format::reencode_registry_bytes;

/// How long a file must stay unparseable and unchanged, under the lock, before a writer
/// keeps it aside. A writer that takes no lock finishes a rewrite well within this.
pub const CORRUPT_AFTER: Duration = Duration::from_secs(2);

/// How long a writer holding the lock waits for a file that keeps changing and never
/// parses (someone rewriting it in a loop) before its batch fails.
const UNSETTLED_LIMIT: Duration = Duration::from_secs(10);

/// How long a reader retries a file that does not parse while it keeps changing, before
/// it serves the last good view.
const READ_SETTLE: Duration = Duration::from_millis(250);

/// The pause between two looks at a file that did not parse.
const REREAD_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause between two attempts to take a lock another process holds.
const LOCK_POLL_MAX: Duration = Duration::from_millis(16);

/// The registry file on disk, as a cheap cloneable handle.
#[derive(Clone)]
pub struct LocalFileRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    /// The data file (a symlinked path resolved to its target).
    path: PathBuf,
    /// Its folder: locked by every read-modify-write.
    dir: PathBuf,
    /// The sidecar that earlier releases locked; locked too.
    legacy_lock_path: PathBuf,
    /// The last good parse and the stamp of the file it came from. Readers serve it while
    /// the file on disk does not parse.
    cache: Mutex<Option<Snapshot>>,
    notices: Mutex<Vec<String>>,
    /// How many times the file was read and parsed (the cache makes this rare).
    parses: AtomicU64,
    /// Held while the file is parsed.
    parsing: Mutex<()>,
    /// Changes waiting for the next write (group commit).
    queue: Mutex<WriteQueue>,
    /// How many times the file was written (a batch of changes is one write).
    writes: AtomicU64,
    /// Whether temp files left by a killed writer were removed (needs the lock).
    swept: AtomicBool,
    /// Whether narrowing a readable file to 0600 was logged (once is enough).
    narrowed: AtomicBool,
    /// Since when the writer waits for a lock another process holds.
    lock_wait: Mutex<Option<Instant>>,
    /// Every fsync and rename of a write, in order, for the test that proves none is
    /// skipped.
    #[cfg(test)]
    durability_log: Mutex<Vec<&'static str>>,
}

/// Group commit: changes that arrive while the file is being written wait here and then
/// share the next write (one lock, one rewrite, one fsync) instead of queueing one each.
#[derive(Default)]
struct WriteQueue {
    pending: Vec<Box<dyn Pending>>,
    /// A blocking thread is writing batches; a new change only needs to join the queue.
    writing: bool,
}

/// What applying one queued change did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Changed,
    Unchanged,
    /// The change failed; it is meant to leave the file as it was, but the in-memory
    /// copy is not trusted to be a faithful read of the file any more.
    Failed,
}

/// A queued change, its answer type erased.
trait Pending: Send {
    /// The caller's hold on the change: withdrawn changes are dropped unapplied.
    fn commitment(&self) -> &Commitment;
    /// Applies the change to the file. A change that fails must leave the file as it
    /// was: the others of its batch are still written.
    fn apply(&mut self, inner: &Inner, file: &mut RegistryFile) -> Applied;
    /// Answers the caller once the batch's outcome is known: `written` is `Ok` when the
    /// write that holds the change is durable, or none was needed.
    fn answer(self: Box<Self>, written: Result<(), RegistryError>);
}

/// A change and the caller waiting for its answer.
struct Waiting<T, F> {
    commitment: Arc<Commitment>,
    change: Option<F>,
    outcome: Option<Result<T, RegistryError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, RegistryError>>,
}

impl<T, F> Pending for Waiting<T, F>
where
    T: Send,
    F: FnOnce(&Inner, &mut RegistryFile) -> Result<(T, bool), RegistryError> + Send,
{
    fn commitment(&self) -> &Commitment {
        &self.commitment
    }

    fn apply(&mut self, inner: &Inner, file: &mut RegistryFile) -> Applied {
        let Some(change) = self.change.take() else {
            return Applied::Unchanged;
        };
        match change(inner, file) {
            Ok((answer, changed)) => {
                self.outcome = Some(Ok(answer));
                if changed {
                    Applied::Changed
                } else {
                    Applied::Unchanged
                }
            }
            Err(e) => {
                self.outcome = Some(Err(e));
                Applied::Failed
            }
        }
    }

    fn answer(self: Box<Self>, written: Result<(), RegistryError>) {
        let answer = match (self.outcome, written) {
            // The change's own failure is its answer, whatever happened to the batch.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(answer)), Ok(())) => Ok(answer),
            // The batch could not be read, or its write failed: nothing of it is durable.
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Err(RegistryError::Remote(
                "a registry change was never applied".to_owned(),
            )),
        };
        // A caller that took part in a write does not give up (see `Commitment`); a
        // dropped receiver only means its whole call was cancelled.
        let _ = self.reply.send(answer);
    }
}

#[derive(Clone)]
struct Snapshot {
    stamp: Option<FileStamp>,
    file: Arc<RegistryFile>,
}

/// Identifies one version of the data file: a rename gives a new inode, a rewrite in
/// place (by another tool) a new size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

/// The file as one look at it found it.
enum Read {
    Parsed(Snapshot),
    /// The file exists but does not parse (yet: it may be half-written), or is empty
    /// (a writer in place truncates it first).
    Unsettled {
        why: Unsettled,
        stamp: FileStamp,
    },
}

enum Unsettled {
    Empty,
    Unparseable(serde_json::Error),
}

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsettled::Empty => f.write_str("it is empty"),
            Unsettled::Unparseable(e) => write!(f, "it did not parse: {e}"),
        }
    }
}

impl LocalFileRegistry {
    /// Opens (creating folders as needed) the registry at `path`, resolving a symlinked
    /// path to its target. Refuses a path that is a directory, a FIFO or anything else
    /// but a regular file, and a folder where no file can be created. Never waits for
    /// the lock: the file is read by the first call (or [`PeerRegistry::warm_up`]), and
    /// temp files a killed writer left are removed now if the lock is free, else by the
    /// first write. Blocking; call before serving.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let given = path.into();
        let path = resolve_symlinks(&given)
            .map_err(|e| RegistryError::io("resolving the symlink", &given, e))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                RegistryError::io(
                    "opening registry",
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
                )
            })?;
        let dir = parent_dir(&path);
        fs::create_dir_all(&dir).map_err(|e| RegistryError::io("creating folder", &dir, e))?;
        match fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                let kind = if meta.is_dir() {
                    "a directory"
                } else {
                    "not a regular file (a FIFO, socket or device)"
                };
                return Err(RegistryError::io(
                    "opening registry",
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("it is {kind}; give the path of a JSON file"),
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RegistryError::io("opening registry", &path, e)),
        }
        // Writes go through a temp file in the folder: prove now that one can be made.
        tempfile::Builder::new()
            .prefix(&temp_prefix(&file_name))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| RegistryError::io("creating a file in", &dir, e))?;
        let inner = Inner {
            legacy_lock_path: dir.join(format!("{file_name}.lock")),
            path,
            dir,
            cache: Mutex::new(None),
            notices: Mutex::new(Vec::new()),
            parses: AtomicU64::new(0),
            parsing: Mutex::new(()),
            queue: Mutex::new(WriteQueue::default()),
            writes: AtomicU64::new(0),
            swept: AtomicBool::new(false),
            narrowed: AtomicBool::new(false),
            lock_wait: Mutex::new(None),
            #[cfg(test)]
            durability_log: Mutex::new(Vec::new()),
        };
        if let Ok(Some(_lock)) = inner.try_lock() {
            inner.sweep_temp_files();
        }
        Ok(LocalFileRegistry {
            inner: Arc::new(inner),
        })
    }

    /// The data file (the target, when the configured path is a symlink).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T, F>(&self, job: F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, RegistryError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || job(&inner))
            .await
            .map_err(|e| RegistryError::Remote(format!("local file task failed: {e}")))?
    }

    /// Queues `change` for the next write and waits until that write is durable (or
    /// failed). `change` returns its answer and whether it changed the file; a batch in
    /// which nothing changed is not written. If the caller gives up (drops this future, or
    /// the coordinator withdraws its [`Commitment`]) before the writer took the change,
    /// the change is never applied.
    async fn commit<T, F>(&self, change: F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut RegistryFile) -> Result<(T, bool), RegistryError> + Send + 'static,
    {
        /// Withdraws the change when the caller's future is dropped before an answer.
        struct WithdrawOnDrop(Arc<Commitment>);
        impl Drop for WithdrawOnDrop {
            fn drop(&mut self) {
                self.0.withdraw();
            }
        }
        let commitment = Commitment::current();
        let _withdraw = WithdrawOnDrop(Arc::clone(&commitment));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.inner.queue();
            if let Some(since) = self.inner.waiting_for_lock() {
                commitment.set_waiting_on(self.inner.lock_wait_text(since));
            }
            queue.pending.push(Box::new(Waiting {
                commitment,
                change: Some(change),
                outcome: None,
                reply,
            }));
            !std::mem::replace(&mut queue.writing, true)
        };
        if lead {
            Inner::start_writer(Arc::clone(&self.inner));
        }
        answer.await.unwrap_or_else(|_| {
            Err(RegistryError::Remote(
                "the local file writer stopped before answering".to_owned(),
            ))
        })
    }
}

/// Follows a chain of symlinks at `path` (not only its last hop) to the file it names,
/// which may not exist yet.
fn resolve_symlinks(path: &Path) -> std::io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                path = if target.is_absolute() {
                    target
                } else {
                    parent_dir(&path).join(target)
                };
            }
            _ => return Ok(path),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_prefix(file_name: &str) -> String {
    format!(".{file_name}.")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Holds both advisory locks until dropped (closing the files releases them).
struct LockGuard {
    _folder: File,
    _legacy: File,
}

impl Inner {
    /// Takes the folder lock and the legacy sidecar lock if both are free; `None` when
    /// another process holds either.
    fn try_lock(&self) -> Result<Option<LockGuard>, RegistryError> {
        let folder = File::open(&self.dir)
            .map_err(|e| RegistryError::io("opening the folder to lock", &self.dir, e))?;
        if !try_lock_file(&folder, &self.dir)? {
            return Ok(None);
        }
        // Created again if a tmp cleaner deleted it; the folder lock is what protects us.
        let legacy = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.legacy_lock_path)
            .map_err(|e| RegistryError::io("opening lock file", &self.legacy_lock_path, e))?;
        if !try_lock_file(&legacy, &self.legacy_lock_path)? {
            return Ok(None);
        }
        Ok(Some(LockGuard {
            _folder: folder,
            _legacy: legacy,
        }))
    }

    /// Since when the writer waits for a lock another process holds, if it does.
    fn waiting_for_lock(&self) -> Option<Instant> {
        self.lock_wait.lock().ok().and_then(|w| *w)
    }

    fn lock_wait_text(&self, since: Instant) -> String {
        format!(
            "waiting {:.1} s for the lock on `{}`, which another process holds (a stopped or busy peer-discovery-mcp, or an older one holding `{}`)",
            since.elapsed().as_secs_f64(),
            self.dir.display(),
            self.legacy_lock_path.display()
        )
    }

    fn set_lock_wait(&self, since: Option<Instant>) {
        if let Ok(mut wait) = self.lock_wait.lock() {
            *wait = since;
        }
    }

    /// Removes temp files a killed writer left. Only while holding the lock: a live
    /// writer's temp file must not go.
    fn sweep_temp_files(&self) {
        if self.swept.swap(true, Ordering::AcqRel) {
            return;
        }
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = temp_prefix(&file_name);
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(file = %entry.path().display(), "removed a temp file left by an interrupted write")
                    }
                    Err(e) => {
                        tracing::warn!(file = %entry.path().display(), error = %e, "could not remove a stale temp file")
                    }
                }
            }
        }
    }

    fn encoding_error(&self, error: serde_json::Error) -> RegistryError {
        RegistryError::io(
            "encoding a record for",
            &self.path,
            std::io::Error::other(error),
        )
    }

    fn notice(&self, message: String) {
        tracing::warn!("{message}");
        if let Ok(mut notices) = self.notices.lock() {
            notices.push(message);
        }
    }

    fn cached(&self) -> Option<Snapshot> {
        self.cache.lock().ok().and_then(|c| c.clone())
    }

    fn set_cache(&self, snapshot: Option<Snapshot>) {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = snapshot;
        }
    }

    /// One look at the file as it is now: the cached parse when the file has not changed.
    fn read_once(&self) -> Result<Read, RegistryError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Read::Parsed(Snapshot {
                    stamp: None,
                    file: Arc::new(RegistryFile::default()),
                }));
            }
            Err(e) => return Err(RegistryError::io("reading", &self.path, e)),
        };
        // Stamp the open handle, then read it: the stamp always belongs to the bytes read.
        let meta = file
            .metadata()
            .map_err(|e| RegistryError::io("reading", &self.path, e))?;
        let stamp = FileStamp::of(&meta);
        if let Some(snapshot) = self.cached()
            && snapshot.stamp == Some(stamp)
        {
            return Ok(Read::Parsed(snapshot));
        }
        // One parse at a time: callers that arrive while a parse of this same version is
        // under way wait for it instead of holding a second copy of the registry.
        let _parsing = self
            .parsing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(snapshot) = self.cached()
            && snapshot.stamp == Some(stamp)
        {
            return Ok(Read::Parsed(snapshot));
        }
        self.parses.fetch_add(1, Ordering::Relaxed);
        match RegistryFile::parse(&mut file, usize::try_from(meta.len()).unwrap_or(0)) {
            // Empty, or truncated since the stamp was taken.
            Ok(None) => Ok(Read::Unsettled {
                why: Unsettled::Empty,
                stamp,
            }),
            Ok(Some(parsed)) => {
                let snapshot = Snapshot {
                    stamp: Some(stamp),
                    file: Arc::new(parsed),
                };
                self.set_cache(Some(snapshot.clone()));
                Ok(Read::Parsed(snapshot))
            }
            Err(e) if e.is_io() => Err(RegistryError::io(
                "reading",
                &self.path,
                std::io::Error::other(e.to_string()),
            )),
            Err(error) => Ok(Read::Unsettled {
                why: Unsettled::Unparseable(error),
                stamp,
            }),
        }
    }

    /// The current content, for a caller that holds the lock. A file that does not parse
    /// (or is empty) is looked at again until it parses (a writer that takes no lock
    /// finished), or until it has stayed so and unchanged for [`CORRUPT_AFTER`]: then an
    /// empty file is an empty registry, and one that does not parse is kept aside,
    /// reported, and the registry goes on from an empty state.
    fn load_locked(&self) -> Result<Snapshot, RegistryError> {
        let started = Instant::now();
        let mut seen: Option<(FileStamp, Instant)> = None;
        loop {
            let (why, stamp) = match self.read_once()? {
                Read::Parsed(snapshot) => return Ok(snapshot),
                Read::Unsettled { why, stamp } => (why, stamp),
            };
            let unchanged_since = match seen {
                Some((seen_stamp, since)) if seen_stamp == stamp => since,
                _ => {
                    seen = Some((stamp, Instant::now()));
                    Instant::now()
                }
            };
            if unchanged_since.elapsed() >= CORRUPT_AFTER {
                let Unsettled::Unparseable(error) = why else {
                    // Nothing in it to lose: an empty registry.
                    return Ok(Snapshot {
                        stamp: None,
                        file: Arc::new(RegistryFile::default()),
                    });
                };
                let aside = self.keep_aside()?;
                self.notice(format!(
                    "registry file `{}` did not parse ({error}) and stayed unchanged for {} s; it was kept aside as `{}` and the registry started again from empty (see docs/registry-format.md to recover its peers)",
                    self.path.display(),
                    CORRUPT_AFTER.as_secs(),
                    aside.display()
                ));
                let snapshot = Snapshot {
                    stamp: None,
                    file: Arc::new(RegistryFile::default()),
                };
                self.set_cache(Some(snapshot.clone()));
                return Ok(snapshot);
            }
            if started.elapsed() >= UNSETTLED_LIMIT {
                return Err(RegistryError::Remote(format!(
                    "registry file `{}` kept changing for {} s without ever parsing (last time {why}); another process is rewriting it; nothing was written, retry later",
                    self.path.display(),
                    UNSETTLED_LIMIT.as_secs()
                )));
            }
            std::thread::sleep(REREAD_PAUSE);
        }
    }

    fn keep_aside(&self) -> Result<PathBuf, RegistryError> {
        let base = format!("{}.corrupt-{}", self.path.display(), unix_now());
        let mut aside = PathBuf::from(&base);
        let mut n = 1;
        while aside.exists() {
            aside = PathBuf::from(format!("{base}-{n}"));
            n += 1;
        }
        fs::rename(&self.path, &aside)
            .map_err(|e| RegistryError::io("keeping aside corrupt registry", &self.path, e))?;
        Ok(aside)
    }

    /// The current content for a reader, who takes no lock (writers replace the file by
    /// an atomic rename) and never moves a file. A file that does not parse is served as
    /// the last good view, with a notice. With no good view yet (a cold start), it is
    /// looked at again while it keeps changing, for up to [`READ_SETTLE`]; then the read
    /// fails with a message that says to retry (an empty file that does not change is an
    /// empty registry).
    fn read(&self) -> Result<Arc<RegistryFile>, RegistryError> {
        let started = Instant::now();
        let mut last_stamp = None;
        loop {
            let (why, stamp) = match self.read_once()? {
                Read::Parsed(snapshot) => return Ok(snapshot.file),
                Read::Unsettled { why, stamp } => (why, stamp),
            };
            let settled = last_stamp == Some(stamp);
            // With a good view at hand there is nothing to wait for: it is what a read a
            // moment earlier would have returned.
            let have_good_view = self.cached().is_some();
            if have_good_view || settled || started.elapsed() >= READ_SETTLE {
                return match (self.cached(), why) {
                    (Some(good), why) => {
                        self.notice(format!(
                            "registry file `{}` cannot be read right now ({why}): another process may be writing it; served the last good view",
                            self.path.display()
                        ));
                        Ok(good.file)
                    }
                    // Empty and not being written: an empty registry, nothing hidden.
                    (None, Unsettled::Empty) if settled => Ok(Arc::new(RegistryFile::default())),
                    (None, why) => Err(RegistryError::Remote(format!(
                        "registry file `{}` cannot be read ({why}): another process may be writing it; retry in a moment (a writer keeps it aside if it stays broken)",
                        self.path.display()
                    ))),
                };
            }
            last_stamp = Some(stamp);
            std::thread::sleep(REREAD_PAUSE);
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, WriteQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs [`Inner::write_queued`] on tokio's blocking pool (on this thread when there
    /// is no runtime).
    fn start_writer(inner: Arc<Inner>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || inner.write_queued());
            }
            Err(_) => inner.write_queued(),
        }
    }

    /// Writes queued changes, a batch at a time, until the queue is empty. Runs on one
    /// blocking thread at a time (the one whose caller found no writer running).
    fn write_queued(self: &Arc<Self>) {
        // A change that panics (a bug) must not leave the queue marked as being written
        // forever: the callers of its batch get an error (their answers are dropped), and
        // a new writer takes whatever queued meanwhile.
        struct Unstick(Arc<Inner>);
        impl Drop for Unstick {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.set_lock_wait(None);
                    let restart = {
                        let mut queue = self.0.queue();
                        queue.writing = !queue.pending.is_empty();
                        queue.writing
                    };
                    if restart {
                        Inner::start_writer(Arc::clone(&self.0));
                    }
                }
            }
        }
        let _unstick = Unstick(Arc::clone(self));
        loop {
            let lock = match self.wait_for_lock() {
                Ok(Some(lock)) => lock,
                // Every waiting caller gave up: nothing to write.
                Ok(None) => return,
                Err(e) => {
                    let failed = {
                        let mut queue = self.queue();
                        queue.writing = false;
                        std::mem::take(&mut queue.pending)
                    };
                    for change in failed {
                        change.answer(Err(e.clone()));
                    }
                    return;
                }
            };
            let mut batch = {
                let mut queue = self.queue();
                if queue.pending.is_empty() {
                    queue.writing = false;
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            // The changes whose callers are still there are taken: from here on they land
            // and their callers wait for them. The others are dropped, never applied.
            batch.retain(|change| change.commitment().take());
            if !self.swept.load(Ordering::Acquire) {
                self.sweep_temp_files();
            }
            let written = self.apply_and_write(&mut batch);
            drop(lock);
            for change in batch {
                change.answer(written.clone());
            }
        }
    }

    /// Takes the lock, polling while another process holds it so that callers who give up
    /// meanwhile are let go. `None` when every queued change was withdrawn (the queue is
    /// then empty and no writer runs).
    fn wait_for_lock(&self) -> Result<Option<LockGuard>, RegistryError> {
        let mut pause = Duration::from_millis(1);
        loop {
            let taken = self.try_lock();
            if !matches!(taken, Ok(None)) {
                self.set_lock_wait(None);
                return taken;
            }
            let since = self.waiting_for_lock().unwrap_or_else(|| {
                let now = Instant::now();
                self.set_lock_wait(Some(now));
                now
            });
            {
                let mut queue = self.queue();
                queue.pending.retain(|c| !c.commitment().is_withdrawn());
                if queue.pending.is_empty() {
                    queue.writing = false;
                    drop(queue);
                    self.set_lock_wait(None);
                    return Ok(None);
                }
                let waiting_on = self.lock_wait_text(since);
                for change in &queue.pending {
                    change.commitment().set_waiting_on(waiting_on.clone());
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    /// One read-modify-write, under the lock the caller holds, for a whole batch of
    /// changes, in the order they were queued; the file is written once if any of them
    /// changed it.
    fn apply_and_write(&self, batch: &mut [Box<dyn Pending>]) -> Result<(), RegistryError> {
        if batch.is_empty() {
            return Ok(());
        }
        let snapshot = self.load_locked()?;
        // Drop our cache's reference so that, with no reader holding the old version,
        // make_mut edits in place instead of copying every record.
        self.set_cache(None);
        let stamp = snapshot.stamp;
        let mut file = snapshot.file;
        let content = Arc::make_mut(&mut file);
        let applied: Vec<Applied> = batch
            .iter_mut()
            .map(|change| change.apply(self, content))
            .collect();
        if applied.contains(&Applied::Changed) {
            let written = self.write_atomically(&file, batch.len())?;
            self.writes.fetch_add(1, Ordering::Relaxed);
            // Without a stamp of what was written, the next read parses the file again.
            self.set_cache(written.map(|stamp| Snapshot {
                stamp: Some(stamp),
                file,
            }));
        } else if !applied.contains(&Applied::Failed) {
            self.set_cache(Some(Snapshot { stamp, file }));
        }
        // (A batch whose only changes failed keeps no cache: the next read parses the
        // file rather than trust a copy a failed change went through.)
        Ok(())
    }

    #[cfg(test)]
    fn log_durability(&self, step: &'static str) {
        if let Ok(mut log) = self.durability_log.lock() {
            log.push(step);
        }
    }

    #[cfg(not(test))]
    fn log_durability(&self, _step: &'static str) {}

    /// Temp file in the same folder (mode 0600), fsync, rename over the data file, fsync
    /// the folder.
    fn write_atomically(
        &self,
        content: &RegistryFile,
        changes: usize,
    ) -> Result<Option<FileStamp>, RegistryError> {
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let io = |action| move |e| RegistryError::io(action, &self.path, e);
        // tempfile creates the file with mode 0600, which the rename carries over.
        let mut temp = tempfile::Builder::new()
            .prefix(&temp_prefix(&file_name))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io("creating temp file for"))?;
        self.note_narrowed_permissions();
        let started = Instant::now();
        {
            let mut writer = BufWriter::with_capacity(256 * 1024, temp.as_file_mut());
            content.write_to(&mut writer).map_err(io("writing"))?;
            writer.flush().map_err(io("writing"))?;
        }
        let written = started.elapsed();
        temp.as_file().sync_all().map_err(io("syncing"))?;
        self.log_durability("sync temp file");
        tracing::debug!(
            peers = content.peers.len(),
            changes,
            write_ms = written.as_secs_f64() * 1000.0,
            sync_ms = (started.elapsed() - written).as_secs_f64() * 1000.0,
            "registry file written"
        );
        let file = temp
            .persist(&self.path)
            .map_err(|e| RegistryError::io("replacing", &self.path, e.error))?;
        self.log_durability("rename over the data file");
        // Makes the rename itself durable. The change is in the file already and is
        // answered as done either way; a failure here only weakens the power-cut promise,
        // so it is logged and reported rather than reported as a failed write.
        match File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            Ok(()) => self.log_durability("sync folder"),
            Err(e) => self.notice(format!(
                "the registry was written, but syncing its folder `{}` failed ({e}): the last change may not survive a power cut",
                self.dir.display()
            )),
        }
        // The write is durable from here on: a failure to stamp it only costs a re-read.
        match file.metadata() {
            Ok(meta) => Ok(Some(FileStamp::of(&meta))),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "could not stamp the registry file just written; it will be read again");
                Ok(None)
            }
        }
    }

    /// A registry file that others could read (the Python module creates it 0644) is
    /// replaced by one only its owner can: say so once.
    fn note_narrowed_permissions(&self) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = fs::metadata(&self.path)
                && meta.permissions().mode() & 0o077 != 0
                && !self.narrowed.swap(true, Ordering::AcqRel)
            {
                tracing::warn!(
                    file = %self.path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the registry file was readable by other users; it is now written with mode 600"
                );
            }
        }
    }
}

/// Tries to take an advisory lock on `file` without waiting: false when another process
/// holds it.
fn try_lock_file(file: &File, path: &Path) -> Result<bool, RegistryError> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(RegistryError::io("locking", path, e)),
    }
}

fn stored(record: &PeerRecord, created: bool) -> Stored {
    Stored {
        record: record.clone(),
        created,
        written: true,
        issue_number: None,
    }
}

const SOURCE: SourceName = SourceName::LocalFile;

#[async_trait]
impl PeerRegistry for LocalFileRegistry {
    fn name(&self) -> SourceName {
        SOURCE
    }

    async fn register(&self, record: PeerRecord) -> Result<Stored, RegistryError> {
        self.commit(move |inner, file| {
            let existing = file.peers.record(&record.peer_id);
            let created = existing.is_none();
            let mut new = record.stored_over(existing.as_ref());
            new.source = SOURCE.as_str().to_owned();
            file.peers
                .upsert(&new)
                .map_err(|e| inner.encoding_error(e))?;
            Ok((stored(&new, created), true))
        })
        .await
    }

    async fn update(
        &self,
        peer_id: &str,
        heartbeat: &Heartbeat,
        now: f64,
    ) -> Result<Option<Stored>, RegistryError> {
        let peer_id = peer_id.to_owned();
        let heartbeat = heartbeat.clone();
        self.commit(move |inner, file| {
            let Some(existing) = file.peers.record(&peer_id) else {
                return Ok((None, false));
            };
            let mut new = heartbeat.apply(&existing, now);
            new.source = SOURCE.as_str().to_owned();
            file.peers
                .upsert(&new)
                .map_err(|e| inner.encoding_error(e))?;
            Ok((Some(stored(&new, false)), true))
        })
        .await
    }

    async fn list(
        &self,
        filter: &PeerFilter,
        _progress: &Progress,
    ) -> Result<Listing, RegistryError> {
        let filter = filter.clone();
        self.blocking(move |inner| {
            let file = inner.read()?;
            let (peers, matched) = file.peers.matching(&filter);
            Ok(Listing {
                peers,
                matched,
                rejected: file.peers.unusable_count() + file.peers.ahead_of_clock_count(filter.now),
            })
        })
        .await
    }

    async fn unregister(&self, peer_id: &str) -> Result<bool, RegistryError> {
        let peer_id = peer_id.to_owned();
        self.commit(move |_, file| {
            let removed = file.peers.serves(&peer_id) && file.peers.remove(&peer_id);
            Ok((removed, removed))
        })
        .await
    }

    async fn cleanup(
        &self,
        now: f64,
        dry_run: bool,
        _progress: &Progress,
    ) -> Result<Vec<String>, RegistryError> {
        if dry_run {
            return self
                .blocking(move |inner| Ok(inner.read()?.peers.expired(now)))
                .await;
        }
        self.commit(move |_, file| {
            let removed = file.peers.remove_expired(now);
            if !removed.is_empty() {
                file.set_last_cleanup(now);
            }
            let changed = !removed.is_empty();
            Ok((removed, changed))
        })
        .await
    }

    async fn warm_up(&self) {
        if let Err(e) = self.blocking(|inner| inner.read().map(drop)).await {
            tracing::warn!(error = %e, "could not read the registry file ahead of the first call");
        }
    }

    fn take_notices(&self) -> Vec<String> {
        self.inner
            .notices
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Announcement, DEFAULT_TTL_SECONDS};
    use serde_json::Value;

    fn record(peer_id: &str, caps: &[&str], ttl: i64, now: f64) -> PeerRecord {
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        Announcement::new(
            peer_id.into(),
            "/ip4/127.0.0.1/tcp/4001",
            &caps,
            Some(ttl),
            None,
            DEFAULT_TTL_SECONDS,
        )
        .expect("valid")
        .into_record(now)
    }

    fn all(now: f64) -> PeerFilter {
        PeerFilter::new(&[], true, now).expect("valid")
    }

    impl LocalFileRegistry {
        async fn list_all(&self, filter: &PeerFilter) -> Result<Listing, RegistryError> {
            self.list(filter, &Progress::default()).await
        }
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).expect("file")).expect("json")
    }

    /// The file holds the Python module's shape, each record with exactly its eight keys,
    /// and a re-register keeps `first_seen`.
    #[tokio::test]
    async fn writes_the_shared_format_and_keeps_first_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/folder/peer_registry.json");
        let reg = LocalFileRegistry::open(&path).expect("open");
        let first = reg
            .register(record("a", &["storage"], 60, 100.0))
            .await
            .expect("register");
        assert!(first.created);
        let again = reg
            .register(record("a", &["compute"], 60, 200.0))
            .await
            .expect("register");
        assert!(!again.created);
        assert_eq!(
            (again.record.first_seen, again.record.last_seen),
            (100.0, 200.0)
        );

        let json = read_json(&path);
        let rec = json["peers"]["a"].as_object().expect("record");
        let mut keys: Vec<&str> = rec.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "capabilities",
                "first_seen",
                "last_seen",
                "metadata",
                "multiaddr",
                "peer_id",
                "source",
                "ttl_seconds"
            ]
        );
        assert_eq!(rec["source"], "local_file");
        assert_eq!(rec["capabilities"], serde_json::json!(["compute"]));
        assert!(json["last_cleanup"].is_number());
    }

    /// Unknown keys (top level and in a record) and records that break a rule survive
    /// a write by this server; the broken record is counted, not served.
    #[tokio::test]
    async fn keeps_what_it_does_not_understand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        fs::write(
            &path,
            r#"{"peers": {
                "old": {"peer_id": "old", "multiaddr": "/ip4/127.0.0.1/tcp/1", "capabilities": [],
                        "first_seen": 1.0, "last_seen": 1.0, "source": "local_file",
                        "ttl_seconds": 600000, "metadata": {}, "signature": "sig"},
                "bad": {"peer_id": "bad", "multiaddr": "nonsense"}
              }, "last_cleanup": 5.0, "version": 2}"#,
        )
        .expect("seed");
        let reg = LocalFileRegistry::open(&path).expect("open");
        let listing = reg.list_all(&all(10.0)).await.expect("list");
        assert_eq!(listing.peers.len(), 1);
        assert_eq!(listing.rejected, 1);

        reg.register(record("old", &[], 60, 10.0))
            .await
            .expect("register");
        let json = read_json(&path);
        assert_eq!(json["version"], 2);
        assert_eq!(json["peers"]["bad"]["multiaddr"], "nonsense");
        assert_eq!(json["peers"]["old"]["signature"], "sig");
        assert_eq!(json["peers"]["old"]["first_seen"], 1.0);
    }

    fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .map(|e| e.path())
            .collect()
    }

    /// A reader never moves a file that does not parse: with no good view it fails with a
    /// message that says to retry; with one, it serves it and says why.
    #[tokio::test]
    async fn readers_never_move_a_file_that_does_not_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        fs::write(&path, b"{\"peers\": {\"a\": tru").expect("seed");
        let reg = LocalFileRegistry::open(&path).expect("open");
        reg.warm_up().await;
        let error = reg.list_all(&all(0.0)).await.expect_err("no good view");
        assert!(
            error
                .to_string()
                .contains("another process may be writing it")
                && error.to_string().contains("retry"),
            "{error}"
        );
        assert!(corrupt_files(dir.path()).is_empty());

        fs::remove_file(&path).expect("remove");
        reg.register(record("b", &[], 60, 1.0))
            .await
            .expect("register");
        fs::write(&path, b"{\"peers\": {\"b\": ").expect("half-written");
        let served = reg.list_all(&all(2.0)).await.expect("the last good view");
        assert_eq!(served.peers.len(), 1);
        let notices = reg.take_notices();
        assert!(
            notices[0].contains("served the last good view"),
            "{notices:?}"
        );
        assert!(corrupt_files(dir.path()).is_empty());
        assert_eq!(fs::read(&path).expect("file"), b"{\"peers\": {\"b\": ");
    }

    /// A writer keeps a file aside only once it stayed unparseable and unchanged for
    /// `CORRUPT_AFTER` under the lock; then it reports it once and starts from empty.
    #[tokio::test]
    async fn a_writer_keeps_aside_a_file_that_stays_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        fs::write(&path, b"garbage").expect("seed");
        let reg = LocalFileRegistry::open(&path).expect("open");
        let started = Instant::now();
        reg.register(record("b", &[], 60, 1.0))
            .await
            .expect("register");
        assert!(started.elapsed() >= CORRUPT_AFTER, "kept aside too early");
        let aside = corrupt_files(dir.path());
        assert_eq!(aside.len(), 1);
        assert_eq!(fs::read(&aside[0]).expect("aside"), b"garbage");
        let notices = reg.take_notices();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].contains("kept aside"), "{}", notices[0]);
        assert_eq!(reg.list_all(&all(2.0)).await.expect("list").peers.len(), 1);
    }

    /// A writer that finds the file half-written by a process that takes no lock waits
    /// for it to be complete and merges into it: nothing is kept aside, nothing lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_waits_for_a_rewrite_in_place_to_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileRegistry::open(&path).expect("open");
        reg.register(record("theirs", &[], 60, 1.0))
            .await
            .expect("register");
        let whole = fs::read(&path).expect("file");
        let (head, rest) = whole.split_at(whole.len() / 2);
        fs::write(&path, head).expect("first half");
        let finisher = {
            let path = path.clone();
            let rest = rest.to_vec();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut file = OpenOptions::new().append(true).open(&path).expect("open");
                file.write_all(&rest).expect("second half");
            })
        };
        reg.register(record("ours", &[], 60, 2.0))
            .await
            .expect("register");
        finisher.join().expect("finisher");
        let json = read_json(&path);
        assert!(json["peers"]["theirs"].is_object() && json["peers"]["ours"].is_object());
        assert!(corrupt_files(dir.path()).is_empty());
    }

    /// A change whose caller gives up while another process holds the lock is withdrawn:
    /// when the lock frees, it is not applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_given_up_before_the_lock_never_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileRegistry::open(&path).expect("open");
        let held = File::open(dir.path()).expect("folder");
        held.lock().expect("hold the folder lock");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            reg.register(record("late", &[], 60, 1.0)),
        )
        .await;
        assert!(gave_up.is_err(), "the lock is held: no answer yet");
        held.unlock().expect("release");
        reg.register(record("after", &[], 60, 2.0))
            .await
            .expect("register");
        let json = read_json(&path);
        assert!(json["peers"]["after"].is_object());
        assert!(
            json["peers"].get("late").is_none(),
            "a withdrawn change landed"
        );
    }

    /// An older server holds only the sidecar `.lock`: a write waits for it too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_legacy_sidecar_lock_is_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileRegistry::open(&path).expect("open");
        let sidecar = File::create(dir.path().join("peer_registry.json.lock")).expect("sidecar");
        sidecar.lock().expect("hold the sidecar lock");
        let write = tokio::spawn({
            let reg = reg.clone();
            async move { reg.register(record("a", &[], 60, 1.0)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !path.exists(),
            "written while an older server held its lock"
        );
        sidecar.unlock().expect("release");
        write.await.expect("task").expect("register");
        assert!(read_json(&path)["peers"]["a"].is_object());
    }

    /// Every write syncs the temp file, renames it over the data file and syncs the
    /// folder, in that order: the power-cut promise rests on all three.
    #[tokio::test]
    async fn every_write_syncs_file_and_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = LocalFileRegistry::open(dir.path().join("r.json")).expect("open");
        reg.register(record("a", &[], 60, 1.0))
            .await
            .expect("register");
        let log = reg.inner.durability_log.lock().expect("log").clone();
        assert_eq!(
            log,
            ["sync temp file", "rename over the data file", "sync folder"]
        );
    }

    /// A symlinked path: the link stays, its target is written, the lock and temp files
    /// live beside the target.
    #[tokio::test]
    async fn a_symlinked_path_writes_its_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("dir");
        let target = real.join("peers.json");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let reg = LocalFileRegistry::open(&link).expect("open");
        assert_eq!(reg.path(), target);
        reg.register(record("a", &[], 60, 1.0))
            .await
            .expect("register");
        assert!(
            fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert!(read_json(&target)["peers"]["a"].is_object());
        assert!(real.join("peers.json.lock").exists());
    }

    /// A directory at the registry path is refused when the registry opens.
    #[test]
    fn a_directory_is_not_a_registry_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = LocalFileRegistry::open(dir.path()).err().expect("refused");
        assert!(error.to_string().contains("a directory"), "{error}");
    }

    /// Temp files left by a killed writer are removed when the registry opens.
    #[test]
    fn stale_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let stale = dir.path().join(".peer_registry.json.abc123.tmp");
        let unrelated = dir.path().join("notes.tmp");
        fs::write(&stale, b"half").expect("seed");
        fs::write(&unrelated, b"keep").expect("seed");
        LocalFileRegistry::open(&path).expect("open");
        assert!(!stale.exists());
        assert!(unrelated.exists());
    }

    /// Expired records leave on cleanup; a dry run reports them and removes nothing.
    #[tokio::test]
    async fn cleanup_removes_expired_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = LocalFileRegistry::open(dir.path().join("r.json")).expect("open");
        reg.register(record("short", &[], 10, 0.0))
            .await
            .expect("register");
        reg.register(record("long", &[], 1000, 0.0))
            .await
            .expect("register");
        assert_eq!(
            reg.cleanup(20.0, true, &Progress::default())
                .await
                .expect("dry"),
            vec!["short"]
        );
        assert_eq!(reg.list_all(&all(20.0)).await.expect("list").peers.len(), 2);
        assert_eq!(
            reg.cleanup(20.0, false, &Progress::default())
                .await
                .expect("cleanup"),
            vec!["short"]
        );
        assert_eq!(reg.list_all(&all(20.0)).await.expect("list").peers.len(), 1);
        assert!(
            reg.cleanup(20.0, false, &Progress::default())
                .await
                .expect("again")
                .is_empty()
        );
    }

    /// Update of a peer the file does not hold reports None and writes nothing.
    #[tokio::test]
    async fn update_and_unregister_of_unknown_peer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        let reg = LocalFileRegistry::open(&path).expect("open");
        let beat = Heartbeat::default();
        assert!(
            reg.update("ghost", &beat, 1.0)
                .await
                .expect("update")
                .is_none()
        );
        assert!(!reg.unregister("ghost").await.expect("unregister"));
        assert!(!path.exists(), "nothing was written");
    }

    /// Two registries with separate handles, 200 registrations each at once: all 400 stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let reg = LocalFileRegistry::open(&path).expect("open");
                tokio::spawn(async move {
                    for i in 0..200 {
                        reg.register(record(&format!("w{w}-p{i}"), &[], 600, 1.0))
                            .await
                            .expect("register");
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        let json = read_json(&path);
        assert_eq!(json["peers"].as_object().expect("peers").len(), 400);
        let fresh = LocalFileRegistry::open(&path).expect("open");
        assert_eq!(
            fresh.list_all(&all(2.0)).await.expect("list").peers.len(),
            400
        );
    }

    /// Group commit: 32 changes of one process arriving at once share a few writes instead
    /// of one write and fsync each, and every caller gets its own answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_share_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileRegistry::open(&path).expect("open");
        reg.register(record("known", &[], 600, 1.0))
            .await
            .expect("register");
        let writes_before = reg.inner.writes.load(std::sync::atomic::Ordering::Relaxed);
        let registers = (0..30).map(|i| reg.register(record(&format!("p{i:02}"), &[], 600, 1.0)));
        let heartbeat = Heartbeat::new("known", None, None, None, None).expect("valid");
        let (stored, updated, missing) = tokio::join!(
            futures::future::join_all(registers),
            reg.update("known", &heartbeat, 5.0),
            reg.update("nobody", &heartbeat, 5.0),
        );
        let writes = reg.inner.writes.load(std::sync::atomic::Ordering::Relaxed) - writes_before;
        assert!(
            writes < 32 / 2,
            "32 concurrent changes took {writes} writes"
        );
        for (i, s) in stored.into_iter().enumerate() {
            let s = s.expect("register");
            assert!(s.created);
            assert_eq!(s.record.peer_id, format!("p{i:02}"));
        }
        assert_eq!(
            updated.expect("update").expect("known").record.last_seen,
            5.0
        );
        assert!(missing.expect("update").is_none());
        let json = read_json(&path);
        assert_eq!(json["peers"].as_object().expect("peers").len(), 31);
        assert_eq!(json["peers"]["known"]["last_seen"], 5.0);
    }

    /// In a batch, a change that fails answers only its own caller; the others are
    /// written. A change that panics (a bug) fails its batch's callers but does not wedge
    /// the queue: the next change is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_and_panicking_changes_do_not_take_others_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileRegistry::open(&path).expect("open");
        let refused = reg.commit(|_, _| -> Result<((), bool), RegistryError> {
            Err(RegistryError::Remote("refused on purpose".to_owned()))
        });
        let (first, failed, second) = tokio::join!(
            reg.register(record("a", &[], 600, 1.0)),
            refused,
            reg.register(record("b", &[], 600, 1.0)),
        );
        first.expect("register a");
        second.expect("register b");
        let error = failed.expect_err("the failing change");
        assert_eq!(error.to_string(), "refused on purpose");
        assert_eq!(
            read_json(&path)["peers"].as_object().expect("peers").len(),
            2
        );

        let panicked = reg
            .commit(|_, _| -> Result<((), bool), RegistryError> { panic!("a bug in a change") })
            .await;
        assert!(panicked.is_err());
        let after = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            reg.register(record("c", &[], 600, 1.0)),
        )
        .await
        .expect("the queue is not wedged");
        after.expect("register c");
        assert_eq!(
            read_json(&path)["peers"].as_object().expect("peers").len(),
            3
        );
    }

    /// A change written by another handle is seen by the next read (the cache is checked
    /// against the file, not trusted).
    #[tokio::test]
    async fn reads_see_other_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        let a = LocalFileRegistry::open(&path).expect("open");
        let b = LocalFileRegistry::open(&path).expect("open");
        assert!(a.list_all(&all(1.0)).await.expect("list").peers.is_empty());
        b.register(record("x", &[], 60, 1.0))
            .await
            .expect("register");
        assert_eq!(a.list_all(&all(1.0)).await.expect("list").peers.len(), 1);
    }
}
