//! `LocalFileSource`: one JSON file on this machine, shared by every server process
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
//!   later; one that took the lock completes (see [`crate::source::Commitment`]).
//! - A symlinked registry path is resolved: the target is read, written and locked.
//! - The file is written with mode 0600 (peer records are no one else's business).
//! - A parsed file is cached and re-read only when its inode, size or mtime change.
//!
//! Layout: `disk.rs` holds the locks, one look at the file, keeping a corrupt file aside
//! and the atomic write; `commit.rs` the group commit (one write for the changes that
//! queue meanwhile); `format.rs` the file's layout (`RegistryFile`, streamed in and
//! written back) over `table.rs` (`PeerTable`, the records held compactly).

mod commit;
mod disk;
mod format;
mod options;
mod table;
mod watch;

pub use options::{LocalFileOptions, default_registry_path};

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{
    Commitment, Decide, Decision, Listing, Modified, Progress, Source, SourceError, SourceName,
};
use crate::peer::PeerFilter;
use commit::WriteQueue;
use disk::{Snapshot, resolve_symlinks};
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
pub struct LocalFileSource {
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
    /// The folder watch of the change feed, once asked for.
    watch: Mutex<Option<watch::FileWatch>>,
    /// The stamp of the file as this process last wrote it, and whether a version
    /// written by someone else was parsed since the change feed last looked: together
    /// they tell a change of our own (which the feed already has) from anyone else's.
    last_written: Mutex<Option<disk::FileStamp>>,
    parsed_foreign: AtomicBool,
    /// Every fsync and rename of a write, in order, for the test that proves none is
    /// skipped.
    #[cfg(test)]
    durability_log: Mutex<Vec<&'static str>>,
}

impl LocalFileSource {
    /// Opens (creating folders as needed) the registry at `path`, resolving a symlinked
    /// path to its target. Refuses a path that is a directory, a FIFO or anything else
    /// but a regular file, and a folder where no file can be created. Never waits for
    /// the lock: the file is read by the first call (or [`Source::warm_up`]), and
    /// temp files a killed writer left are removed now if the lock is free, else by the
    /// first write. Blocking; call before serving.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let given = path.into();
        let path = resolve_symlinks(&given)
            .map_err(|e| SourceError::io("resolving the symlink", &given, e))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                SourceError::io(
                    "opening registry",
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
                )
            })?;
        let dir = parent_dir(&path);
        fs::create_dir_all(&dir).map_err(|e| SourceError::io("creating folder", &dir, e))?;
        match fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                let kind = if meta.is_dir() {
                    "a directory"
                } else {
                    "not a regular file (a FIFO, socket or device)"
                };
                return Err(SourceError::io(
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
            Err(e) => return Err(SourceError::io("opening registry", &path, e)),
        }
        // Writes go through a temp file in the folder: prove now that one can be made.
        tempfile::Builder::new()
            .prefix(&temp_prefix(&file_name))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| SourceError::io("creating a file in", &dir, e))?;
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
            watch: Mutex::new(None),
            last_written: Mutex::new(None),
            parsed_foreign: AtomicBool::new(false),
            #[cfg(test)]
            durability_log: Mutex::new(Vec::new()),
        };
        if let Ok(Some(_lock)) = inner.try_lock() {
            inner.sweep_temp_files();
        }
        Ok(LocalFileSource {
            inner: Arc::new(inner),
        })
    }

    /// The data file (the target, when the configured path is a symlink).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T, F>(&self, job: F) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, SourceError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || job(&inner))
            .await
            .map_err(|e| SourceError::Internal(format!("local file task failed: {e}")))?
    }
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

const SOURCE: SourceName = SourceName::LOCAL_FILE;

#[async_trait]
impl Source for LocalFileSource {
    fn name(&self) -> SourceName {
        SOURCE
    }

    async fn modify(&self, peer_id: &str, decide: Decide) -> Result<Modified, SourceError> {
        let peer_id = peer_id.to_owned();
        self.commit(move |inner, file| {
            let before = file.peers.record(&peer_id);
            let (after, written) = match decide(before.as_ref()) {
                Decision::Write(mut new) => {
                    new.source = SOURCE.as_str().to_owned();
                    file.peers
                        .upsert(&new)
                        .map_err(|e| inner.encoding_error(e))?;
                    (Some(new), true)
                }
                Decision::Keep => (before.clone(), false),
                // Also drops a value of this id that does not keep the format's rules.
                Decision::Remove => (None, file.peers.remove(&peer_id)),
            };
            let modified = Modified {
                before,
                after,
                written,
                location: None,
            };
            Ok((modified, written))
        })
        .await
    }

    async fn scan(&self, hint: &PeerFilter, _progress: &Progress) -> Result<Listing, SourceError> {
        let filter = hint.clone();
        self.blocking(move |inner| {
            let file = inner.read()?;
            let (peers, matched) = file.peers.matching(&filter);
            Ok(Listing {
                peers,
                matched,
                rejected: file.peers.unusable_count() + file.peers.ahead_of_clock_count(filter.now),
                detail: None,
            })
        })
        .await
    }

