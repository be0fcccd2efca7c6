//! The coordinator's rules applied to one source directly, without fan-out, merge or
//! outcomes: for tests, benchmarks and programs that drive a single source. Every method
//! hands the source the same rule the coordinator would ([`super::policy`]).

use async_trait::async_trait;

use super::policy;
use crate::peer::{Heartbeat, PeerFilter, PeerRecord};
use crate::source::{Listing, Modified, Progress, Source, SourceError};

/// The operations of the coordinator, on one source.
#[async_trait]
pub trait Direct: Source {
    /// Stores `record` as the peer's announcement (see [`policy::register`]), at the
    /// time the record was last seen.
    async fn register(&self, record: PeerRecord) -> Result<Modified, SourceError> {
        let peer_id = record.peer_id.clone();
        let now = record.last_seen;
        self.modify(&peer_id, policy::register(record, now)).await
    }

    /// Heartbeats `peer_id` at `now`; `None` when the source holds no copy of it.
    async fn heartbeat(
        &self,
        peer_id: &str,
        heartbeat: &Heartbeat,
        now: f64,
    ) -> Result<Option<PeerRecord>, SourceError> {
        let decide = policy::heartbeat(heartbeat.clone(), now, self.abilities());
        Ok(self.modify(peer_id, decide).await?.after)
    }

    /// Removes the peer; false when the source held no copy of it.
    async fn unregister(&self, peer_id: &str) -> Result<bool, SourceError> {
        let modified = self.modify(peer_id, policy::unregister()).await?;
        Ok(modified.written && modified.after.is_none())
    }

    /// The records `filter` admits, checked again as the coordinator does.
    async fn list(&self, filter: &PeerFilter) -> Result<Listing, SourceError> {
        let mut listing = self.scan(filter, &Progress::default()).await?;
        super::merge::recheck(&mut listing, filter);
        Ok(listing)
    }

    /// Cleanup at `now` (or, with `dry_run`, what it would remove); the removed ids.
    async fn cleanup(&self, now: f64, dry_run: bool) -> Result<Vec<String>, SourceError> {
        super::clean_up(self, now, dry_run, &Progress::default()).await
    }
}

impl<S: Source + ?Sized> Direct for S {}
