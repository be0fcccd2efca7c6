//! Group commit: the changes of one process that arrive while the file is being written
//! share the next write (one lock, one rewrite, one fsync), in the order they arrived.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::disk::{LockGuard, Snapshot};
use super::format::RegistryFile;
use super::{Commitment, Inner, LOCK_POLL_MAX, LocalFileSource, SourceError};

/// Group commit: changes that arrive while the file is being written wait here and then
/// share the next write (one lock, one rewrite, one fsync) instead of queueing one each.
#[derive(Default)]
pub(super) struct WriteQueue {
    pub(super) pending: Vec<Box<dyn Pending>>,
    /// A blocking thread is writing batches; a new change only needs to join the queue.
    pub(super) writing: bool,
}

/// What applying one queued change did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Changed,
    Unchanged,
    /// The change failed; it is meant to leave the file as it was, but the in-memory
    /// copy is not trusted to be a faithful read of the file any more.
    Failed,
}

/// A queued change, its answer type erased.
pub(super) trait Pending: Send {
    /// The caller's hold on the change: withdrawn changes are dropped unapplied.
    fn commitment(&self) -> &Commitment;
    /// Applies the change to the file. A change that fails must leave the file as it
    /// was: the others of its batch are still written.
    fn apply(&mut self, inner: &Inner, file: &mut RegistryFile) -> Applied;
    /// Answers the caller once the batch's outcome is known: `written` is `Ok` when the
    /// write that holds the change is durable, or none was needed.
    fn answer(self: Box<Self>, written: Result<(), SourceError>);
}

/// A change and the caller waiting for its answer.
pub(super) struct Waiting<T, F> {
    commitment: Arc<Commitment>,
    change: Option<F>,
    outcome: Option<Result<T, SourceError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, SourceError>>,
}

impl<T, F> Pending for Waiting<T, F>
where
    T: Send,
    F: FnOnce(&Inner, &mut RegistryFile) -> Result<(T, bool), SourceError> + Send,
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

    fn answer(self: Box<Self>, written: Result<(), SourceError>) {
        let answer = match (self.outcome, written) {
            // The change's own failure is its answer, whatever happened to the batch.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(answer)), Ok(())) => Ok(answer),
            // The batch could not be read, or its write failed: nothing of it is durable.
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Err(SourceError::Internal(
                "a registry change was never applied".to_owned(),
            )),
        };
        // A caller that took part in a write does not give up (see `Commitment`); a
        // dropped receiver only means its whole call was cancelled.
        let _ = self.reply.send(answer);
    }
}

impl LocalFileSource {
    /// Queues `change` for the next write and waits until that write is durable (or
    /// failed). `change` returns its answer and whether it changed the file; a batch in
    /// which nothing changed is not written. If the caller gives up (drops this future, or
    /// the coordinator withdraws its [`Commitment`]) before the writer took the change,
    /// the change is never applied.
    pub(super) async fn commit<T, F>(&self, change: F) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut RegistryFile) -> Result<(T, bool), SourceError> + Send + 'static,
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
            Err(SourceError::Internal(
                "the local file writer stopped before answering".to_owned(),
            ))
        })
    }
}

impl Inner {
    pub(super) fn queue(&self) -> std::sync::MutexGuard<'_, WriteQueue> {
        crate::lock(&self.queue)
    }

    /// Runs [`Inner::write_queued`] on tokio's blocking pool (on this thread when there
    /// is no runtime).
    pub(super) fn start_writer(inner: Arc<Inner>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || inner.write_queued());
            }
            Err(_) => inner.write_queued(),
        }
    }

    /// Writes queued changes, a batch at a time, until the queue is empty. Runs on one
    /// blocking thread at a time (the one whose caller found no writer running).
    pub(super) fn write_queued(self: &Arc<Self>) {
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
    pub(super) fn wait_for_lock(&self) -> Result<Option<LockGuard>, SourceError> {
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
    pub(super) fn apply_and_write(
        &self,
        batch: &mut [Box<dyn Pending>],
    ) -> Result<(), SourceError> {
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
            *crate::lock(&self.last_written) = written;
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use crate::peer::Heartbeat;
    use std::fs::File;

    /// A change whose caller gives up while another process holds the lock is withdrawn:
    /// when the lock frees, it is not applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_given_up_before_the_lock_never_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileSource::open(&path).expect("open");
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

    /// Group commit: 32 changes of one process arriving at once share a few writes instead
    /// of one write and fsync each, and every caller gets its own answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_share_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peer_registry.json");
        let reg = LocalFileSource::open(&path).expect("open");
        reg.register(record("known", &[], 600, 1.0))
            .await
            .expect("register");
        let writes_before = reg.inner.writes.load(std::sync::atomic::Ordering::Relaxed);
        let registers = (0..30).map(|i| reg.register(record(&format!("p{i:02}"), &[], 600, 1.0)));
        let heartbeat = Heartbeat::new("known", None, None, None, None).expect("valid");
        let (stored, updated, missing) = tokio::join!(
            futures::future::join_all(registers),
            reg.heartbeat("known", &heartbeat, 5.0),
            reg.heartbeat("nobody", &heartbeat, 5.0),
        );
        let writes = reg.inner.writes.load(std::sync::atomic::Ordering::Relaxed) - writes_before;
        assert!(
            writes < 32 / 2,
            "32 concurrent changes took {writes} writes"
        );
        for (i, s) in stored.into_iter().enumerate() {
            let s = s.expect("register");
            assert!(s.before.is_none(), "created");
            assert_eq!(s.after.expect("stored").peer_id, format!("p{i:02}"));
        }
        assert_eq!(updated.expect("update").expect("known").last_seen, 5.0);
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
        let reg = LocalFileSource::open(&path).expect("open");
        let refused = reg.commit(|_, _| -> Result<((), bool), SourceError> {
            Err(SourceError::Remote("refused on purpose".to_owned()))
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
            .commit(|_, _| -> Result<((), bool), SourceError> { panic!("a bug in a change") })
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
}
