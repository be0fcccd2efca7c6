//! `LocalFileRegistry`: one JSON file on this machine, shared by every server process
//! (and by the Python `ipfs_datasets_py` module) that points at it.
//!
//! File format: `{"peers": {"<peer_id>": {record}}, "last_cleanup": <unix seconds>}`.
//!
//! Safety rules, each closing a hole of the Python module:
//! - every read-modify-write holds an advisory lock on the sidecar `<file>.lock` (the data
//!   file's inode is replaced by each rename, so a lock on it would protect nothing);
//! - every write goes to a temp file in the same folder, is fsynced, renamed over the data
//!   file, and the folder is fsynced, so a crash leaves the old or the new file, never half;
//! - a file that does not parse is renamed to `<file>.corrupt-<unix time>` and reported,
//!   never overwritten; records that break a rule are kept in the file but not served;
//! - a parsed file is cached and re-read only when its inode, size or mtime change.
//!
//! The parsed file is a [`format::RegistryFile`] (the file's layout, streamed in and
//! written back) over a [`table::PeerTable`] (the records, held compactly).

mod format;
mod table;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Listing, PeerRegistry, Progress, RegistryError, SourceName, Stored};
use crate::peer::{Heartbeat, PeerFilter, PeerRecord};
use format::RegistryFile;
#[doc(hidden)]
pub use format::reencode_registry_bytes;

/// The registry file on disk, as a cheap cloneable handle.
#[derive(Clone)]
pub struct LocalFileRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    /// The last parsed content and the stamp of the file it came from.
    cache: Mutex<Option<Snapshot>>,
    notices: Mutex<Vec<String>>,
    /// How many times the file was read and parsed (the cache makes this rare).
    parses: std::sync::atomic::AtomicU64,
    /// Held while the file is parsed.
    parsing: Mutex<()>,
    /// Changes waiting for the next write (group commit).
    queue: Mutex<WriteQueue>,
    /// How many times the file was written (a batch of changes is one write).
    writes: std::sync::atomic::AtomicU64,
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
    /// Applies the change to the file. A change that fails must leave the file as it
    /// was: the others of its batch are still written.
    fn apply(&mut self, inner: &Inner, file: &mut RegistryFile) -> Applied;
    /// Answers the caller once the batch's outcome is known: `written` is `Ok` when the
    /// write that holds the change is durable, or none was needed.
    fn answer(self: Box<Self>, written: Result<(), RegistryError>);
}

/// A change and the caller waiting for its answer.
struct Waiting<T, F> {
    change: Option<F>,
    outcome: Option<Result<T, RegistryError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, RegistryError>>,
}

