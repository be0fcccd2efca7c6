//! The streamable HTTP transport, driven as its users would: the real binary started with
//! `--http 127.0.0.1:0`, its address read from stderr, two rmcp streamable-HTTP clients in
//! two sessions, and raw HTTP for what must be refused.

mod support;

use std::process::Stdio;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use support::{call, ok};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

const TOKEN: &str = "s3cret-token-for-tests";

/// A server on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    /// Every line the server wrote on stderr so far.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn start(registry: &std::path::Path, token: Option<&str>, bind: &str) -> Server {
    start_with(registry, token, bind, &[]).await
}

async fn start_with(
    registry: &std::path::Path,
    token: Option<&str>,
    bind: &str,
    extra: &[&str],
) -> Server {
    let mut cmd = support::command();
    cmd.arg("--registry-path")
        .arg(registry)
        .args(["--http", bind, "--cleanup-interval", "0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.env("PEER_REGISTRY_HTTP_TOKEN", token);
    }
    let mut child = cmd.spawn().expect("spawn server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut stderr = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            stderr.push(line.clone());
            if let Some(rest) = line.strip_prefix("listening on http://") {
                return Some(rest.trim_end_matches("/mcp").to_owned());
            }
        }
        None
    })
    .await
    .expect("the server printed its address in time")
    .unwrap_or_else(|| panic!("no `listening on` line; stderr: {stderr:?}"));
    // Keep reading stderr (its logs) for as long as the server runs, as a terminal would.
    let log = std::sync::Arc::new(std::sync::Mutex::new(stderr));
    let drained = std::sync::Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            drained.lock().expect("log").push(line);
        }
    });
    Server {
        child,
        addr,
        stderr: log,
    }
}

/// One raw HTTP/1.1 exchange; the status code and the body. The request goes out in one
/// write (a large body is refused before it is all read: a failed write is fine then).
async fn raw(addr: &str, request_head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{request_head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?} for {request_head:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn post_mcp(host: &str, extra: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream{extra}"
    )
}

const PING: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;

async fn client(addr: &str, token: &str) -> support::Client {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("http://{addr}/mcp"))
            .auth_header(token),
    );
    ().serve(transport).await.expect("MCP handshake over HTTP")
}

