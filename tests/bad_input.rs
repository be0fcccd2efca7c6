//! Bad input over stdio: each mistake is a tool error that says what to fix, and the
//! registry file is left exactly as it was.

mod support;

use std::time::Duration;

use rmcp::ServiceError;
use rmcp::model::{CallToolRequestParams, ErrorCode};
use serde_json::{Value, json};
use support::{call, err, ok};

const LIBP2P_ID: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

fn register(overrides: Value) -> Value {
    let mut args = json!({"peer_id": "agent-1", "multiaddr": "/ip4/127.0.0.1/tcp/4001"});
    for (k, v) in overrides.as_object().expect("object") {
        args[k] = v.clone();
    }
    args
}

/// Every bad argument of the issue's list gets a tool error naming the problem; the
/// registry file is byte-for-byte unchanged afterwards.
#[tokio::test]
async fn bad_arguments_are_tool_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let client = support::start(&path, &[]).await;
    ok(&call(
        &client,
        "register_peer",
        register(json!({"peer_id": "keeper"})),
    )
    .await);
    let before = std::fs::read(&path).expect("registry");

    let many: Vec<String> = (0..33).map(|i| format!("cap{i}")).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "register_peer",
            register(json!({"peer_id": ""})),
            "peer_id must not be empty",
        ),
        (
            "register_peer",
            register(json!({"peer_id": "a".repeat(129)})),
            "peer_id is 129 characters long; the limit is 128",
        ),
        (
            "register_peer",
            register(json!({"peer_id": "has space"})),
            "only A-Z a-z 0-9 . _ - are allowed",
        ),
        (
            "register_peer",
            register(json!({"multiaddr": "not-a-multiaddr"})),
            "multiaddr `not-a-multiaddr` does not parse",
        ),
        (
            "register_peer",
            register(json!({"multiaddr": format!("/ip4/127.0.0.1/tcp/1/p2p/{LIBP2P_ID}")})),
            "they must be equal",
        ),
        (
            "register_peer",
            register(json!({"ttl_seconds": 0})),
            "ttl_seconds must be within 1..=604800 (got 0)",
        ),
        (
            "register_peer",
            register(json!({"ttl_seconds": 1_000_000_000u64})),
            "ttl_seconds must be within 1..=604800 (got 1000000000)",
        ),
        (
            "register_peer",
            register(json!({"ttl_seconds": -5})),
            "ttl_seconds must be within 1..=604800 (got -5)",
        ),
        (
            "register_peer",
            register(json!({"capabilities": many})),
            "33 capabilities given; at most 32",
        ),
        (
            "register_peer",
            register(json!({"capabilities": ["GPU"]})),
            "capability `GPU` must be lower-case: use `gpu`",
        ),
        (
            "register_peer",
            register(json!({"capabilities": ["c".repeat(60)]})),
            "1 to 39 characters",
        ),
        (
            "register_peer",
            register(json!({"metadata": {"blob": "x".repeat(5000)}})),
            "the limit is 4096",
        ),
        (
            "register_peer",
            register(json!({"peer_id": 5})),
            "invalid type: integer `5`, expected a string",
        ),
        (
            "register_peer",
            register(json!({"capabilities": "storage"})),
            "invalid type: string \"storage\", expected a sequence",
        ),
        (
            "register_peer",
            register(json!({"ttl_seconds": "60"})),
            "invalid type: string \"60\"",
        ),
        (
            "register_peer",
            register(json!({"metadata": [1, 2]})),
            "invalid type: sequence, expected a map",
        ),
        (
            "register_peer",
            json!({"peer_id": "agent-1"}),
            "missing field `multiaddr`",
        ),
        (
            "register_peer",
            register(json!({"capabilites": ["storage"]})),
            "unknown field `capabilites`",
        ),
        (
            "register_peer",
            register(json!({"sources": ["dht"]})),
            "unknown source `dht`; name some of: local_file, github, etcd",
        ),
        (
            "register_peer",
            register(json!({"sources": []})),
            "sources is empty",
        ),
        (
            "update_peer",
            json!({"peer_id": "ghost"}),
            "peer `ghost` is not registered in any source asked (local_file); call register_peer",
        ),
        (
            "update_peer",
            json!({"peer_id": "keeper", "ttl_seconds": 0}),
            "ttl_seconds must be within",
        ),
        (
            "update_peer",
            json!({"peer_id": "keeper", "multiaddr": "/tcp/x"}),
            "does not parse",
        ),
        (
            "discover_peers",
            json!({"max_peers": 0}),
            "max_peers must be within 1..=1000 (got 0)",
        ),
        (
            "discover_peers",
            json!({"max_peers": 5000}),
            "max_peers must be within 1..=1000 (got 5000)",
        ),
        (
            "discover_peers",
            json!({"capability_filter": ["Bad Name"]}),
            "capability `Bad Name` is not allowed",
        ),
        (
            "discover_peers",
            json!({"include_expired": "yes"}),
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "unregister_peer",
            json!({"peer_id": ""}),
            "peer_id must not be empty",
        ),
        (
            "cleanup_expired_peers",
            json!({"dry_run": 1}),
            "expected a boolean",
        ),
    ];
    for (tool, args, expected) in cases {
        let result = call(&client, tool, args.clone()).await;
        let message = err(&result);
        assert!(
            message.contains(expected),
            "{tool} {args}: expected a message containing {expected:?}, got {message:?}"
        );
    }

    // An unknown tool is a protocol error (MCP: -32602) whose message lists the tools.
    match client
        .call_tool(CallToolRequestParams::new("register_peers"))
        .await
    {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
            assert!(
                e.message.contains("unknown tool `register_peers`"),
                "{}",
                e.message
            );
            assert!(e.message.contains("register_peer,"), "{}", e.message);
        }
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }

    assert_eq!(
        std::fs::read(&path).expect("registry"),
        before,
        "the registry changed"
    );
    let listed = call(&client, "discover_peers", json!({})).await;
    assert_eq!(support::ids(ok(&listed)), ["keeper"]);
    client.cancel().await.expect("shutdown");
}