impl<T, F> Pending for Waiting<T, F>
where
    T: Send,
    F: FnOnce(&Inner, &mut RegistryFile) -> Result<(T, bool), RegistryError> + Send,
{
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
        // The caller may have given up (a source timeout); the change stands anyway.
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

impl LocalFileRegistry {
    /// Opens (creating folders as needed) the registry at `path`: takes the lock once to
    /// prove the folder is writable and removes temp files a killed writer left. The file
    /// itself is read by the first call (or [`PeerRegistry::warm_up`]), so a large registry
    /// does not delay the server's start. Blocking; call before serving.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let path = path.into();
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
        let lock_path = dir.join(format!("{file_name}.lock"));
        let inner = Inner {
            path,
            lock_path,
            cache: Mutex::new(None),
            notices: Mutex::new(Vec::new()),
            parses: std::sync::atomic::AtomicU64::new(0),
            parsing: Mutex::new(()),
            queue: Mutex::new(WriteQueue::default()),
            writes: std::sync::atomic::AtomicU64::new(0),
        };
        {
            let _lock = inner.lock()?;
            inner.remove_stale_temp_files(&dir, &file_name);
            // Writes go through a temp file in the folder: prove now that one can be made.
            tempfile::Builder::new()
                .prefix(&Inner::temp_prefix(&file_name))
                .suffix(".tmp")
                .tempfile_in(&dir)
                .map_err(|e| RegistryError::io("creating a file in", &dir, e))?;
        }
        Ok(LocalFileRegistry {
            inner: Arc::new(inner),
        })
    }

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
    /// which nothing changed is not written.
    async fn commit<T, F>(&self, change: F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut RegistryFile) -> Result<(T, bool), RegistryError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.inner.queue();
            queue.pending.push(Box::new(Waiting {
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

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Holds the advisory lock until dropped (closing the file releases it).
struct LockGuard(#[allow(dead_code)] File);

impl Inner {
    fn lock(&self) -> Result<LockGuard, RegistryError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| RegistryError::io("opening lock file", &self.lock_path, e))?;
        file.lock()
            .map_err(|e| RegistryError::io("locking", &self.lock_path, e))?;
        Ok(LockGuard(file))
    }

    fn temp_prefix(file_name: &str) -> String {
        format!(".{file_name}.")
    }

    fn remove_stale_temp_files(&self, dir: &Path, file_name: &str) {
        let prefix = Self::temp_prefix(file_name);
        let Ok(entries) = fs::read_dir(dir) else {
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

    /// Reads the file as it is now: the cached parse when the file has not changed.
    /// `Err(bytes)`-style outcome: `Ok(Err(e))` means the file exists but does not parse.
    fn read_current(&self) -> Result<Result<Snapshot, serde_json::Error>, RegistryError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Ok(Snapshot {
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
        let stamp = Some(FileStamp::of(&meta));
        if let Some(snapshot) = self.cached()
            && snapshot.stamp == stamp
        {
            return Ok(Ok(snapshot));
        }
        // One parse at a time: callers that arrive while a parse of this same version is
        // under way wait for it instead of holding a second copy of the registry.
        let _parsing = self
            .parsing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(snapshot) = self.cached()
            && snapshot.stamp == stamp
        {
            return Ok(Ok(snapshot));
        }
        self.parses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let parsed = RegistryFile::parse(&mut file, usize::try_from(meta.len()).unwrap_or(0));
        if let Err(e) = &parsed
            && e.is_io()
        {
            return Err(RegistryError::io(
                "reading",
                &self.path,
                std::io::Error::other(e.to_string()),
            ));
        }
        Ok(parsed.map(|parsed| {
            let snapshot = Snapshot {
                stamp,
                file: Arc::new(parsed),
            };
            self.set_cache(Some(snapshot.clone()));
            snapshot
        }))
    }

    /// The current content, for a caller that holds the lock: a corrupt file is kept aside
    /// and the registry goes on from an empty state.
    fn load_locked(&self) -> Result<Snapshot, RegistryError> {
        match self.read_current()? {
            Ok(snapshot) => Ok(snapshot),
            Err(parse_error) => {
                let aside = self.keep_aside()?;
                self.notice(format!(
                    "registry file `{}` did not parse ({parse_error}); it was kept aside as `{}` and the registry started again from empty",
                    self.path.display(),
                    aside.display()
                ));
                let snapshot = Snapshot {
                    stamp: None,
                    file: Arc::new(RegistryFile::default()),
                };
                self.set_cache(Some(snapshot.clone()));
                Ok(snapshot)
            }
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

    /// The current content for a reader. Readers take no lock (writes are atomic renames);
    /// only a corrupt file sends them through the locked path, which keeps it aside.
    fn read(&self) -> Result<Arc<RegistryFile>, RegistryError> {
        match self.read_current()? {
            Ok(snapshot) => Ok(snapshot.file),
            Err(_) => {
                let _lock = self.lock()?;
                Ok(self.load_locked()?.file)
            }
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
            let mut batch = {
                let mut queue = self.queue();
                if queue.pending.is_empty() {
                    queue.writing = false;
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            let written = self.apply_and_write(&mut batch);
            for change in batch {
                change.answer(written.clone());
            }
        }
    }

    /// One read-modify-write under the lock for a whole batch of changes, in the order
    /// they were queued; the file is written once if any of them changed it.
    fn apply_and_write(&self, batch: &mut [Box<dyn Pending>]) -> Result<(), RegistryError> {
        let _lock = self.lock()?;
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
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    /// Temp file in the same folder, fsync, rename over the data file, fsync the folder.
    fn write_atomically(
        &self,
        content: &RegistryFile,
        changes: usize,
    ) -> Result<Option<FileStamp>, RegistryError> {
        let dir = parent_dir(&self.path);
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let io = |action| move |e| RegistryError::io(action, &self.path, e);
        let mut temp = tempfile::Builder::new()
            .prefix(&Self::temp_prefix(&file_name))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(io("creating temp file for"))?;
        // Keep the permissions of the file being replaced (tempfile creates 0600).
        if let Ok(meta) = fs::metadata(&self.path) {
            let _ = temp.as_file().set_permissions(meta.permissions());
        }
        let started = std::time::Instant::now();
        {
            let mut writer = BufWriter::with_capacity(256 * 1024, temp.as_file_mut());
            content.write_to(&mut writer).map_err(io("writing"))?;
            writer.flush().map_err(io("writing"))?;
        }
        let written = started.elapsed();
        temp.as_file().sync_all().map_err(io("syncing"))?;
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
        if let Ok(dir_handle) = File::open(&dir) {
            // Makes the rename itself durable; some file systems refuse, which is harmless.
            let _ = dir_handle.sync_all();
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
                file.last_cleanup = now;
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

    /// A file that does not parse is kept aside, reported once, and never overwritten.
    #[tokio::test]
    async fn corrupt_file_is_kept_aside_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        fs::write(&path, b"{\"peers\": {\"a\": tru").expect("seed");
        let reg = LocalFileRegistry::open(&path).expect("open");
        reg.warm_up().await;
        let notices = reg.take_notices();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].contains("did not parse"), "{}", notices[0]);
        assert!(reg.take_notices().is_empty());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            fs::read(aside[0].path()).expect("aside"),
            b"{\"peers\": {\"a\": tru"
        );
        assert!(
            reg.list_all(&all(0.0))
                .await
                .expect("list")
                .peers
                .is_empty()
        );

        // Corrupted again while running: the next read keeps that one aside too.
        reg.register(record("b", &[], 60, 1.0))
            .await
            .expect("register");
        fs::write(&path, b"garbage").expect("corrupt");
        assert!(
            reg.list_all(&all(2.0))
                .await
                .expect("list")
                .peers
                .is_empty()
        );
        assert_eq!(reg.take_notices().len(), 1);
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
