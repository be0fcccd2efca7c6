//! The real binary over stdio with rmcp's client: the whole life of a peer.

mod support;

use std::time::Duration;

use rmcp::model::ProtocolVersion;
use rmcp::transport::ConfigureCommandExt;
use serde_json::json;
use support::{call, ids, ok, read_registry};

const LIBP2P_ID: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

/// initialize, tools/list, then register → discover (with and without a filter) → update →
/// a short-TTL peer expires → cleanup reports it → unregister, on the default registry path.
#[tokio::test]
async fn a_peer_lives_and_leaves() {
    let cache = tempfile::tempdir().expect("tempdir");
    // No --registry-path: the default path under XDG_CACHE_HOME, as a fresh install uses.
    let cmd = support::command().configure(|c| {
        c.env("XDG_CACHE_HOME", cache.path());
    });
    let client = support::start_command(cmd).await;
    let registry = cache.path().join("ipfs_datasets_py/peer_registry.json");

    let info = client.peer_info().expect("initialize answer");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("peer-discovery-mcp")
    );
    assert_eq!(info.protocol_version, ProtocolVersion::V_2025_11_25);
    assert!(
        info.instructions
            .as_deref()
            .unwrap_or("")
            .contains("register_peer")
    );

    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "cleanup_expired_peers",
            "discover_peers",
            "peer_changes",
            "register_peer",
            "registry_status",
            "unregister_peer",
            "update_peer"
        ]
    );

    // Register two peers: a libp2p node with /ipfs/ in its address, and an opaque agent.
    let node = call(
        &client,
        "register_peer",
        json!({
            "peer_id": LIBP2P_ID,
            "multiaddr": format!("/ip4/192.0.2.7/tcp/4001/ipfs/{LIBP2P_ID}"),
            "capabilities": ["storage", "compute", "storage"],
            "metadata": {"region": "eu"}
        }),
    )
    .await;
    let node = ok(&node).clone();
    assert_eq!(node["created"], true);
    assert_eq!(
        node["peer"]["multiaddr"],
        format!("/ip4/192.0.2.7/tcp/4001/p2p/{LIBP2P_ID}")
    );
    assert_eq!(node["peer"]["capabilities"], json!(["storage", "compute"]));
    assert_eq!(node["peer"]["ttl_seconds"], 3600);
    assert_eq!(node["peer"]["expires_in_seconds"], 3600.0);
    assert_eq!(node["outcomes"]["local_file"]["status"], "ok");
    assert_eq!(node["outcomes"]["github"]["status"], "disabled");
    assert!(registry.exists(), "the default registry file was created");

    let agent = call(
        &client,
        "register_peer",
        json!({"peer_id": "agent-7", "multiaddr": "/dns4/agent.example/tcp/443/wss", "capabilities": ["storage"]}),
    )
    .await;
    assert_eq!(ok(&agent)["peer"]["sources"], json!(["local_file"]));

    // Discover: all peers newest first; then only those that can compute.
    let all = call(&client, "discover_peers", json!({})).await;
    let all = ok(&all).clone();
    assert_eq!(ids(&all), ["agent-7", LIBP2P_ID]);
    assert_eq!(all["total_matched"], 2);
    let compute = call(
        &client,
        "discover_peers",
        json!({"capability_filter": ["compute"]}),
    )
    .await;
    assert_eq!(ids(ok(&compute)), [LIBP2P_ID]);
    let none = call(
        &client,
        "discover_peers",
        json!({"capability_filter": ["compute", "gpu"]}),
    )
    .await;
    assert_eq!(ids(ok(&none)), Vec::<String>::new());

    // Heartbeat: last_seen moves, first_seen stays, the given field is replaced.
    let beat = call(
        &client,
        "update_peer",
        json!({"peer_id": LIBP2P_ID, "capabilities": ["compute", "gpu"]}),
    )
    .await;
    let beat = ok(&beat).clone();
    assert_eq!(beat["peer"]["first_seen"], node["peer"]["first_seen"]);
    assert!(beat["peer"]["last_seen"].as_f64() > node["peer"]["last_seen"].as_f64());
    assert_eq!(beat["peer"]["capabilities"], json!(["compute", "gpu"]));
    assert_eq!(beat["peer"]["metadata"], json!({"region": "eu"}));
    let gpu = call(
        &client,
        "discover_peers",
        json!({"capability_filter": ["gpu"]}),
    )
    .await;
    assert_eq!(ids(ok(&gpu)), [LIBP2P_ID]);

    // Re-register keeps first_seen and answers created: false.
    let again = call(
        &client,
        "register_peer",
        json!({"peer_id": "agent-7", "multiaddr": "/dns4/agent.example/tcp/443/wss"}),
    )
    .await;
    let again = ok(&again).clone();
    assert_eq!(again["created"], false);
    assert_eq!(
        again["peer"]["first_seen"],
        ok(&agent)["peer"]["first_seen"]
    );

    // A peer with a one-second lease expires and leaves discover.
    let brief = call(
        &client,
        "register_peer",
        json!({"peer_id": "brief", "multiaddr": "/ip4/127.0.0.1/udp/9/quic-v1", "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(ok(&brief)["peer"]["ttl_seconds"], 1);
    let listed = call(&client, "discover_peers", json!({})).await;
    assert!(ids(ok(&listed)).contains(&"brief".to_owned()));
    // Wait until the lease the server reported has ended (by this machine's clock, which
    // is the server's): then discover leaves the peer out.
    let expires_at = ok(&brief)["peer"]["expires_at"]
        .as_f64()
        .expect("expires_at");
    let left = expires_at - support::now();
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left + 0.01)).await;
    }
    let listed = call(&client, "discover_peers", json!({})).await;
    assert!(!ids(ok(&listed)).contains(&"brief".to_owned()));
    let with_expired = call(&client, "discover_peers", json!({"include_expired": true})).await;
    let with_expired = ok(&with_expired).clone();
    let brief_view = with_expired["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer_id"] == "brief")
        .expect("brief is still stored");
    assert_eq!(brief_view["expires_in_seconds"], 0.0);

    // Cleanup reports it (a dry run first, which removes nothing).
    let dry = call(&client, "cleanup_expired_peers", json!({"dry_run": true})).await;
    assert_eq!(ok(&dry)["removed_peer_ids"], json!(["brief"]));
    let cleaned = call(&client, "cleanup_expired_peers", json!({})).await;
    let cleaned = ok(&cleaned).clone();
    assert_eq!(cleaned["removed_peer_ids"], json!(["brief"]));
    assert_eq!(cleaned["removed"], json!({"local_file": 1}));
    assert_eq!(cleaned["cache_evicted"], 0);
    assert!(read_registry(&registry)["peers"].get("brief").is_none());

    // Unregister removes a peer; a second time there is nothing to remove.
    let gone = call(&client, "unregister_peer", json!({"peer_id": "agent-7"})).await;
    assert_eq!(ok(&gone)["removed"], true);
    let again = call(&client, "unregister_peer", json!({"peer_id": "agent-7"})).await;
    assert_eq!(ok(&again)["removed"], false);
    let left = call(&client, "discover_peers", json!({})).await;
    assert_eq!(ids(ok(&left)), [LIBP2P_ID]);

    // The file keeps exactly the eight shared fields per record.
    let file = read_registry(&registry);
    for (id, record) in file["peers"].as_object().expect("peers") {
        let mut keys: Vec<&str> = record
            .as_object()
            .expect("record")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "capabilities",
                "first_seen",
                "last_seen",
                "metadata",
                "multiaddr",
                "peer_id",
                "source",
                "ttl_seconds"
            ],
            "record {id}"
        );
    }

    let status = call(&client, "registry_status", json!({})).await;
    let status = ok(&status).clone();
    assert_eq!(status["sources"][0]["source"], "local_file");
    assert_eq!(status["sources"][0]["enabled"], true);
    assert!(status["sources"][0]["stats"]["calls"].as_u64() > Some(10));
    assert_eq!(status["sources"][1]["enabled"], false);
    assert_eq!(status["sources"][2]["source"], "etcd");
    assert_eq!(status["sources"][2]["enabled"], false);

    client.cancel().await.expect("shutdown");
}

