//! The arguments of each tool. Doc comments become the field descriptions an LLM reads,
//! so each says what the field means, its limits, and what leaving it out means.
//! Unknown fields are refused, so a misspelt argument is an error instead of ignored.
//! Counts are taken as any JSON number and checked by range, so `1e20` or `2.5` get the
//! range message rather than a type error.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Number;

use crate::peer::JsonObject;
use crate::source::SourceName;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterPeerArgs {
    /// The peer's id: 1 to 128 characters of A-Z a-z 0-9 . _ -. A libp2p id
    /// (`12D3KooW...`, `Qm...`) or any opaque id (`agent-7`).
    pub peer_id: String,
    /// Where to reach the peer, as a multiaddr, e.g. `/ip4/192.0.2.7/tcp/4001` or
    /// `/dns4/node.example.org/tcp/443/wss`. At most 1024 bytes. A `/p2p/<id>` part must
    /// equal peer_id; `/ipfs/` is stored as `/p2p/`.
    pub multiaddr: String,
    /// What the peer can do, e.g. ["storage", "compute"]. At most 32 names, each 1 to 39
    /// characters of lower-case a-z 0-9 . _ - (duplicates dropped). Omitted: none.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub capabilities: Vec<String>,
    /// How long the registration lasts without a heartbeat, in seconds (1 to 604800).
    /// Omitted: the server's default (3600 unless configured otherwise).
    #[schemars(with = "Option<i64>", range(min = 1, max = 604800))]
    pub ttl_seconds: Option<Number>,
    /// Any JSON object describing the peer (version, region, price...), at most 4096 bytes
    /// as JSON. Omitted: an empty object.
    pub metadata: Option<JsonObject>,
    /// Which sources to write to. Omitted: every source (those not on report why).
    pub sources: Option<Vec<SourceName>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoverPeersArgs {
    /// Only peers that announce every one of these capabilities, e.g. ["compute"].
    /// Omitted or empty: peers with any capabilities.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub capability_filter: Vec<String>,
    /// Most peers to return, 1 to 1000. Omitted: 50. `total_matched` tells how many matched.
    #[schemars(with = "Option<i64>", range(min = 1, max = 1000))]
    pub max_peers: Option<Number>,
    /// Which sources to ask. Omitted: every source (those not on report why).
    pub sources: Option<Vec<SourceName>>,
    /// Also return peers whose lease has ended. Omitted: false.
    #[serde(default)]
    pub include_expired: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePeerArgs {
    /// The id the peer was registered with.
    pub peer_id: String,
    /// A new multiaddr. Omitted: unchanged.
    pub multiaddr: Option<String>,
    /// A new list of capabilities, replacing the old one. Omitted: unchanged.
    #[schemars(length(max = 32))]
    pub capabilities: Option<Vec<String>>,
    /// A new metadata object, replacing the old one. Omitted: unchanged.
    pub metadata: Option<JsonObject>,
    /// A new lease length in seconds (1 to 604800). Omitted: unchanged.
    #[schemars(with = "Option<i64>", range(min = 1, max = 604800))]
    pub ttl_seconds: Option<Number>,
    /// Which sources to update. Omitted: every source (those not on report why).
    pub sources: Option<Vec<SourceName>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnregisterPeerArgs {
    /// The id the peer was registered with.
    pub peer_id: String,
    /// Which sources to remove it from. Omitted: every source (those not on report why).
    pub sources: Option<Vec<SourceName>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupExpiredPeersArgs {
    /// Which sources to clean. Omitted: every source (those not on report why).
    pub sources: Option<Vec<SourceName>>,
    /// Only report what would be removed. Omitted: false.
    #[serde(default)]
    pub dry_run: bool,
}

/// `registry_status` takes no arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryStatusArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerChangesArgs {
    /// The `cursor` of your previous peer_changes answer: the events after it come back.
    /// Omitted: start from now (only changes after this call; call discover_peers for the
    /// current set first).
    pub cursor: Option<String>,
    /// Only changes of peers that announce every one of these capabilities, e.g.
    /// ["compute"]: a peer that starts matching is `added`, one that stops is `removed`
    /// with reason `no_longer_matches`. Omitted or empty: every peer.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub capability_filter: Vec<String>,
    /// Seconds to wait for a first event when there is none yet, 0 to 50 (a long poll;
    /// progress notifications are sent while it waits when the request has a
    /// progressToken). Omitted: 0, answer at once.
    #[schemars(with = "Option<f64>", range(min = 0, max = 50))]
    pub wait_seconds: Option<Number>,
    /// Most events in one answer, 1 to 1000. Omitted: 100. `more` says when others wait.
    #[schemars(with = "Option<i64>", range(min = 1, max = 1000))]
    pub max_events: Option<Number>,
}