/// Two agents in two sessions share one registry: what one registers the other finds,
/// heartbeats and cleanup work, and every write reaches the shared file.
#[tokio::test]
async fn two_clients_share_one_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let server = start(&registry, Some(TOKEN), "127.0.0.1:0").await;
    let a = client(&server.addr, TOKEN).await;
    let b = client(&server.addr, TOKEN).await;

    let registered = call(
        &a,
        "register_peer",
        json!({"peer_id": "agent-a", "multiaddr": "/ip4/192.0.2.1/tcp/4001", "capabilities": ["compute"], "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(ok(&registered)["created"], true);
    call(
        &b,
        "register_peer",
        json!({"peer_id": "agent-b", "multiaddr": "/ip4/192.0.2.2/tcp/4001", "capabilities": ["storage"]}),
    )
    .await;
    let found = call(
        &b,
        "discover_peers",
        json!({"capability_filter": ["compute"]}),
    )
    .await;
    let ids: Vec<&str> = ok(&found)["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(|p| p["peer_id"].as_str())
        .collect();
    assert_eq!(ids, ["agent-a"], "b sees a's peer");
    let beat = call(&a, "update_peer", json!({"peer_id": "agent-b"})).await;
    assert_eq!(ok(&beat)["peer"]["peer_id"], "agent-b");

    // agent-a's lease of 1 s ends; cleanup through the other session removes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cleaned = call(&b, "cleanup_expired_peers", json!({})).await;
    assert_eq!(ok(&cleaned)["removed_peer_ids"], json!(["agent-a"]));
    let gone = call(&a, "unregister_peer", json!({"peer_id": "agent-b"})).await;
    assert_eq!(ok(&gone)["removed"], true);
    let file: Value =
        serde_json::from_slice(&std::fs::read(&registry).expect("registry file")).expect("json");
    assert_eq!(file["peers"], json!({}));
    a.cancel().await.expect("close a");
    b.cancel().await.expect("close b");
    let log = server.stderr.lock().expect("log").clone();
    assert!(log.iter().all(|l| !l.contains(TOKEN)), "{log:?}");
}

/// No token, a wrong token, a foreign Host, a foreign Origin and an oversized body are
/// refused (401, 401, 403, 403, 413) and change nothing; /healthz needs no token and
/// shows no peer.
#[tokio::test]
async fn refusals_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let server = start(&registry, Some(TOKEN), "127.0.0.1:0").await;
    let addr = server.addr.as_str();
    let bearer = format!("\r\nauthorization: Bearer {TOKEN}");

    let (status, body) = raw(addr, &post_mcp(addr, ""), PING).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = raw(
        addr,
        &post_mcp(addr, "\r\nauthorization: Bearer nope"),
        PING,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = raw(addr, &post_mcp("evil.example", &bearer), PING).await;
    assert_eq!(status, 403, "a foreign Host is DNS rebinding");
    let origin = format!("{bearer}\r\norigin: https://evil.example");
    let (status, _) = raw(addr, &post_mcp(addr, &origin), PING).await;
    assert_eq!(status, 403, "a foreign Origin");
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"register_peer","arguments":{{"peer_id":"{}"}}}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, _) = raw(addr, &post_mcp(addr, &bearer), huge.as_bytes()).await;
    assert_eq!(status, 413, "a body over 1 MiB");
    // With the token, from loopback, the same request is served.
    let (status, body) = raw(addr, &post_mcp(addr, &bearer), PING).await;
    assert_eq!(status, 200, "{body}");

    let a = client(addr, TOKEN).await;
    call(
        &a,
        "register_peer",
        json!({"peer_id": "secret-agent", "multiaddr": "/ip4/192.0.2.9/tcp/1"}),
    )
    .await;
    let (status, body) = raw(addr, "GET /healthz HTTP/1.1\r\nhost: probe.internal", b"").await;
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(health["ok"], true);
    assert!(!body.contains("secret-agent"), "{body}");
    a.cancel().await.expect("close");
    let file: Value =
        serde_json::from_slice(&std::fs::read(&registry).expect("registry file")).expect("json");
    let peers: Vec<&String> = file["peers"].as_object().expect("peers").keys().collect();
    assert_eq!(peers, ["secret-agent"], "only the authorized call wrote");
}

/// A bind that is not loopback without a token is refused at start with one line.
#[tokio::test]
async fn a_public_bind_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = support::command()
        .arg("--registry-path")
        .arg(dir.path().join("r.json"))
        .args(["--http", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("PEER_REGISTRY_HTTP_TOKEN"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// SIGTERM stops the server cleanly (exit 0).
#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(&dir.path().join("r.json"), None, "127.0.0.1:0").await;
    let pid = server.child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// Past `--http-max-sessions`, a client that would open a session gets 503; the open
/// session goes on working.
#[tokio::test]
async fn sessions_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with(
        &dir.path().join("r.json"),
        Some(TOKEN),
        "127.0.0.1:0",
        &["--http-max-sessions", "1"],
    )
    .await;
    let addr = server.addr.as_str();
    let first = client(addr, TOKEN).await;
    let bearer = format!("\r\nauthorization: Bearer {TOKEN}");
    let (status, body) = raw(addr, &post_mcp(addr, &bearer), PING).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--http-max-sessions"), "{body}");
    let found = call(&first, "discover_peers", json!({})).await;
    assert_eq!(ok(&found)["total_matched"], 0);
    first.cancel().await.expect("close");
}

/// A client that opens a session and goes away without closing it does not hold its
/// place for ever: after `--http-session-idle` the session is closed, and a new client
/// gets in under a cap of one.
#[tokio::test]
async fn an_abandoned_session_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with(
        &dir.path().join("r.json"),
        Some(TOKEN),
        "127.0.0.1:0",
        &["--http-max-sessions", "1", "--http-session-idle", "1"],
    )
    .await;
    let addr = server.addr.as_str();
    let bearer = format!("\r\nauthorization: Bearer {TOKEN}");
    // Opens a session (initialize) and leaves: no DELETE, the connection just closes.
    let (status, body) = raw(addr, &post_mcp(addr, &bearer), PING).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = raw(addr, &post_mcp(addr, &bearer), PING).await;
    assert_eq!(status, 503, "the abandoned session still counts");
    let mut freed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _) = raw(addr, &post_mcp(addr, &bearer), PING).await;
        if status == 200 {
            freed = true;
            break;
        }
        assert_eq!(status, 503);
    }
    assert!(freed, "the idle session was never closed");
}

