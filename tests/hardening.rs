//! Hardening: hostile input over stdio, processes killed mid-write, many writers on one
//! file, and shutdown by closing stdin or SIGTERM.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{RawSession, read_registry};

fn registry_args(path: &Path) -> Vec<&std::ffi::OsStr> {
    vec!["--registry-path".as_ref(), path.as_os_str()]
}

/// A register call that is valid; each case below breaks one thing in it.
fn valid_register() -> Value {
    json!({"peer_id": "agent-1", "multiaddr": "/ip4/127.0.0.1/tcp/4001",
           "capabilities": ["storage"], "ttl_seconds": 60, "metadata": {"k": "v"}, "sources": ["local_file"]})
}

/// Hostile input: each line gets the right JSON-RPC error or tool error, the server
/// answers the next call, and the registry file is unchanged.
#[tokio::test]
async fn bad_input_battery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let mut raw = RawSession::start(&registry_args(&path)).await;
    raw.call(
        1,
        "register_peer",
        json!({"peer_id": "keeper", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await;
    assert_eq!(raw.expect_id(&json!(1)).await["result"]["isError"], false);
    let before = std::fs::read(&path).expect("registry");
    let mut id = 100u64;

    // Protocol-level garbage: (line, expected JSON-RPC error code).
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"register_peer","arguments":{{"metadata":{}}}}}}}"#,
        "[".repeat(100_000) + &"]".repeat(100_000)
    );
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"register_peer","arguments":{{"peer_id":"{}"}}}}}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let protocol: Vec<(String, i64, Value)> = vec![
        // A parse error's id is never guessed: this may be cut from a real request 1.
        (r#"{"jsonrpc":"2.0","id":1,"method":"#.into(), -32700, Value::Null),
        ("nul\u{0}and\u{7}bell".into(), -32700, Value::Null),
        (r#"{"hello":"world"}"#.into(), -32600, Value::Null),
        (r#"[{"jsonrpc":"2.0","id":3,"method":"tools/list"}]"#.into(), -32600, Value::Null),
        (deep, -32600, json!(5)),
        (huge, -32600, json!(6)),
        (r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"register_peer","arguments":{"ttl_seconds":1e400}}}"#.into(), -32700, Value::Null),
        (r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"register_peer","arguments":{"ttl_seconds":NaN}}}"#.into(), -32700, Value::Null),
        (r#"{"jsonrpc":"2.0","id":9,"method":"no/such/method"}"#.into(), -32601, json!(9)),
        (r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"register_peer","arguments":[1]}}"#.into(), -32602, json!(11)),
        (r#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"arguments":{}}}"#.into(), -32602, json!(12)),
        (r#"{"jsonrpc":"2.0","id":13}"#.into(), -32600, json!(13)),
        (r#"{"jsonrpc":"1.0","id":14,"method":"ping"}"#.into(), -32600, json!(14)),
        (r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"no_such_tool","arguments":{}}}"#.into(), -32602, json!(10)),
    ];
    for (line, code, expected_id) in protocol {
        raw.send_line(&line).await;
        let answer = loop {
            let message = raw.next().await.expect("an answer");
            if message.get("error").is_some() {
                break message;
            }
        };
        let shown = &line[..line.len().min(80)];
        assert_eq!(answer["error"]["code"], code, "{shown}: {answer}");
        assert_eq!(answer["id"], expected_id, "{shown}: {answer}");
        assert!(
            answer.get("id").is_some(),
            "{shown}: an error carries an id member: {answer}"
        );
        // The server is still there.
        id += 1;
        raw.call(id, "discover_peers", json!({})).await;
        assert_eq!(
            raw.expect_id(&json!(id)).await["result"]["isError"],
            false,
            "{shown}"
        );
    }

    // Tool-level: wrong types for every argument of every tool, unicode and control
    // characters in every string field, huge and fractional numbers, unknown fields.
    let wrong_type = |v: &Value| match v {
        Value::String(_) => json!(12),
        Value::Array(_) => json!("not-a-list"),
        Value::Object(_) => json!([1, 2]),
        Value::Bool(_) => json!("yes"),
        Value::Number(_) => json!("60"),
        Value::Null => json!({}),
    };
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let tools: [(&str, Value); 5] = [
        ("register_peer", valid_register()),
        (
            "update_peer",
            json!({"peer_id": "keeper", "multiaddr": "/ip4/127.0.0.1/tcp/2", "capabilities": ["x"], "metadata": {}, "ttl_seconds": 60, "sources": ["local_file"]}),
        ),
        (
            "discover_peers",
            json!({"capability_filter": ["storage"], "max_peers": 5, "include_expired": false, "sources": ["local_file"]}),
        ),
        (
            "unregister_peer",
            json!({"peer_id": "keeper", "sources": ["local_file"]}),
        ),
        (
            "cleanup_expired_peers",
            json!({"dry_run": false, "sources": ["local_file"]}),
        ),
    ];
    for (tool, valid) in &tools {
        for (field, value) in valid.as_object().expect("object") {
            let mut args = valid.clone();
            args[field] = wrong_type(value);
            cases.push((tool, args));
        }
        let mut args = valid.clone();
        args["surprise"] = json!(true);
        cases.push((tool, args));
    }
    for text in [
        "pe\u{0}er",
        "ünïcödé",
        "tab\there",
        "new\nline",
        "emoji-🚀",
        "\u{202e}rtl",
        "",
    ] {
        for field in ["peer_id", "multiaddr"] {
            let mut args = valid_register();
            args[field] = json!(text);
            cases.push(("register_peer", args));
        }
        let mut args = valid_register();
        args["capabilities"] = json!([text]);
        cases.push(("register_peer", args));
        let mut args = valid_register();
        args["sources"] = json!([text]);
        cases.push(("register_peer", args));
        cases.push(("discover_peers", json!({"capability_filter": [text]})));
        cases.push(("update_peer", json!({"peer_id": text})));
        cases.push(("unregister_peer", json!({"peer_id": text})));
    }
    for number in [
        json!(1e10),
        json!(1.5),
        json!(-1),
        json!(0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(18446744073709551615u64),
    ] {
        let mut args = valid_register();
        args["ttl_seconds"] = number.clone();
        cases.push(("register_peer", args));
        cases.push(("discover_peers", json!({"max_peers": number})));
    }
    for (tool, args) in cases {
        id += 1;
        raw.call(id, tool, args.clone()).await;
        let answer = raw.expect_id(&json!(id)).await;
        assert_eq!(
            answer["result"]["isError"], true,
            "{tool} {args} was accepted: {answer}"
        );
        let message = answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("");
        assert!(
            !message.is_empty(),
            "{tool} {args}: an error says what was wrong"
        );
    }

    id += 1;
    raw.call(id, "discover_peers", json!({})).await;
    let listed = raw.expect_id(&json!(id)).await;
    assert_eq!(listed["result"]["structuredContent"]["total_matched"], 1);
    assert_eq!(
        std::fs::read(&path).expect("registry"),
        before,
        "the registry changed"
    );
}

/// Small deterministic generator, so a failure can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// SIGKILL at random moments while a server is busy writing, 20 times: the file always
/// parses and holds every registration that was acknowledged. The file is seeded with
/// 20,000 peers (about 5 MB) and eight registrations are kept in flight, so the server
/// spends most of its time inside writes and most kills land in one (a rewrite in place,
/// without the temp file and rename, fails this test).
#[tokio::test]
async fn killed_writers_never_lose_acknowledged_registrations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let seed: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| {
            let id = format!("seed-{i:05}");
            let mut record = support::record_json(&id, &["storage"], support::now(), 604_800);
            record["source"] = json!("local_file");
            (id, record)
        })
        .collect();
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({"peers": seed, "last_cleanup": 0.0})).expect("json"),
    )
    .expect("seed");
    let mut rng = Lcg(0x5eed_1234);
    let mut acknowledged = BTreeSet::new();
    let mut total_sent = 0;
    for round in 0..20 {
        let mut raw = RawSession::start(&registry_args(&path)).await;
        // Wait until the server has read the file, so the kill lands among writes.
        raw.call(1, "discover_peers", json!({"max_peers": 1})).await;
        raw.expect_id(&json!(1)).await;
        let kill_at = Instant::now() + Duration::from_millis(rng.below(120));
        let mut in_flight = std::collections::HashMap::new();
        let mut next_id = 2u64;
        loop {
            while in_flight.len() < 8 {
                let peer_id = format!("r{round:02}-p{next_id:04}");
                raw.call(
                    next_id,
                    "register_peer",
                    json!({"peer_id": peer_id, "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
                )
                .await;
                in_flight.insert(next_id, peer_id);
                next_id += 1;
                total_sent += 1;
            }
            let answer = tokio::select! {
                answer = raw.next() => answer,
                () = tokio::time::sleep_until(kill_at.into()) => None,
            };
            let Some(answer) = answer else { break };
            assert_eq!(answer["result"]["isError"], false, "{answer}");
            let id = answer["id"].as_u64().expect("id");
            acknowledged.insert(in_flight.remove(&id).expect("an id that was sent"));
        }
        raw.child.start_kill().expect("SIGKILL");
        raw.child.wait().await.expect("reaped");

        let file = read_registry(&path); // panics if the file does not parse
        let peers = file["peers"].as_object().expect("peers");
        assert!(peers.len() >= 20_000, "round {round}: seeded peers lost");
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|id| !peers.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged but lost: {missing:?}"
        );
    }
    assert!(
        acknowledged.len() > 20,
        "only {} of {total_sent} registrations were acknowledged",
        acknowledged.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.len() <= 1, "temp files pile up: {leftovers:?}");
}

