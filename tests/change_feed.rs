//! The change feed as an agent uses it: `peer_changes` over stdio with rmcp's client (and
//! raw JSON-RPC where progress notifications are counted), against the real binary.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{call, err, ok};

fn events(answer: &Value) -> Vec<(String, String, Option<String>)> {
    answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_owned(),
                e["peer_id"].as_str().expect("peer_id").to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn event(kind: &str, peer: &str, reason: Option<&str>) -> (String, String, Option<String>) {
    (kind.to_owned(), peer.to_owned(), reason.map(str::to_owned))
}

async fn register(client: &support::Client, peer: &str, caps: &[&str], ttl: u64) {
    ok(&call(
        client,
        "register_peer",
        json!({"peer_id": peer, "multiaddr": "/ip4/192.0.2.1/tcp/4001", "capabilities": caps, "ttl_seconds": ttl}),
    )
    .await);
}

/// From a cursor: B registers, C's capabilities change, A unregisters, D's 2-second lease
/// runs out. The feed returns exactly those four events, in order, each once; the next
/// call returns none; a cursor can be used again; heartbeats that only renew a lease are
/// not events; a capability filter keeps only the matching peers' changes.
#[tokio::test]
async fn four_changes_in_order_each_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let client = support::start(&registry, &["--cleanup-interval", "0"]).await;
    register(&client, "peer-a", &["compute"], 600).await;
    register(&client, "peer-c", &["compute"], 600).await;
    register(&client, "peer-d", &["storage"], 2).await;
    let start = ok(&call(&client, "peer_changes", json!({})).await).clone();
    assert_eq!(events(&start), []);
    let cursor = start["cursor"].as_str().expect("cursor").to_owned();

    register(&client, "peer-b", &["compute"], 600).await;
    ok(&call(
        &client,
        "update_peer",
        json!({"peer_id": "peer-c", "capabilities": ["storage"]}),
    )
    .await);
    // A heartbeat that changes nothing but the lease is not an event.
    ok(&call(&client, "update_peer", json!({"peer_id": "peer-a"})).await);
    ok(&call(&client, "unregister_peer", json!({"peer_id": "peer-a"})).await);
    // Wait (in the feed, not by the clock of a loaded machine) for D's lease to end.
    let mut changes = Value::Null;
    for _ in 0..20 {
        changes = ok(&call(&client, "peer_changes", json!({"cursor": cursor})).await).clone();
        if changes["events"].as_array().is_some_and(|e| e.len() >= 4) {
            break;
        }
        call(
            &client,
            "peer_changes",
            json!({"cursor": changes["cursor"], "wait_seconds": 1}),
        )
        .await;
    }
    assert_eq!(
        events(&changes),
        [
            event("added", "peer-b", None),
            event("updated", "peer-c", None),
            event("removed", "peer-a", Some("unregistered")),
            event("removed", "peer-d", Some("expired")),
        ],
        "{changes}"
    );
    let list = changes["events"].as_array().expect("events");
    assert_eq!(list[0]["peer"]["capabilities"], json!(["compute"]));
    assert_eq!(list[1]["peer"]["capabilities"], json!(["storage"]));
    assert!(list[2].get("peer").is_none());
    // An expiry is dated by the lease's end.
    let d_expired = list[3]["at"].as_f64().expect("at");
    assert!(list[1]["at"].as_f64().expect("at") <= d_expired + 600.0);
    assert_eq!(changes["more"], false);

    let next = ok(&call(
        &client,
        "peer_changes",
        json!({"cursor": changes["cursor"]}),
    )
    .await)
    .clone();
    assert_eq!(events(&next), [], "nothing twice: {next}");
    let again = ok(&call(&client, "peer_changes", json!({"cursor": cursor})).await).clone();
    assert_eq!(
        events(&again),
        events(&changes),
        "a cursor names a position"
    );

    let compute = ok(&call(
        &client,
        "peer_changes",
        json!({"cursor": cursor, "capability_filter": ["compute"]}),
    )
    .await)
    .clone();
    assert_eq!(
        events(&compute),
        [
            event("added", "peer-b", None),
            event("removed", "peer-c", Some("no_longer_matches")),
            event("removed", "peer-a", Some("unregistered")),
        ],
        "{compute}"
    );
    // max_events cuts, and `more` says so; the rest comes with the new cursor.
    let first = ok(&call(
        &client,
        "peer_changes",
        json!({"cursor": cursor, "max_events": 3}),
    )
    .await)
    .clone();
    assert_eq!(events(&first).len(), 3);
    assert_eq!(first["more"], true);
    let rest = ok(&call(&client, "peer_changes", json!({"cursor": first["cursor"]})).await).clone();
    assert_eq!(events(&rest), [event("removed", "peer-d", Some("expired"))]);
    client.cancel().await.expect("shutdown");
}