/// An error whose request id could not be read follows the protocol the client speaks:
/// before any handshake `"id": null` (JSON-RPC 2.0), and once the client speaks
/// 2026-07-28 (inline negotiation, `server/discover`) no `id` member at all (MCP's rule).
/// After an `initialize` it is `null` again (see the garbage test below). A parse error's
/// id is never guessed from the text.
#[tokio::test]
async fn an_unreadable_id_follows_the_negotiated_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = support::command();
    cmd.arg("--registry-path").arg(dir.path().join("r.json"));
    let mut raw = support::RawSession::start_bare(cmd).await;
    let truncated = r#"{"jsonrpc":"2.0","id":1,"method":"#;

    raw.send_line(truncated).await;
    let answer = raw.next().await.expect("an answer");
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    assert_eq!(answer.get("id"), Some(&Value::Null), "{answer}");

    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
    raw.send_line(&format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"server/discover","params":{{{meta}}}}}"#
    ))
    .await;
    let discovered = raw.expect_id(&json!(2)).await;
    assert!(
        discovered["result"]["supportedVersions"].is_array(),
        "{discovered}"
    );

    for (line, code) in [
        (truncated, -32700),
        ("[1]", -32600),
        (r#"{"foo":1}"#, -32600),
    ] {
        raw.send_line(line).await;
        let answer = raw.next().await.expect("an answer");
        assert_eq!(answer["error"]["code"], code, "{line}: {answer}");
        assert!(answer.get("id").is_none(), "{line}: {answer}");
    }
    // A readable id is still echoed, and calls go on working.
    raw.send_line(&format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"discover_peers","arguments":{{}},{meta}}}}}"#
    ))
    .await;
    let found = raw.expect_id(&json!(3)).await;
    assert_eq!(found["result"]["isError"], false, "{found}");
}

/// Garbage on stdin never kills the server: a line that is not JSON gets a parse error
/// (-32700, id null), JSON that is not JSON-RPC and batches get -32600, and everything
/// on stdout is JSON.
#[tokio::test]
async fn garbage_lines_get_protocol_errors_and_do_not_kill_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let mut raw = support::RawSession::start(&["--registry-path".as_ref(), path.as_os_str()]).await;
    let mut codes = Vec::new();
    for line in [
        "this is not json",
        "{\"unterminated\": ",
        "\u{0}\u{1}\u{7f}",
        r#"{"foo": 1}"#,
        r#"[{"jsonrpc":"2.0","id":7,"method":"tools/list"}]"#,
    ] {
        raw.send_line(line).await;
        let answer = raw.next().await.expect("an answer");
        assert_eq!(answer["id"], Value::Null, "{answer}");
        codes.push(answer["error"]["code"].as_i64().expect("error code"));
    }
    assert_eq!(codes, [-32700, -32700, -32700, -32600, -32600]);
    raw.call(2, "discover_peers", json!({})).await;
    let answered = raw.expect_id(&json!(2)).await;
    assert_eq!(answered["result"]["isError"], false);
    assert_eq!(answered["result"]["structuredContent"]["total_matched"], 0);

    raw.close_stdin();
    let status = tokio::time::timeout(Duration::from_secs(10), raw.child.wait())
        .await
        .expect("exits when stdin closes")
        .expect("status");
    assert!(status.success(), "{status:?}");
}
