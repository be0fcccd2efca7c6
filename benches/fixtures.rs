//! A registry file of a given size, shared by the criterion benches and the stdio
//! benchmark example (included by both with `#[path]`).

use std::path::Path;

use serde_json::json;

/// Writes a registry file with `n` peers, last seen from `now` back one second each: all
/// announce `storage`, one in ten also `compute`.
pub fn prefill(path: &Path, n: usize, now: f64) {
    let mut peers = serde_json::Map::new();
    for i in 0..n {
        let id = format!("peer-{i:06}");
        let caps = if i % 10 == 0 {
            json!(["storage", "compute"])
        } else {
            json!(["storage"])
        };
        peers.insert(
            id.clone(),
            json!({"peer_id": id, "multiaddr": format!("/ip4/10.0.{}.{}/tcp/4001", i / 256 % 256, i % 256),
                   "capabilities": caps, "first_seen": now - i as f64, "last_seen": now - i as f64,
                   "source": "local_file", "ttl_seconds": 604800, "metadata": {"rack": i % 40}}),
        );
    }
    let file = json!({"peers": peers, "last_cleanup": now});
    std::fs::write(path, serde_json::to_vec(&file).expect("json")).expect("write registry");
}
