//! Several server processes share one registry file: nothing is lost, and a corrupt file
//! is kept aside and reported instead of being overwritten.

mod support;

use serde_json::json;
use support::{call, ok, read_registry};

async fn fill(client: &support::Client, prefix: &str) {
    for i in 0..200 {
        let result = call(
            client,
            "register_peer",
            json!({"peer_id": format!("{prefix}-{i}"), "multiaddr": "/ip4/127.0.0.1/tcp/4001"}),
        )
        .await;
        ok(&result);
    }
}

/// Two server processes registering 200 distinct peers each, at the same time, into one
/// file end with all 400 in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let a = support::start(&path, &[]).await;
    let b = support::start(&path, &[]).await;
    tokio::join!(fill(&a, "a"), fill(&b, "b"));

    let file = read_registry(&path);
    let peers = file["peers"].as_object().expect("peers");
    assert_eq!(peers.len(), 400);
    for i in 0..200 {
        assert!(peers.contains_key(&format!("a-{i}")) && peers.contains_key(&format!("b-{i}")));
    }
    let listed = call(&a, "discover_peers", json!({"max_peers": 1000})).await;
    assert_eq!(ok(&listed)["total_matched"], 400);
    a.cancel().await.expect("shutdown");
    b.cancel().await.expect("shutdown");
}

/// A corrupt registry file: the server starts, the bad file is kept aside unchanged, the
/// first call reports it, and registering works again.
#[tokio::test]
async fn corrupt_file_is_kept_aside_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let garbage = b"{\"peers\": {\"half-written\": {\"peer_id\": ";
    std::fs::write(&path, garbage).expect("seed");

    let client = support::start(&path, &[]).await;
    let found = call(&client, "discover_peers", json!({})).await;
    let found = ok(&found).clone();
    let detail = found["outcomes"]["local_file"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(
        detail.contains("did not parse") && detail.contains("kept aside"),
        "{detail}"
    );
    assert_eq!(found["outcomes"]["local_file"]["status"], "ok");

    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("peer_registry.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "one copy kept aside");
    assert_eq!(std::fs::read(aside[0].path()).expect("aside"), garbage);

    ok(&call(
        &client,
        "register_peer",
        json!({"peer_id": "p", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await);
    assert!(read_registry(&path)["peers"]["p"].is_object());
    let again = call(&client, "discover_peers", json!({})).await;
    assert!(
        ok(&again)["outcomes"]["local_file"].get("detail").is_none(),
        "reported once"
    );
    client.cancel().await.expect("shutdown");
}
