//! The peers as MCP resources: listed, read (the same peers as discover_peers), and
//! subscribed by clients of both protocol generations, driven with raw JSON-RPC on the
//! real binary: `resources/subscribe` (up to 2025-11-25) and `subscriptions/listen`
//! (2026-07-28), each notified on a registration and on an expiry.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::RawSession;

const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

fn register_line(id: u64, peer: &str, caps: &[&str], ttl: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "register_peer",
        "arguments": {"peer_id": peer, "multiaddr": "/ip4/192.0.2.1/tcp/4001", "capabilities": caps, "ttl_seconds": ttl}}})
    .to_string()
}

/// Reads messages until `n` `notifications/resources/updated` arrive (answers to requests
/// are skipped); their URIs, and the notifications' `_meta`s.
async fn updates(raw: &mut RawSession, n: usize, what: &str) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), raw.next())
            .await
            .unwrap_or_else(|_| panic!("no notification of {what} within 10 s; seen {seen:?}"))
            .expect("the server is there");
        if message["method"] == "notifications/resources/updated" {
            seen.push((
                message["params"]["uri"].as_str().expect("uri").to_owned(),
                message["params"]["_meta"].clone(),
            ));
        }
    }
    seen
}

fn uris(seen: &[(String, Value)]) -> Vec<&str> {
    let mut uris: Vec<&str> = seen.iter().map(|(u, _)| u.as_str()).collect();
    uris.sort_unstable();
    uris
}

/// resources/list, resources/templates/list and resources/read answer what discover
/// answers; an unknown peer is resource-not-found (-32002), a foreign URI invalid params.
#[tokio::test]
async fn resources_are_listed_and_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let mut raw = RawSession::start(&["--registry-path".as_ref(), path.as_os_str()]).await;
    raw.send_line(&register_line(1, "cruncher", &["compute"], 600))
        .await;
    raw.expect_id(&json!(1)).await;
    raw.send_line(&register_line(2, "keeper", &["storage"], 600))
        .await;
    raw.expect_id(&json!(2)).await;

    raw.send_line(r#"{"jsonrpc":"2.0","id":3,"method":"resources/list"}"#)
        .await;
    let listed = raw.expect_id(&json!(3)).await;
    assert_eq!(
        listed["result"]["resources"][0]["uri"], "peers://all",
        "{listed}"
    );
    raw.send_line(r#"{"jsonrpc":"2.0","id":4,"method":"resources/templates/list"}"#)
        .await;
    let templates = raw.expect_id(&json!(4)).await;
    let names: Vec<&str> = templates["result"]["resourceTemplates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| t["uriTemplate"].as_str().expect("uriTemplate"))
        .collect();
    assert_eq!(
        names,
        ["peers://capability/{name}", "peers://peer/{peer_id}"]
    );

    let read = |id: u64, uri: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "resources/read", "params": {"uri": uri}})
            .to_string()
    };
    let contents = |answer: &Value| -> Value {
        let text = answer["result"]["contents"][0]["text"]
            .as_str()
            .expect("text");
        assert_eq!(
            answer["result"]["contents"][0]["mimeType"],
            "application/json"
        );
        serde_json::from_str(text).expect("JSON contents")
    };
    raw.send_line(&read(5, "peers://all")).await;
    let all = contents(&raw.expect_id(&json!(5)).await);
    assert_eq!(support::ids(&all).len(), 2);
    raw.call(6, "discover_peers", json!({"max_peers": 1000}))
        .await;
    let discovered = raw.expect_id(&json!(6)).await;
    assert_eq!(
        support::ids(&all),
        support::ids(&discovered["result"]["structuredContent"]),
        "peers://all is discover_peers"
    );
    raw.send_line(&read(7, "peers://capability/compute")).await;
    assert_eq!(
        support::ids(&contents(&raw.expect_id(&json!(7)).await)),
        ["cruncher"]
    );
    raw.send_line(&read(8, "peers://peer/keeper")).await;
    let keeper = contents(&raw.expect_id(&json!(8)).await);
    assert_eq!(keeper["peer_id"], "keeper");
    assert_eq!(keeper["capabilities"], json!(["storage"]));
    assert!(keeper["expires_at"].is_number());

    raw.send_line(&read(9, "peers://peer/nobody")).await;
    let missing = raw.expect_id(&json!(9)).await;
    assert_eq!(missing["error"]["code"], -32002, "{missing}");
    raw.send_line(&read(10, "file:///etc/passwd")).await;
    let foreign = raw.expect_id(&json!(10)).await;
    assert_eq!(foreign["error"]["code"], -32602, "{foreign}");
}

