//! A client that pipelines calls without reading stdout cannot make the server buffer
//! without bound: the server stops reading stdin, and every answer still arrives once
//! the client reads.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Resident memory of a process, from /proc/PID/status.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

/// The answers of the flood, read without parsing the peers.
#[derive(Deserialize)]
struct Answer {
    id: Option<u64>,
    result: Option<AnswerResult>,
}

#[derive(Deserialize)]
struct AnswerResult {
    #[serde(rename = "isError")]
    is_error: bool,
    #[serde(rename = "structuredContent")]
    structured: Option<Matched>,
}

#[derive(Deserialize)]
struct Matched {
    total_matched: u64,
    #[serde(rename = "peers")]
    _peers: IgnoredAny,
}

/// 5,000 discover calls (about 20 KiB of answer each, 100 MB in all) piped without
/// reading stdout: the server stops reading once its bounded queues are full, its RSS
/// stays under 100 MiB, and once the client reads, every call is answered.
#[tokio::test]
async fn a_client_that_does_not_read_cannot_grow_the_server() {
    const PEERS: u64 = 20;
    const CALLS: u64 = 5_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = support::command()
        .arg("--registry-path")
        .arg(dir.path().join("r.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let pid = child.id().expect("pid");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();

    // Handshake and PEERS peers, answered one by one.
    let mut setup = vec![
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    ];
    for i in 0..PEERS {
        setup.push(
            json!({"jsonrpc": "2.0", "id": CALLS + 1 + i, "method": "tools/call",
            "params": {"name": "register_peer", "arguments": {
                "peer_id": format!("peer-{i:02}"),
                "multiaddr": format!("/dns4/node-{i}.example.org/tcp/4001"),
                "capabilities": ["storage", "compute"],
                "metadata": {"note": "x".repeat(500)}}}}),
        );
    }
    for message in &setup {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .expect("write");
        if message.get("id").is_some() {
            let line = stdout.next_line().await.expect("read").expect("answer");
            assert!(line.contains("\"result\""), "{line}");
        }
    }
    let idle_rss = rss_bytes(pid);

    // The flood, written by a task that counts what the server took.
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = Arc::clone(&written);
        tokio::spawn(async move {
            for id in 1..=CALLS {
                let line = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": "discover_peers", "arguments": {"max_peers": 1000}}});
                stdin
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .expect("write");
                written.store(id, Ordering::SeqCst);
            }
            // Dropping stdin closes it: the server ends once everything is answered.
        })
    };

    // Watch the server while nobody reads its stdout, until nothing moves any more (the
    // writer takes no more lines and RSS stays put) for a second.
    let mut peak = idle_rss;
    let mut last = (0, idle_rss);
    let mut quiet = 0;
    while quiet < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (written.load(Ordering::SeqCst), rss_bytes(pid));
        peak = peak.max(now.1);
        if now.0 == last.0 && now.1.abs_diff(last.1) < MIB {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = now;
    }
    let taken = written.load(Ordering::SeqCst);
    eprintln!(
        "server RSS: {} MiB idle, {} MiB at most while stdout was not read; it took {taken} of {CALLS} calls",
        idle_rss / MIB,
        peak / MIB
    );
    assert!(
        !writer.is_finished() && taken < CALLS,
        "the server read all {CALLS} calls although nobody read its answers"
    );
    assert!(
        peak < 100 * MIB,
        "the server grew to {} MiB while stdout was not read",
        peak / MIB
    );

    // Now read: every call is answered, once, in full.
    let mut answered = BTreeSet::new();
    while let Some(line) = stdout.next_line().await.expect("read") {
        let answer: Answer = serde_json::from_str(&line).expect("JSON answer");
        let id = answer.id.expect("an answer has an id");
        let result = answer.result.expect("a result");
        assert!(!result.is_error, "call {id} failed");
        assert_eq!(
            result.structured.map(|s| s.total_matched),
            Some(PEERS),
            "call {id}"
        );
        assert!(answered.insert(id), "call {id} answered twice");
    }
    writer.await.expect("writer");
    assert_eq!(answered.len() as u64, CALLS, "every call is answered");
    let status = child.wait().await.expect("status");
    assert!(status.success(), "{status:?}");
}