/// A long poll returns within a second of a registration made by another server process
/// on the same file; with no change it returns empty once the wait is over.
#[tokio::test]
async fn a_long_poll_sees_another_process_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let watcher = support::start(&registry, &["--cleanup-interval", "0"]).await;
    let other = support::start(&registry, &["--cleanup-interval", "0"]).await;
    let start = ok(&call(&watcher, "peer_changes", json!({})).await).clone();

    let poll = call(
        &watcher,
        "peer_changes",
        json!({"cursor": start["cursor"], "wait_seconds": 10}),
    );
    let write = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        register(&other, "from-elsewhere", &["compute"], 600).await;
        Instant::now()
    };
    let (answer, written_at) = tokio::join!(poll, write);
    let seen_after = written_at.elapsed();
    let answer = ok(&answer).clone();
    assert_eq!(
        events(&answer),
        [event("added", "from-elsewhere", None)],
        "{answer}"
    );
    assert!(
        seen_after < Duration::from_secs(1),
        "seen {seen_after:?} after the other process's write"
    );

    let started = Instant::now();
    let quiet = ok(&call(
        &watcher,
        "peer_changes",
        json!({"cursor": answer["cursor"], "wait_seconds": 1.5}),
    )
    .await)
    .clone();
    assert_eq!(events(&quiet), []);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    watcher.cancel().await.expect("shutdown");
    other.cancel().await.expect("shutdown");
}

/// A held call sends progress notifications while it waits, when the request asks.
#[tokio::test]
async fn a_waiting_call_reports_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let mut raw = support::RawSession::start(&["--registry-path".as_ref(), path.as_os_str()]).await;
    raw.send_line(
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"peer_changes","arguments":{"wait_seconds":2.5},"_meta":{"progressToken":"wait-5"}}}"#,
    )
    .await;
    let mut progress = 0;
    let answer = loop {
        let message = raw.next().await.expect("a message");
        if message["method"] == "notifications/progress" {
            assert_eq!(message["params"]["progressToken"], "wait-5");
            progress += 1;
            continue;
        }
        if message["id"] == 5 {
            break message;
        }
    };
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    assert_eq!(answer["result"]["structuredContent"]["events"], json!([]));
    assert!(progress >= 2, "{progress} progress notifications");
}

/// A cursor from a previous server process (or one that is not a cursor) is a tool
/// error that says what to do: discover_peers, then peer_changes without a cursor.
#[tokio::test]
async fn a_cursor_from_a_previous_process_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let first = support::start(&registry, &[]).await;
    let cursor = ok(&call(&first, "peer_changes", json!({})).await)["cursor"].clone();
    first.cancel().await.expect("shutdown");

    let second = support::start(&registry, &[]).await;
    for stale in [cursor, json!("not-a-cursor")] {
        let refused = call(&second, "peer_changes", json!({"cursor": stale})).await;
        let message = err(&refused);
        assert!(
            message.contains("discover_peers") && message.contains("without a cursor"),
            "{message}"
        );
    }
    let refused = call(&second, "peer_changes", json!({"wait_seconds": 51})).await;
    assert!(err(&refused).contains("wait_seconds"), "{}", err(&refused));
    second.cancel().await.expect("shutdown");
}

