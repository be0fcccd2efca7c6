//! The registry file on disk: the locks, one look at the file (and what a look that
//! catches it half-written means), keeping a corrupt file aside, the atomic write.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::format::RegistryFile;
use super::{
    CORRUPT_AFTER, Inner, READ_SETTLE, REREAD_PAUSE, SourceError, UNSETTLED_LIMIT, parent_dir,
    temp_prefix, unix_now,
};

#[derive(Clone)]
pub(super) struct Snapshot {
    pub(super) stamp: Option<FileStamp>,
    pub(super) file: Arc<RegistryFile>,
}

/// Identifies one version of the data file: a rename gives a new inode, a rewrite in
/// place (by another tool) a new size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    pub(super) fn of(meta: &fs::Metadata) -> Self {
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
pub(super) enum Read {
    Parsed(Snapshot),
    /// The file exists but does not parse (yet: it may be half-written), or is empty
    /// (a writer in place truncates it first).
    Unsettled {
        why: Unsettled,
        stamp: FileStamp,
    },
}

pub(super) enum Unsettled {
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

/// Follows a chain of symlinks at `path` (not only its last hop) to the file it names,
/// which may not exist yet.
pub(super) fn resolve_symlinks(path: &Path) -> std::io::Result<PathBuf> {
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

/// Holds both advisory locks until dropped (closing the files releases them).
pub(super) struct LockGuard {
    _folder: File,
    _legacy: File,
}

impl Inner {
    /// Takes the folder lock and the legacy sidecar lock if both are free; `None` when
    /// another process holds either.
    pub(super) fn try_lock(&self) -> Result<Option<LockGuard>, SourceError> {
        let folder = File::open(&self.dir)
            .map_err(|e| SourceError::io("opening the folder to lock", &self.dir, e))?;
        if !try_lock_file(&folder, &self.dir)? {
            return Ok(None);
        }
        // Created again if a tmp cleaner deleted it; the folder lock is what protects us.
        let legacy = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.legacy_lock_path)
            .map_err(|e| SourceError::io("opening lock file", &self.legacy_lock_path, e))?;
        if !try_lock_file(&legacy, &self.legacy_lock_path)? {
            return Ok(None);
        }
        Ok(Some(LockGuard {
            _folder: folder,
            _legacy: legacy,
        }))
    }

    /// Since when the writer waits for a lock another process holds, if it does.
    pub(super) fn waiting_for_lock(&self) -> Option<Instant> {
        *crate::lock(&self.lock_wait)
    }

    pub(super) fn lock_wait_text(&self, since: Instant) -> String {
        format!(
            "waiting {:.1} s for the lock on `{}`, which another process holds (a stopped or busy peer-discovery-mcp, or an older one holding `{}`)",
            since.elapsed().as_secs_f64(),
            self.dir.display(),
            self.legacy_lock_path.display()
        )
    }

    pub(super) fn set_lock_wait(&self, since: Option<Instant>) {
        *crate::lock(&self.lock_wait) = since;
    }

    /// Removes temp files a killed writer left. Only while holding the lock: a live
    /// writer's temp file must not go.
    pub(super) fn sweep_temp_files(&self) {
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

    pub(super) fn encoding_error(&self, error: serde_json::Error) -> SourceError {
        SourceError::io(
            "encoding a record for",
            &self.path,
            std::io::Error::other(error),
        )
    }

    pub(super) fn notice(&self, message: String) {
        tracing::warn!("{message}");
        crate::lock(&self.notices).push(message);
    }

    pub(super) fn cached(&self) -> Option<Snapshot> {
        crate::lock(&self.cache).clone()
    }

    pub(super) fn set_cache(&self, snapshot: Option<Snapshot>) {
        *crate::lock(&self.cache) = snapshot;
    }

    /// One look at the file as it is now: the cached parse when the file has not changed.
    pub(super) fn read_once(&self) -> Result<Read, SourceError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Read::Parsed(Snapshot {
                    stamp: None,
                    file: Arc::new(RegistryFile::default()),
                }));
            }
            Err(e) => return Err(SourceError::io("reading", &self.path, e)),
        };
        // Stamp the open handle, then read it: the stamp always belongs to the bytes read.
        let meta = file
            .metadata()
            .map_err(|e| SourceError::io("reading", &self.path, e))?;
        let stamp = FileStamp::of(&meta);
        if let Some(snapshot) = self.cached()
            && snapshot.stamp == Some(stamp)
        {
            return Ok(Read::Parsed(snapshot));
        }
        // One parse at a time: callers that arrive while a parse of this same version is
        // under way wait for it instead of holding a second copy of the registry.
        let _parsing = crate::lock(&self.parsing);
        if let Some(snapshot) = self.cached()
            && snapshot.stamp == Some(stamp)
        {
            return Ok(Read::Parsed(snapshot));
        }
        self.parses.fetch_add(1, Ordering::Relaxed);
        self.parsed_foreign.store(true, Ordering::Relaxed);
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
            Err(e) if e.is_io() => Err(SourceError::io(
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
    pub(super) fn load_locked(&self) -> Result<Snapshot, SourceError> {
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
                return Err(SourceError::Remote(format!(
                    "registry file `{}` kept changing for {} s without ever parsing (last time {why}); another process is rewriting it; nothing was written, retry later",
                    self.path.display(),
                    UNSETTLED_LIMIT.as_secs()
                )));
            }
            std::thread::sleep(REREAD_PAUSE);
        }
    }

    pub(super) fn keep_aside(&self) -> Result<PathBuf, SourceError> {
        let base = format!("{}.corrupt-{}", self.path.display(), unix_now());
        let mut aside = PathBuf::from(&base);
        let mut n = 1;
        while aside.exists() {
            aside = PathBuf::from(format!("{base}-{n}"));
            n += 1;
        }
        fs::rename(&self.path, &aside)
            .map_err(|e| SourceError::io("keeping aside corrupt registry", &self.path, e))?;
        Ok(aside)
    }

    /// The current content for a reader, who takes no lock (writers replace the file by
    /// an atomic rename) and never moves a file. A file that does not parse is served as
    /// the last good view, with a notice. With no good view yet (a cold start), it is
    /// looked at again while it keeps changing, for up to [`READ_SETTLE`]; then the read
    /// fails with a message that says to retry (an empty file that does not change is an
    /// empty registry).
    pub(super) fn read(&self) -> Result<Arc<RegistryFile>, SourceError> {
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
                    (None, why) => Err(SourceError::Remote(format!(
                        "registry file `{}` cannot be read ({why}): another process may be writing it; retry in a moment (a writer keeps it aside if it stays broken)",
                        self.path.display()
                    ))),
                };
            }
            last_stamp = Some(stamp);
            std::thread::sleep(REREAD_PAUSE);
        }
    }
}

