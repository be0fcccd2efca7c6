//! Telling the change feed that the file changed, made by this process or any other.
//!
//! The registry's folder is watched, not the file: every writer that is not the Python
//! module replaces the file by renaming a temp file over it, so the file's inode changes
//! with each write and a watch on it would go stale after the first. Events that name
//! the registry file wake the feed, which reads the file again (the read is cached by the
//! file's stamp; a file caught mid-write is the transient case the reader already
//! handles, served from the last good view until it settles). When the system's watch
//! limit is reached (inotify's `max_user_watches` or `max_user_instances`), the file's
//! stamp is polled every [`POLL_INTERVAL`] instead.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{Config, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

/// How long a burst of events (a temp file written, renamed over the file) is let settle
/// before the feed is told.
pub const SETTLE: Duration = Duration::from_millis(20);

/// How often the file's stamp is looked at when no watch can be had.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A watch that lives as long as this value.
pub struct FileWatch {
    _watcher: Box<dyn Watcher + Send + Sync>,
}

/// Watches `dir` for changes of the file named `file_name` in it, falling back to polling
/// the file when the system refuses a watch. The receiver's value counts the changes seen.
pub fn watch_file(dir: &Path, file: &Path) -> Option<(FileWatch, watch::Receiver<u64>)> {
    let (sender, receiver) = watch::channel(0u64);
    let sender = Arc::new(sender);
    let file_name: OsString = file.file_name()?.to_owned();
    let on_event = {
        let sender = Arc::clone(&sender);
        move |event: notify::Result<notify::Event>| {
            let ours = match &event {
                Ok(event) => event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(file_name.as_os_str())),
                // An overflowed queue may have dropped our file's events: read again.
                Err(_) => true,
            };
            if ours {
                sender.send_modify(|changes| *changes += 1);
            }
        }
    };
    let watched = RecommendedWatcher::new(on_event.clone(), Config::default()).and_then(|mut w| {
        w.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Box::new(w) as Box<dyn Watcher + Send + Sync>)
    });
    let watcher = match watched {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(
                error = %e,
                folder = %dir.display(),
                "cannot watch the registry folder (the system's watch limit?); polling the file every {POLL_INTERVAL:?} instead"
            );
            let mut poll = PollWatcher::new(
                on_event,
                Config::default().with_poll_interval(POLL_INTERVAL),
            )
            .ok()?;
            poll.watch(file, RecursiveMode::NonRecursive).ok()?;
            Box::new(poll)
        }
    };
    Some((FileWatch { _watcher: watcher }, receiver))
}