/// A registry file of `n` live peers, written as another program would.
fn seed(path: &std::path::Path, n: usize) {
    let now = support::now();
    let peers: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let id = format!("seed-{i:05}");
            (
                id.clone(),
                json!({"peer_id": id, "multiaddr": "/ip4/10.0.0.1/tcp/4001",
                "capabilities": ["storage"], "first_seen": now, "last_seen": now,
                "source": "local_file", "ttl_seconds": 3600, "metadata": {}}),
            )
        })
        .collect();
    let file = json!({"peers": peers, "last_cleanup": now});
    std::fs::write(path, file.to_string()).expect("seed the registry");
}

/// This server's own writes, one after another, while the feed re-reads the file after
/// each (its folder watch fires on every write): every peer shows exactly `added` then
/// `removed`, never a listing read before a write undoing it (a false `removed`, an
/// `added` twice).
#[tokio::test]
async fn own_writes_are_never_undone_by_a_rescan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    seed(&registry, 5_000);
    let client = support::start(&registry, &["--cleanup-interval", "0"]).await;
    let cursor = ok(&call(&client, "peer_changes", json!({})).await)["cursor"].clone();
    // Another process's write makes the feed read the file while ours go on.
    let other = support::start(&registry, &["--cleanup-interval", "0"]).await;
    let mut expected = Vec::new();
    for i in 0..40 {
        let peer = format!("churn-{i}");
        register(&client, &peer, &["compute"], 600).await;
        if i % 10 == 0 {
            register(&other, &format!("other-{i}"), &["storage"], 600).await;
        }
        ok(&call(&client, "unregister_peer", json!({"peer_id": peer})).await);
        expected.push(event("added", &peer, None));
        expected.push(event("removed", &peer, Some("unregistered")));
    }
    let mut seen = Vec::new();
    let mut position = cursor;
    loop {
        let answer = ok(&call(
            &client,
            "peer_changes",
            json!({"cursor": position, "max_events": 1000}),
        )
        .await)
        .clone();
        seen.extend(events(&answer));
        position = answer["cursor"].clone();
        if answer["more"] != true {
            break;
        }
    }
    let ours: Vec<_> = seen
        .into_iter()
        .filter(|(_, p, _)| p.starts_with("churn-"))
        .collect();
    assert_eq!(ours, expected);
    client.cancel().await.expect("shutdown");
    other.cancel().await.expect("shutdown");
}

/// A lease that ends is a `removed`/`expired` event within a second of its `expires_at`,
/// with no cleanup (background cleanup is off here), dated by the lease's end.
#[tokio::test]
async fn an_expiry_is_an_event_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let client = support::start(&registry, &["--cleanup-interval", "0"]).await;
    let cursor = ok(&call(&client, "peer_changes", json!({})).await)["cursor"].clone();
    let registered = ok(&call(
        &client,
        "register_peer",
        json!({"peer_id": "brief", "multiaddr": "/ip4/192.0.2.1/tcp/1", "ttl_seconds": 2}),
    )
    .await)
    .clone();
    let expires_at = registered["peer"]["expires_at"]
        .as_f64()
        .expect("expires_at");
    let mut cursor =
        ok(&call(&client, "peer_changes", json!({"cursor": cursor})).await)["cursor"].clone();
    let removed = loop {
        let answer = ok(&call(
            &client,
            "peer_changes",
            json!({"cursor": cursor, "wait_seconds": 10}),
        )
        .await)
        .clone();
        cursor = answer["cursor"].clone();
        if let Some(event) = answer["events"].as_array().and_then(|e| e.first()) {
            break event.clone();
        }
    };
    let late = support::now() - expires_at;
    assert_eq!(removed["type"], "removed", "{removed}");
    assert_eq!(removed["reason"], "expired", "{removed}");
    assert_eq!(removed["at"].as_f64(), Some(expires_at), "{removed}");
    assert!(
        (0.0..1.0).contains(&late),
        "seen {late} s after the lease ended"
    );
    client.cancel().await.expect("shutdown");
}