impl Inner {
    #[cfg(test)]
    pub(super) fn log_durability(&self, step: &'static str) {
        crate::lock(&self.durability_log).push(step);
    }

    #[cfg(not(test))]
    pub(super) fn log_durability(&self, _step: &'static str) {}

    /// Temp file in the same folder (mode 0600), fsync, rename over the data file, fsync
    /// the folder.
    pub(super) fn write_atomically(
        &self,
        content: &RegistryFile,
        changes: usize,
    ) -> Result<Option<FileStamp>, SourceError> {
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let io = |action| move |e| SourceError::io(action, &self.path, e);
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
            .map_err(|e| SourceError::io("replacing", &self.path, e.error))?;
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
    pub(super) fn note_narrowed_permissions(&self) {
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
pub(super) fn try_lock_file(file: &File, path: &Path) -> Result<bool, SourceError> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(SourceError::io("locking", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use std::fs::{File, OpenOptions};
    use std::io::Write;

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
        let reg = LocalFileSource::open(&path).expect("open");
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
        let reg = LocalFileSource::open(&path).expect("open");
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
        let reg = LocalFileSource::open(&path).expect("open");
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

    /// An older server holds only the sidecar `.lock`: a write waits for it too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_legacy_sidecar_lock_is_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileSource::open(&path).expect("open");
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
        let reg = LocalFileSource::open(dir.path().join("r.json")).expect("open");
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
        let reg = LocalFileSource::open(&link).expect("open");
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
}