/// The `_meta` a protocol 2026-07-28 request carries, and the headers that go with it:
/// such a request needs no session (the stateless mode).
const MODERN_META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

fn post_modern(addr: &str, tool: &str) -> String {
    post_mcp(
        addr,
        &format!(
            "\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: {tool}"
        ),
    )
}

/// A stateless (protocol 2026-07-28) tools/call, answered without any session.
fn modern_call(id: u64, tool: &str, arguments: Value) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments},{MODERN_META}}}}}"#
    )
    .into_bytes()
}

/// The one JSON-RPC message of an answer body, sent as JSON or as one SSE event.
fn answer_of(body: &str) -> Value {
    let json = body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(body)
        .trim();
    // A chunked body has its chunk sizes around the JSON.
    let start = json
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let end = json.rfind('}').expect("end of JSON");
    serde_json::from_str(&json[start..=end]).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// JSON-RPC errors travel as JSON-RPC bodies, and an error whose request id could not be
/// read follows the client's protocol: `"id": null` without a protocol header and up to
/// 2025-11-25 (JSON-RPC 2.0), no `id` from 2026-07-28 (MCP). A parse error's id is never
/// guessed from the text. A stateless 2026-07-28 call is served without a session.
#[tokio::test]
async fn jsonrpc_errors_follow_the_clients_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir.path().join("r.json"), None, "127.0.0.1:0").await;
    let addr = server.addr.as_str();
    let truncated = br#"{"jsonrpc":"2.0","id":1,"method":"#;

    for (extra, id_member) in [
        ("", true),
        ("\r\nmcp-protocol-version: 2025-11-25", true),
        ("\r\nmcp-protocol-version: 2026-07-28", false),
    ] {
        let (status, body) = raw(addr, &post_mcp(addr, extra), truncated).await;
        assert_eq!(status, 400, "{body}");
        let answer = answer_of(&body);
        assert_eq!(answer["error"]["code"], -32700, "{extra:?}: {answer}");
        assert_eq!(answer.get("id").is_some(), id_member, "{extra:?}: {answer}");
        assert_eq!(answer["id"], Value::Null, "never guessed: {answer}");

        let (status, body) = raw(addr, &post_mcp(addr, extra), b"[1]").await;
        assert_eq!(status, 400, "{body}");
        let answer = answer_of(&body);
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        assert_eq!(answer.get("id").is_some(), id_member, "{extra:?}: {answer}");
    }
    // A malformed envelope with a readable id is answered with it.
    let (status, body) = raw(
        addr,
        &post_mcp(addr, ""),
        br#"{"jsonrpc":"1.0","id":14,"method":"ping"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(answer_of(&body)["id"], 14);

    // Stateless: one request, no session, answered in full.
    let (status, body) = raw(
        addr,
        &post_modern(addr, "discover_peers"),
        &modern_call(3, "discover_peers", json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = answer_of(&body);
    assert_eq!(answer["id"], 3);
    assert_eq!(
        answer["result"]["structuredContent"]["total_matched"], 0,
        "{answer}"
    );
}

/// A plain request held past `--http-hold-limit` (here a write waiting for a registry lock
/// another process holds, under a long source timeout) is cut: its client gets a
/// JSON-RPC error for that request within the limit, not after the source timeout, and
/// the server goes on answering.
#[tokio::test]
async fn a_request_held_past_the_hold_limit_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let server = start_with(
        &registry,
        None,
        "127.0.0.1:0",
        &["--http-hold-limit", "1", "--source-timeout", "30"],
    )
    .await;
    let addr = server.addr.as_str();
    // flock locks belong to an open file: this handle conflicts with the server's.
    let holder = std::fs::File::open(dir.path()).expect("folder");
    holder.lock().expect("hold the lock");

    let started = std::time::Instant::now();
    let (status, body) = raw(
        addr,
        &post_modern(addr, "register_peer"),
        &modern_call(
            4,
            "register_peer",
            json!({"peer_id": "waits", "multiaddr": "/ip4/192.0.2.1/tcp/1"}),
        ),
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "held {took:?}");
    assert_eq!(status, 200, "{body}");
    let answer = answer_of(&body);
    assert_eq!(answer["id"], 4, "{answer}");
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("hold limit")),
        "{answer}"
    );
    // A client in a session (its answers come as event streams) gets the same error.
    let session = client(addr, "").await;
    let started = std::time::Instant::now();
    let refused = session
        .call_tool(
            rmcp::model::CallToolRequestParams::new("register_peer").with_arguments(
                json!({"peer_id": "waits-too", "multiaddr": "/ip4/192.0.2.1/tcp/1"})
                    .as_object()
                    .cloned()
                    .expect("object"),
            ),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "held {:?}",
        started.elapsed()
    );
    let message = format!("{refused:?}");
    assert!(message.contains("hold limit"), "{message}");
    // Reads do not need the lock: the server answers while it is still held.
    let (status, body) = raw(
        addr,
        &post_modern(addr, "discover_peers"),
        &modern_call(5, "discover_peers", json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer_of(&body)["id"], 5);
    holder.unlock().expect("release");
}