    async fn remove_stale(
        &self,
        now: f64,
        _progress: &Progress,
    ) -> Result<Vec<String>, SourceError> {
        self.commit(move |_, file| {
            let removed = file.peers.remove_stale(now);
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
        std::mem::take(&mut *crate::lock(&self.inner.notices))
    }

    /// Every change of the file by another process, through a watch of its folder
    /// ([`watch`]). The file's own writes are left out (the coordinator reports them to
    /// the feed as they complete): after a burst of events settles, the feed is woken
    /// unless the file is exactly what this process last wrote and no version written by
    /// someone else was read since.
    fn watch_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let (file_watch, mut raw) = watch::watch_file(&self.inner.dir, &self.inner.path)?;
        *crate::lock(&self.inner.watch) = Some(file_watch);
        let (changes, receiver) = tokio::sync::watch::channel(0u64);
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while raw.changed().await.is_ok() {
                tokio::time::sleep(watch::SETTLE).await;
                raw.borrow_and_update();
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let foreign = inner.parsed_foreign.swap(false, Ordering::Relaxed);
                let now = fs::metadata(&inner.path)
                    .ok()
                    .map(|m| disk::FileStamp::of(&m));
                let ours = now.is_some() && now == *crate::lock(&inner.last_written);
                if !ours || foreign {
                    changes.send_modify(|n| *n += 1);
                }
                if changes.is_closed() {
                    return;
                }
            }
        });
        Some(receiver)
    }
}

/// What the tests of this folder's modules share.
#[cfg(test)]
mod test_support {
    use super::*;
    pub(super) use crate::coordinator::Direct;
    use crate::peer::{Announcement, DEFAULT_TTL_SECONDS, PeerRecord};
    use serde_json::Value;

    pub(super) fn record(peer_id: &str, caps: &[&str], ttl: i64, now: f64) -> PeerRecord {
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

    pub(super) fn all(now: f64) -> PeerFilter {
        PeerFilter::new(&[], true, now).expect("valid")
    }

    impl LocalFileSource {
        pub(super) async fn list_all(&self, filter: &PeerFilter) -> Result<Listing, SourceError> {
            Direct::list(self, filter).await
        }
    }

    pub(super) fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).expect("file")).expect("json")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::peer::Heartbeat;

    /// The file holds the Python module's shape, each record with exactly its eight keys,
    /// and a re-register keeps `first_seen`.
    #[tokio::test]
    async fn writes_the_shared_format_and_keeps_first_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/folder/peer_registry.json");
        let reg = LocalFileSource::open(&path).expect("open");
        let first = reg
            .register(record("a", &["storage"], 60, 100.0))
            .await
            .expect("register");
        assert!(first.before.is_none(), "created");
        let again = reg
            .register(record("a", &["compute"], 60, 200.0))
            .await
            .expect("register");
        assert!(again.before.is_some(), "refreshed");
        let again = again.after.expect("stored");
        assert_eq!((again.first_seen, again.last_seen), (100.0, 200.0));

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
        let reg = LocalFileSource::open(&path).expect("open");
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

    /// A directory at the registry path is refused when the registry opens.
    #[test]
    fn a_directory_is_not_a_registry_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = LocalFileSource::open(dir.path()).err().expect("refused");
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
        LocalFileSource::open(&path).expect("open");
        assert!(!stale.exists());
        assert!(unrelated.exists());
    }

    /// Expired records leave on cleanup; a dry run reports them and removes nothing.
    #[tokio::test]
    async fn cleanup_removes_expired_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = LocalFileSource::open(dir.path().join("r.json")).expect("open");
        reg.register(record("short", &[], 10, 0.0))
            .await
            .expect("register");
        reg.register(record("long", &[], 1000, 0.0))
            .await
            .expect("register");
        assert_eq!(reg.cleanup(20.0, true).await.expect("dry"), vec!["short"]);
        assert_eq!(reg.list_all(&all(20.0)).await.expect("list").peers.len(), 2);
        assert_eq!(
            reg.cleanup(20.0, false).await.expect("cleanup"),
            vec!["short"]
        );
        assert_eq!(reg.list_all(&all(20.0)).await.expect("list").peers.len(), 1);
        assert!(reg.cleanup(20.0, false).await.expect("again").is_empty());
    }

    /// Update of a peer the file does not hold reports None and writes nothing.
    #[tokio::test]
    async fn update_and_unregister_of_unknown_peer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        let reg = LocalFileSource::open(&path).expect("open");
        let beat = Heartbeat::default();
        assert!(
            reg.heartbeat("ghost", &beat, 1.0)
                .await
                .expect("update")
                .is_none()
        );
        assert!(!reg.unregister("ghost").await.expect("unregister"));
        assert!(!path.exists(), "nothing was written");
    }

    /// Unregister removes a value of the peer's id that breaks the format's rules (it is
    /// not served, but it is the peer's), and says it removed something.
    #[tokio::test]
    async fn unregister_removes_an_unreadable_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        fs::write(
            &path,
            r#"{"peers": {"broken": {"peer_id": "broken", "multiaddr": "not an address"}}, "last_cleanup": 0}"#,
        )
        .expect("seed");
        let reg = LocalFileSource::open(&path).expect("open");
        assert_eq!(reg.list_all(&all(1.0)).await.expect("list").rejected, 1);
        assert!(reg.unregister("broken").await.expect("unregister"));
        assert!(read_json(&path)["peers"].get("broken").is_none());
    }

    /// Two registries with separate handles, 200 registrations each at once: all 400 stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let reg = LocalFileSource::open(&path).expect("open");
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
        let fresh = LocalFileSource::open(&path).expect("open");
        assert_eq!(
            fresh.list_all(&all(2.0)).await.expect("list").peers.len(),
            400
        );
    }

    /// A change written by another handle is seen by the next read (the cache is checked
    /// against the file, not trusted).
    #[tokio::test]
    async fn reads_see_other_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        let a = LocalFileSource::open(&path).expect("open");
        let b = LocalFileSource::open(&path).expect("open");
        assert!(a.list_all(&all(1.0)).await.expect("list").peers.is_empty());
        b.register(record("x", &[], 60, 1.0))
            .await
            .expect("register");
        assert_eq!(a.list_all(&all(1.0)).await.expect("list").peers.len(), 1);
    }
}
