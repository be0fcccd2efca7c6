//! The guard end to end, on in-memory pipes: lines checked and bounded, calls ordered,
//! bounds held.

use super::*;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

fn limits(max_line: usize) -> Limits {
    Limits {
        max_line,
        ..Limits::default()
    }
}

/// Runs the guard on `input` in front of a stand-in for rmcp that answers every
/// forwarded line with {"echo": <line>}; returns everything written to the client.
async fn exchange(input: &'static [u8], max: usize) -> Vec<Value> {
    let (mut client, server_out) = tokio::io::duplex(1 << 20);
    let (transport, handle) = guard(input, server_out, limits(max));
    let (rmcp_read, mut rmcp_write) = tokio::io::split(transport);
    tokio::spawn(async move {
        let mut lines = BufReader::new(rmcp_read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let answer = json!({"echo": line}).to_string() + "\n";
            let _ = rmcp_write.write_all(answer.as_bytes()).await;
        }
    });
    let finished = tokio::spawn(handle.finish());
    let mut text = String::new();
    client.read_to_string(&mut text).await.expect("read");
    finished.await.expect("guard tasks");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect()
}

/// A guard between a scripted client and a scripted stand-in for rmcp.
struct Rig {
    client_in: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    client_out: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    forwarded: mpsc::UnboundedReceiver<Value>,
    rmcp_out: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    _handle: GuardHandle,
}

/// Fails a test that would otherwise hang.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("hung waiting for {what}"))
}

impl Rig {
    fn start(limits: Limits) -> Rig {
        let (client, server_io) = tokio::io::duplex(1 << 20);
        let (server_in, server_out) = tokio::io::split(server_io);
        let (transport, handle) = guard(server_in, server_out, limits);
        let (rmcp_in, rmcp_out) = tokio::io::split(transport);
        let (seen, forwarded) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(rmcp_in).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = seen.send(serde_json::from_str::<Value>(&line).expect("JSON"));
            }
        });
        let (client_read, client_in) = tokio::io::split(client);
        Rig {
            client_in,
            client_out: BufReader::new(client_read).lines(),
            forwarded,
            rmcp_out,
            _handle: handle,
        }
    }

    async fn send(&mut self, message: Value) {
        let line = message.to_string() + "\n";
        self.client_in
            .write_all(line.as_bytes())
            .await
            .expect("send");
    }

    async fn call(&mut self, id: u64, tool: &str, arguments: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}))
            .await;
    }

    /// The ids of the requests passed to rmcp since the last look: sends a marker
    /// notification and collects what arrives before it. The guard handles lines in
    /// order, so everything it could pass on by then has been passed on.
    async fn passed(&mut self) -> Vec<u64> {
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/marker"}))
            .await;
        let mut ids = Vec::new();
        loop {
            let message = within("a forwarded line", self.forwarded.recv())
                .await
                .expect("rmcp side open");
            if message["method"] == "notifications/marker" {
                return ids;
            }
            ids.push(message["id"].as_u64().expect("request id"));
        }
    }

    /// rmcp answers `id`; returns once the client has read that answer (so the
    /// guard has seen it go out).
    async fn answer(&mut self, id: u64) {
        let line = json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string() + "\n";
        self.rmcp_out
            .write_all(line.as_bytes())
            .await
            .expect("answer");
        loop {
            let line = within("an answer", self.client_out.next_line())
                .await
                .expect("read")
                .expect("client side open");
            let message: Value = serde_json::from_str(&line).expect("JSON");
            if message["id"] == id {
                return;
            }
        }
    }
}

/// A read waits for every earlier write; a write waits for earlier writes of its peer;
/// writes of different peers and later unrelated calls go on meanwhile.
#[tokio::test]
async fn calls_wait_only_for_the_writes_they_depend_on() {
    let mut rig = Rig::start(Limits::default());
    rig.call(
        1,
        "register_peer",
        json!({"peer_id": "p", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await;
    rig.call(2, "update_peer", json!({"peer_id": "q"})).await;
    rig.call(3, "discover_peers", json!({})).await;
    rig.call(4, "update_peer", json!({"peer_id": "p"})).await;
    rig.call(5, "unregister_peer", json!({"peer_id": "r"}))
        .await;
    rig.call(6, "cleanup_expired_peers", json!({"dry_run": true}))
        .await;
    assert_eq!(rig.passed().await, [1, 2, 5]);
    rig.answer(1).await;
    assert_eq!(
        rig.passed().await,
        [4],
        "p's second write follows its first"
    );
    rig.answer(2).await;
    rig.answer(5).await;
    assert_eq!(rig.passed().await, [3], "3 came before 4, 6 after it");
    rig.answer(4).await;
    assert_eq!(rig.passed().await, [6]);
}

/// A whole-registry write waits for every earlier write, and every later call waits
/// for it; a held write counts as pending for the calls after it.
#[tokio::test]
async fn cleanup_is_a_write_of_everything() {
    let mut rig = Rig::start(Limits::default());
    rig.call(1, "update_peer", json!({"peer_id": "p"})).await;
    rig.call(2, "cleanup_expired_peers", json!({})).await;
    rig.call(3, "update_peer", json!({"peer_id": "q"})).await;
    rig.call(4, "registry_status", json!({})).await;
    assert_eq!(rig.passed().await, [1]);
    rig.answer(1).await;
    assert_eq!(rig.passed().await, [2]);
    rig.answer(2).await;
    assert_eq!(rig.passed().await, [3]);
    rig.answer(3).await;
    assert_eq!(rig.passed().await, [4]);
}

/// A cancelled write stops being pending: a held one is never passed on, and the calls
/// that waited for it go on.
#[tokio::test]
async fn a_cancelled_write_releases_the_calls_behind_it() {
    let mut rig = Rig::start(Limits::default());
    rig.call(1, "update_peer", json!({"peer_id": "p"})).await;
    rig.call(2, "update_peer", json!({"peer_id": "p"})).await;
    rig.call(3, "discover_peers", json!({})).await;
    assert_eq!(rig.passed().await, [1]);
    rig.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}),
    )
    .await;
    assert_eq!(rig.passed().await, Vec::<u64>::new(), "3 still waits for 1");
    rig.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
    )
    .await;
    let cancelled = within("the cancellation", rig.forwarded.recv())
        .await
        .expect("open");
    assert_eq!(cancelled["params"]["requestId"], 1, "{cancelled}");
    assert_eq!(rig.passed().await, [3]);
}

