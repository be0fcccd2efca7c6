//! Calls take effect in the order they arrive: within one server process, a call sees
//! every write that arrived before it, even when the client pipelines them all at once.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `lines` to a fresh server on `registry` at once, closes stdin, and returns every
/// answer by id.
async fn pipe_all(registry: &std::path::Path, lines: &[String]) -> BTreeMap<u64, Value> {
    let mut child = support::command()
        .arg("--registry-path")
        .arg(registry)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let input = lines.join("\n") + "\n";
    // Written from a task: the server may answer before it has read everything.
    let writer = tokio::spawn(async move {
        stdin.write_all(input.as_bytes()).await.expect("write");
    });
    let mut output = String::new();
    stdout.read_to_string(&mut output).await.expect("read");
    writer.await.expect("writer");
    let status = child.wait().await.expect("status");
    assert!(status.success(), "{status:?}");
    output
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON"))
        .filter_map(|m| Some((m["id"].as_u64()?, m)))
        .collect()
}

fn handshake() -> Vec<String> {
    vec![
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}).to_string(),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(),
    ]
}

fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

/// The README's shell example (register_peer then discover_peers, piped at once) finds
/// the peer it just registered.
#[tokio::test]
async fn the_readme_example_sees_its_peer() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("printf '%s\\n' \\")
        .expect("the README's printf example");
    let lines: Vec<String> = readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('|'))
        .map(|l| {
            let l = l.trim().trim_end_matches('\\').trim_end();
            l.trim_matches('\'').to_owned()
        })
        .collect();
    assert_eq!(lines.len(), 4, "the example's lines: {lines:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let answers = pipe_all(&dir.path().join("r.json"), &lines).await;
    let found = &answers[&3]["result"];
    assert_eq!(found["isError"], false, "{found}");
    assert_eq!(found["structuredContent"]["total_matched"], 1, "{found}");
    assert_eq!(
        found["structuredContent"]["peers"][0]["peer_id"], "agent-7",
        "{found}"
    );
}

/// For 20 peers, register, update and discover of each are pipelined at once: every
/// update finds its peer, and every discover sees the update before it.
#[tokio::test]
async fn register_then_update_pipelined_works() {
    let mut lines = handshake();
    for i in 0..20u64 {
        let peer = format!("p{i}");
        lines.push(call(
            3 * i + 1,
            "register_peer",
            json!({"peer_id": peer, "multiaddr": "/ip4/127.0.0.1/tcp/1", "capabilities": ["storage"]}),
        ));
        lines.push(call(
            3 * i + 2,
            "update_peer",
            json!({"peer_id": peer, "metadata": {"round": i}}),
        ));
        lines.push(call(
            3 * i + 3,
            "discover_peers",
            json!({"max_peers": 1000}),
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let answers = pipe_all(&dir.path().join("r.json"), &lines).await;
    for i in 0..20u64 {
        let update = &answers[&(3 * i + 2)]["result"];
        assert_eq!(update["isError"], false, "update of p{i}: {update}");
        let listed = &answers[&(3 * i + 3)]["result"]["structuredContent"];
        let peers = listed["peers"].as_array().expect("peers");
        for j in 0..=i {
            let seen = peers
                .iter()
                .find(|p| p["peer_id"] == format!("p{j}"))
                .unwrap_or_else(|| panic!("discover {i} misses p{j}: {listed}"));
            assert_eq!(seen["metadata"], json!({"round": j}), "discover {i}");
        }
    }
}