/// Eight server processes, 250 registrations each, into one file at once: all 2,000 stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_processes_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let mut writers = Vec::new();
    for w in 0..8 {
        let path = path.clone();
        writers.push(tokio::spawn(async move {
            let mut raw = RawSession::start(&registry_args(&path)).await;
            for i in 0..250u64 {
                raw.call(
                    i + 1,
                    "register_peer",
                    json!({"peer_id": format!("w{w}-{i:03}"), "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
                )
                .await;
                let answer = raw.expect_id(&json!(i + 1)).await;
                assert_eq!(answer["result"]["isError"], false, "{answer}");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let file = read_registry(&path);
    assert_eq!(file["peers"].as_object().expect("peers").len(), 2000);
}

/// The server on `path` with the GitHub source on `fake`, whose every answer takes
/// `latency`: a call that asks GitHub stays in flight that long (GitHub's and the
/// source's timeouts are well above it).
async fn with_slow_github(
    path: &Path,
    fake: &support::fake_github::FakeGitHub,
    latency: Duration,
) -> RawSession {
    fake.set_latency(latency);
    let cmd = support::github_command(
        path,
        fake,
        &[
            "--github-timeout",
            "120",
            "--source-timeout",
            "120",
            "--github-cache-seconds",
            "0",
        ],
    );
    RawSession::start_command(cmd).await
}

/// Closing stdin ends the server after answering and writing every request already
/// sent, including a call still waiting for GitHub well after rmcp's own 5 s drain.
#[tokio::test]
async fn closing_stdin_finishes_the_work_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let fake = support::fake_github::FakeGitHub::start().await;
    let mut raw = with_slow_github(&path, &fake, Duration::from_secs(8)).await;
    for i in 0..20u64 {
        raw.call(
            i + 1,
            "register_peer",
            json!({"peer_id": format!("p{i}"), "multiaddr": "/ip4/127.0.0.1/tcp/1", "sources": ["local_file"]}),
        )
        .await;
    }
    raw.call(21, "discover_peers", json!({})).await;
    raw.close_stdin();
    let mut answered = BTreeSet::new();
    let mut github = Value::Null;
    while let Some(message) = raw.next().await {
        if message["result"]["isError"] == false {
            answered.insert(message["id"].as_u64().expect("id"));
        }
        if message["id"] == 21 {
            github = message["result"]["structuredContent"]["outcomes"]["github"].clone();
        }
    }
    let status = raw.child.wait().await.expect("status");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        answered,
        (1..=21).collect::<BTreeSet<u64>>(),
        "every request sent before EOF is answered"
    );
    assert_eq!(
        github["status"], "ok",
        "the discover waited for GitHub: {github}"
    );
    assert_eq!(
        read_registry(&path)["peers"]
            .as_object()
            .expect("peers")
            .len(),
        20
    );
}

/// SIGTERM while the client keeps stdin open: the server reads no more, answers the
/// calls it has read (a discover still waiting for GitHub included), and exits cleanly;
/// every acknowledged write is in the file, which parses.
#[tokio::test]
async fn sigterm_exits_cleanly_with_everything_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let fake = support::fake_github::FakeGitHub::start().await;
    let mut raw = with_slow_github(&path, &fake, Duration::from_secs(8)).await;
    raw.call(
        1,
        "register_peer",
        json!({"peer_id": "before", "multiaddr": "/ip4/127.0.0.1/tcp/1", "sources": ["local_file"]}),
    )
    .await;
    assert_eq!(raw.expect_id(&json!(1)).await["result"]["isError"], false);
    raw.call(50, "discover_peers", json!({})).await;
    for i in 0..10u64 {
        raw.call(
            i + 2,
            "register_peer",
            json!({"peer_id": format!("late-{i}"), "multiaddr": "/ip4/127.0.0.1/tcp/1", "sources": ["local_file"]}),
        )
        .await;
    }
    // A ping is a read: it is answered after the writes before it, so its answer shows
    // that the server has read everything above and that the discover is in flight.
    raw.send_line(r#"{"jsonrpc":"2.0","id":60,"method":"ping"}"#)
        .await;
    let mut acknowledged = vec!["before".to_owned()];
    let mut discover = Value::Null;
    let mut record = |message: Value, acknowledged: &mut Vec<String>| {
        if message["id"] == 50 {
            discover = message.clone();
        } else if message["result"]["isError"] == false
            && let Some(id @ 2..=11) = message["id"].as_u64()
        {
            acknowledged.push(format!("late-{}", id - 2));
        }
    };
    loop {
        let message = raw.next().await.expect("the ping's answer");
        if message["id"] == 60 {
            break;
        }
        record(message, &mut acknowledged);
    }
    let pid = raw.child.id().expect("pid");
    let killed = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    while let Some(message) = raw.next().await {
        record(message, &mut acknowledged);
    }
    // A hang guard, not a measure: the server has written everything and closed stdout.
    let status = tokio::time::timeout(Duration::from_secs(60), raw.child.wait())
        .await
        .expect("the server exits once stdout is closed")
        .expect("status");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        discover["result"]["structuredContent"]["outcomes"]["github"]["status"], "ok",
        "the call in flight at SIGTERM is answered: {discover}"
    );
    assert_eq!(acknowledged.len(), 11, "{acknowledged:?}");
    let file = read_registry(&path);
    for id in acknowledged {
        assert!(
            file["peers"][&id].is_object(),
            "{id} was acknowledged but is not in the file"
        );
    }
}

/// A client that closes the server's stderr: log lines that cannot be written are
/// dropped, and the server goes on answering (it used to exit on the first warning,
/// when tracing reported the failed write with a panicking `eprintln!`).
#[tokio::test]
async fn a_closed_stderr_does_not_stop_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = support::command();
    cmd.arg("--registry-path").arg(dir.path().join("r.json"));
    let mut raw = support::RawSession::start_with_closed_stderr(cmd).await;
    // Each of these logs a warning on the closed stderr.
    raw.send_line("garbage").await;
    raw.send_line("[1, 2]").await;
    raw.send_line(r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#)
        .await;
    raw.expect_id(&json!(5)).await;
    assert!(
        raw.child.try_wait().expect("status").is_none(),
        "the server is still running"
    );
}
