//! Sources for the coordinator's tests that live outside `src/`: an always-failing one.
//! (The in-memory source is `peer_discovery_mcp::source::MemorySource`.)

use async_trait::async_trait;
use peer_discovery_mcp::peer::PeerFilter;
use peer_discovery_mcp::source::{
    Decide, Listing, Modified, Progress, Source, SourceError, SourceName,
};

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
    async fn modify(&self, _: &str, _: Decide) -> Result<Modified, SourceError> {
        Err(self.error.clone())
    }
    async fn scan(&self, _: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
        Err(self.error.clone())
    }
    async fn remove_stale(&self, _: f64, _: &Progress) -> Result<Vec<String>, SourceError> {
        Err(self.error.clone())
    }
}
