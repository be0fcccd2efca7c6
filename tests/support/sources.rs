//! Sources for the coordinator's tests that live outside `src/`: an always-failing one.
//! (The in-memory source is `peer_discovery_mcp::source::MemorySource`.)

use async_trait::async_trait;
use peer_discovery_mcp::peer::{Heartbeat, PeerFilter, PeerRecord};
use peer_discovery_mcp::source::{Listing, Progress, Source, SourceError, SourceName, Stored};

/// A source whose every call fails with the same error.
pub struct FailingSource {
    pub name: SourceName,
    pub error: SourceError,
}

impl FailingSource {
    pub fn new(name: &str, error: SourceError) -> Self {
        FailingSource {
            name: SourceName::new(name).expect("valid source name"),
            error,
        }
    }
}

#[async_trait]
impl Source for FailingSource {
    fn name(&self) -> SourceName {
        self.name.clone()
    }
    async fn register(&self, _: PeerRecord) -> Result<Stored, SourceError> {
        Err(self.error.clone())
    }
    async fn update(&self, _: &str, _: &Heartbeat, _: f64) -> Result<Option<Stored>, SourceError> {
        Err(self.error.clone())
    }
    async fn list(&self, _: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
        Err(self.error.clone())
    }
    async fn unregister(&self, _: &str) -> Result<bool, SourceError> {
        Err(self.error.clone())
    }
    async fn cleanup(&self, _: f64, _: bool, _: &Progress) -> Result<Vec<String>, SourceError> {
        Err(self.error.clone())
    }
}