/// Held-open calls (a long poll) take their own slots: with room for two ordinary
/// calls, a long poll that is never answered leaves room for a call and for the
/// marker notification after it (were it counted, the marker would never be read).
#[tokio::test]
async fn held_open_calls_do_not_use_up_the_bound() {
    let mut rig = Rig::start(Limits {
        max_in_flight: 2,
        ..Limits::default()
    });
    rig.call(1, "peer_changes", json!({"wait_seconds": 50}))
        .await;
    rig.call(2, "discover_peers", json!({})).await;
    assert_eq!(rig.passed().await, [1, 2]);
}

/// A second request with the id of one still in flight is refused with that id.
#[tokio::test]
async fn an_id_in_flight_is_not_reused() {
    let mut rig = Rig::start(Limits::default());
    rig.call(1, "discover_peers", json!({})).await;
    rig.call(1, "registry_status", json!({})).await;
    assert_eq!(rig.passed().await, [1]);
    let line = within("the refusal", rig.client_out.next_line())
        .await
        .expect("read")
        .expect("open");
    let refusal: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(refusal["id"], 1, "{refusal}");
    assert_eq!(refusal["error"]["code"], -32600, "{refusal}");
}

/// JSON goes through, non-JSON gets -32700, an oversized line gets -32600 with its id.
#[tokio::test]
async fn lines_are_checked_and_bounded() {
    let input: &'static [u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"a\"}\nnot json\n\n{\"id\":5,\"x\":\"0123456789012345678901234567890123456789\"}\n{\"jsonrpc\":\"2.0\",\"method\":\"b\"}\n";
    let out = exchange(input, 40).await;
    assert!(
        out.contains(&json!({"echo": "{\"jsonrpc\":\"2.0\",\"method\":\"a\"}"})),
        "{out:?}"
    );
    assert!(
        out.contains(&json!({"echo": "{\"jsonrpc\":\"2.0\",\"method\":\"b\"}"})),
        "{out:?}"
    );
    let parse = out
        .iter()
        .find(|v| v["error"]["code"] == -32700)
        .expect("parse error");
    assert_eq!(parse["id"], Value::Null);
    let large = out
        .iter()
        .find(|v| v["error"]["code"] == -32600)
        .expect("too large");
    assert_eq!(large["id"], 5);
    assert!(
        large["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("the limit is 40")
    );
    assert_eq!(out.len(), 4);
}

/// An error rmcp writes without an id (its members in the order jsonrpc, id, error) gets
/// `"id": null` for a client of an older protocol and stays as written for a 2026-07-28
/// one; answers with an id, including ones whose text mentions "error", are untouched.
#[test]
fn an_idless_error_of_rmcp_gets_a_null_id_for_older_clients() {
    let idless = serde_json::to_vec(&rmcp::model::JsonRpcError::new(
        None,
        rmcp::ErrorData::invalid_request("bad", None),
    ))
    .expect("json");
    let older = Negotiated::default();
    let mut line = idless.clone();
    fix_unknown_id(&mut line, &older);
    let fixed: Value = serde_json::from_slice(&line).expect("json");
    assert_eq!(fixed.get("id"), Some(&Value::Null), "{fixed}");
    assert_eq!(fixed["error"]["code"], -32600);

    let newer = Negotiated::default();
    newer.observe(&json!({"method": "server/discover", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}));
    let mut line = idless.clone();
    fix_unknown_id(&mut line, &newer);
    assert_eq!(line, idless);

    for answer in [
        json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "x"}}),
        json!({"jsonrpc": "2.0", "id": 4, "result": {"text": "\"error\" in a peer's metadata"}}),
    ] {
        let written = serde_json::to_vec(&answer).expect("json");
        let mut line = written.clone();
        fix_unknown_id(&mut line, &older);
        assert_eq!(line, written);
    }
}
