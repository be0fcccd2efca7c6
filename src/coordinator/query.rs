//! The checked input of a discover, so the coordinator takes only valid queries whatever
//! the transport (peer ids are checked the same way, by [`crate::peer::PeerId`]).

use super::{CallError, DEFAULT_DISCOVER_PEERS, MAX_DISCOVER_PEERS};

/// A checked discover: what [`Coordinator::discover`] takes, whatever the transport.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverQuery {
    /// Every one of these (normalized) capabilities must be announced.
    pub capabilities: Vec<String>,
    /// Most peers to return, 1..=[`MAX_DISCOVER_PEERS`].
    pub max_peers: usize,
    /// Also return peers whose lease has ended.
    pub include_expired: bool,
}

impl DiscoverQuery {
    /// Checks a discover's arguments; `max_peers` omitted is [`DEFAULT_DISCOVER_PEERS`].
    pub fn new(
        capability_filter: &[String],
        max_peers: Option<i64>,
        include_expired: bool,
    ) -> Result<Self, CallError> {
        let max_peers = max_peers.unwrap_or(DEFAULT_DISCOVER_PEERS);
        if !(1..=MAX_DISCOVER_PEERS).contains(&max_peers) {
            return Err(CallError::BadArgument(format!(
                "max_peers must be within 1..={MAX_DISCOVER_PEERS} (got {max_peers})"
            )));
        }
        Ok(DiscoverQuery {
            capabilities: crate::peer::normalize_capabilities(capability_filter)?,
            max_peers: max_peers as usize,
            include_expired,
        })
    }
}