/// Protocol up to 2025-11-25: `resources/subscribe` is answered `{}`, then the subscribed
/// resources are notified when a peer registers (from another server process on the
/// same file) and when its lease ends; an unsubscribed resource is not.
#[tokio::test]
async fn a_subscription_hears_of_registrations_and_expiries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let args = ["--registry-path".as_ref(), path.as_os_str()];
    let mut raw = RawSession::start(&args).await;
    for (id, uri) in [
        (1, "peers://capability/compute"),
        (2, "peers://peer/short-lived"),
    ] {
        raw.send_line(
            &json!({"jsonrpc": "2.0", "id": id, "method": "resources/subscribe", "params": {"uri": uri}})
                .to_string(),
        )
        .await;
        assert_eq!(raw.expect_id(&json!(id)).await["result"], json!({}));
    }
    let mut other = RawSession::start(&args).await;
    other
        .send_line(&register_line(1, "short-lived", &["compute"], 2))
        .await;
    other.expect_id(&json!(1)).await;
    // A peer no subscription names: no notification for it.
    other
        .send_line(&register_line(2, "unrelated", &["storage"], 600))
        .await;
    other.expect_id(&json!(2)).await;

    let registered = updates(&mut raw, 2, "the registration").await;
    assert_eq!(
        uris(&registered),
        ["peers://capability/compute", "peers://peer/short-lived"]
    );
    // The lease ends two seconds later: both are notified again, with no cleanup run.
    let expired = updates(&mut raw, 2, "the expiry").await;
    assert_eq!(
        uris(&expired),
        ["peers://capability/compute", "peers://peer/short-lived"]
    );

    // Unsubscribed, nothing more: a new compute peer is not announced.
    for (id, uri) in [
        (3, "peers://capability/compute"),
        (4, "peers://peer/short-lived"),
    ] {
        raw.send_line(
            &json!({"jsonrpc": "2.0", "id": id, "method": "resources/unsubscribe", "params": {"uri": uri}})
                .to_string(),
        )
        .await;
        assert_eq!(raw.expect_id(&json!(id)).await["result"], json!({}));
    }
    other
        .send_line(&register_line(3, "late", &["compute"], 600))
        .await;
    other.expect_id(&json!(3)).await;
    let quiet = tokio::time::timeout(Duration::from_millis(1500), raw.next()).await;
    assert!(
        quiet.is_err(),
        "a notification after unsubscribing: {quiet:?}"
    );
    // A URI that is not one of this server's resources cannot be subscribed to.
    raw.send_line(r#"{"jsonrpc":"2.0","id":5,"method":"resources/subscribe","params":{"uri":"peers://capability/Not Valid"}}"#).await;
    let refused = raw.expect_id(&json!(5)).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
}

/// Protocol 2026-07-28: `subscriptions/listen` is acknowledged, and the accepted
/// resources are notified (with the subscription's id) on a registration and an expiry.
#[tokio::test]
async fn a_listen_stream_hears_of_registrations_and_expiries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = support::command();
    cmd.arg("--registry-path").arg(dir.path().join("r.json"));
    let mut raw = RawSession::start_bare(cmd).await;
    raw.send_line(&format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{{{META}}}}}"#
    ))
    .await;
    let discovered = raw.expect_id(&json!(1)).await;
    assert_eq!(
        discovered["result"]["capabilities"]["resources"]["subscribe"], true,
        "{discovered}"
    );
    raw.send_line(&format!(
        r#"{{"jsonrpc":"2.0","id":"listen-1","method":"subscriptions/listen","params":{{"notifications":{{"resourceSubscriptions":["peers://all"]}},{META}}}}}"#
    ))
    .await;
    let acknowledged = loop {
        let message = raw.next().await.expect("a message");
        if message["method"] == "notifications/subscriptions/acknowledged" {
            break message;
        }
        assert!(message.get("error").is_none(), "{message}");
    };
    assert_eq!(
        acknowledged["params"]["notifications"]["resourceSubscriptions"],
        json!(["peers://all"]),
        "{acknowledged}"
    );
    raw.send_line(&format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"register_peer","arguments":{{"peer_id":"brief","multiaddr":"/ip4/192.0.2.1/tcp/1","ttl_seconds":2}},{META}}}}}"#
    ))
    .await;
    let registered = updates(&mut raw, 1, "the registration").await;
    assert_eq!(uris(&registered), ["peers://all"]);
    assert_eq!(
        registered[0].1["io.modelcontextprotocol/subscriptionId"], "listen-1",
        "{:?}",
        registered[0]
    );
    let expired = updates(&mut raw, 1, "the expiry").await;
    assert_eq!(uris(&expired), ["peers://all"]);
}