/// A client that sends its headers and then trickles (or stops sending) its body is cut
/// with 408 at the hold limit; it does not keep a task waiting.
#[tokio::test]
async fn a_body_that_never_arrives_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with(
        &dir.path().join("r.json"),
        None,
        "127.0.0.1:0",
        &["--http-hold-limit", "1"],
    )
    .await;
    let addr = server.addr.as_str();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{}\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n{{\"jsonrpc\":",
        post_mcp(addr, "")
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server cut the request within the hold limit");
    read.expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("hold limit"), "{text}");
}

/// `/healthz` is 503 while the local file cannot be used (here its path became a folder)
/// and shows the error; 200 again once a call succeeds.
#[tokio::test]
async fn healthz_reports_a_failing_local_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let server = start(&registry, None, "127.0.0.1:0").await;
    let addr = server.addr.as_str();
    let discover = |id| modern_call(id, "discover_peers", json!({}));
    let health = || raw(addr, "GET /healthz HTTP/1.1\r\nhost: probe.internal", b"");

    let (status, body) = raw(addr, &post_modern(addr, "discover_peers"), &discover(1)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = health().await;
    assert_eq!(status, 200, "{body}");

    std::fs::create_dir(&registry).expect("a folder where the file goes");
    let (_, body) = raw(addr, &post_modern(addr, "discover_peers"), &discover(2)).await;
    let answer = answer_of(&body);
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    assert!(
        answer["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("local_file: error")),
        "{answer}"
    );
    let (status, body) = health().await;
    assert_eq!(status, 503, "{body}");
    let report: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(report["ok"], false);
    let local = report["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == "local_file"))
        .expect("local_file in the report");
    assert_eq!(local["last_call_failed"], true, "{body}");
    assert!(local["last_error"].is_string(), "{body}");

    std::fs::remove_dir(&registry).expect("the folder goes");
    raw(addr, &post_modern(addr, "discover_peers"), &discover(3)).await;
    let (status, body) = health().await;
    assert_eq!(status, 200, "{body}");
}

/// SIGTERM while requests are in flight under long limits (a write waiting for a lock
/// another process holds, a body that never finishes arriving): the server stops within
/// its bounded drain (10 s), not after the requests' own limits.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_drains_within_a_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    let mut server = start_with(
        &registry,
        None,
        "127.0.0.1:0",
        &["--http-hold-limit", "600", "--source-timeout", "600"],
    )
    .await;
    let addr = server.addr.clone();
    let holder = std::fs::File::open(dir.path()).expect("folder");
    holder.lock().expect("hold the lock");
    let held = tokio::spawn(async move {
        raw(
            &addr,
            &post_modern(&addr, "register_peer"),
            &modern_call(
                1,
                "register_peer",
                json!({"peer_id": "stuck", "multiaddr": "/ip4/192.0.2.1/tcp/1"}),
            ),
        )
        .await
    });
    let mut trickle = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    let head = format!(
        "{}\r\ncontent-length: 1000\r\n\r\n{{\"jsonrpc\":",
        post_mcp(&server.addr, "")
    );
    trickle.write_all(head.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id().expect("pid");
    let started = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("exits within the drain")
        .expect("wait");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(status.success(), "{status:?}");
    held.abort();
    holder.unlock().expect("release");
}

/// A `peer_changes` long poll is held for its wait, past the hold limit (the limit is
/// for plain requests), answers as soon as a change arrives, and answers at once, empty,
/// when the server is told to stop.
#[tokio::test]
async fn a_long_poll_outlives_the_hold_limit_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_with(
        &dir.path().join("r.json"),
        None,
        "127.0.0.1:0",
        &["--http-hold-limit", "1"],
    )
    .await;
    let addr = server.addr.clone();
    // A cursor first, so that a change made before a poll starts still counts.
    let (_, body) = raw(
        &addr,
        &post_modern(&addr, "peer_changes"),
        &modern_call(9, "peer_changes", json!({})),
    )
    .await;
    let cursor = answer_of(&body)["result"]["structuredContent"]["cursor"].clone();
    let poll = |id: u64, wait: f64, cursor: Value| {
        let addr = addr.clone();
        async move {
            raw(
                &addr,
                &post_modern(&addr, "peer_changes"),
                &modern_call(
                    id,
                    "peer_changes",
                    json!({"wait_seconds": wait, "cursor": cursor}),
                ),
            )
            .await
        }
    };
    let started = std::time::Instant::now();
    let (status, body) = poll(1, 2.5, cursor.clone()).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    let answer = answer_of(&body);
    assert_eq!(
        answer["result"]["structuredContent"]["events"],
        json!([]),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(2400),
        "held {took:?}, not its wait"
    );

    // A registration ends the wait at once.
    let held = tokio::spawn(poll(2, 30.0, cursor.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = raw(
        &addr,
        &post_modern(&addr, "register_peer"),
        &modern_call(
            3,
            "register_peer",
            json!({"peer_id": "arrives", "multiaddr": "/ip4/192.0.2.1/tcp/1"}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the long poll answered when the peer arrived")
        .expect("task");
    let answer = answer_of(&body);
    assert_eq!(
        answer["result"]["structuredContent"]["events"][0]["peer_id"], "arrives",
        "{answer}"
    );
    let cursor = answer["result"]["structuredContent"]["cursor"].clone();

    // At shutdown a held long poll answers at once, empty, and the server exits.
    let held = tokio::spawn(poll(4, 30.0, cursor));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id().expect("pid").to_string();
    let signalled = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the long poll answered at shutdown")
        .expect("task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        answer_of(&body)["result"]["structuredContent"]["events"],
        json!([])
    );
    let exited = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(exited.success());
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "{:?}",
        signalled.elapsed()
    );
}