/// The text block starts with a one-line summary and carries the same JSON as
/// structuredContent, for clients that show the model only text.
#[tokio::test]
async fn text_content_summarises_and_mirrors_the_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start(&dir.path().join("r.json"), &[]).await;
    let result = call(
        &client,
        "register_peer",
        json!({"peer_id": "a", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await;
    let text = support::text(&result);
    let (summary, json_text) = text.split_once('\n').expect("summary line, then JSON");
    assert!(summary.starts_with("registered new peer `a`"), "{summary}");
    let mirrored: serde_json::Value =
        serde_json::from_str(json_text).expect("JSON after the summary");
    assert_eq!(&mirrored, ok(&result));
    client.cancel().await.expect("shutdown");
}

/// With `--cleanup-interval 1`, an expired peer leaves the file without anyone calling
/// cleanup_expired_peers.
#[tokio::test]
async fn background_cleanup_removes_expired_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let client = support::start(&path, &["--cleanup-interval", "1"]).await;
    ok(&call(
        &client,
        "register_peer",
        json!({"peer_id": "brief", "multiaddr": "/ip4/127.0.0.1/tcp/1", "ttl_seconds": 1}),
    )
    .await);
    ok(&call(
        &client,
        "register_peer",
        json!({"peer_id": "stays", "multiaddr": "/ip4/127.0.0.1/tcp/2"}),
    )
    .await);
    // Watch the file until the background cleanup has removed the peer (the hang guard
    // only stops a broken cleanup from hanging the suite; it is not a measure).
    let watched = tokio::time::timeout(Duration::from_secs(120), async {
        while read_registry(&path)["peers"].get("brief").is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "the background cleanup never removed the expired peer"
    );
    assert!(read_registry(&path)["peers"]["stays"].is_object());
    client.cancel().await.expect("shutdown");
}
