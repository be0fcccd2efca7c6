//! Work the coordinator does by itself: reading ahead once at start, and cleaning up
//! expired peers every `cleanup_interval`. The tasks stop when their [`BackgroundTasks`]
//! guard is dropped (mini-redis's `DbDropGuard`), so no caller stops them by hand.

use std::sync::Arc;

use futures::future::join_all;
use tokio::task::JoinHandle;

use super::Coordinator;
use crate::source::Progress;

/// The coordinator's background tasks; dropping it stops them.
#[must_use = "the background tasks stop when this guard is dropped"]
pub struct BackgroundTasks {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl BackgroundTasks {
    /// How many tasks run (the warm-up, and cleanup unless its interval is 0).
    pub fn len(&self) -> usize {
        self.tasks.iter().filter(|t| !t.is_finished()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Coordinator {
    /// Starts the background work: every source reads ahead once (so the first call is
    /// fast), and cleanup runs every `cleanup_interval` (not at all when it is 0), without
    /// blocking calls. Both stop when the returned guard is dropped.
    pub fn start_background(self: &Arc<Self>) -> BackgroundTasks {
        let mut tasks = vec![tokio::spawn(warm_up(Arc::clone(self)))];
        if !self.config.cleanup_interval.is_zero() {
            tasks.push(tokio::spawn(clean_up_forever(Arc::clone(self))));
        }
        BackgroundTasks { tasks }
    }
}

async fn warm_up(coordinator: Arc<Coordinator>) {
    join_all(coordinator.sources.iter().map(|s| s.source.warm_up())).await;
}

async fn clean_up_forever(coordinator: Arc<Coordinator>) {
    let every = coordinator.config.cleanup_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match coordinator.cleanup(false, None, &Progress::default()).await {
            Ok(result) if !result.removed_peer_ids.is_empty() => tracing::info!(
                removed = result.removed_peer_ids.len(),
                "background cleanup removed expired peers"
            ),
            Ok(_) => tracing::debug!("background cleanup found nothing expired"),
            Err(e) => tracing::warn!(error = %e, "background cleanup failed"),
        }
    }
}
