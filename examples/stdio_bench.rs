//! End-to-end benchmark over stdio: starts the real server binary, pre-fills N peers, and
//! reports latency percentiles of MCP round trips, time from spawn to the `initialize`
//! answer, and peak RSS. With `--github`, runs against the fake GitHub and also reports
//! GitHub requests per operation.
//!
//! ```sh
//! cargo build --release && cargo run --release --example stdio_bench -- --peers 1000,10000,100000
//! cargo run --release --example stdio_bench -- --github --peers 1000
//! ```
//! Figures are written to stderr as Markdown tables (stdout is left alone).

#[path = "../tests/support/fake_github.rs"]
mod fake_github;
#[path = "../benches/figures.rs"]
mod figures;
#[path = "../benches/fixtures.rs"]
mod fixtures;

use figures::{ms, percentile};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Registry sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    peers: Vec<usize>,
    /// The server binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/peer-discovery-mcp")]
    bin: PathBuf,
    /// Calls per measured operation.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Spawns for the start-up measurement.
    #[arg(long, default_value_t = 30)]
    spawns: usize,
    /// Also run the GitHub source against the fake GitHub (in this process).
    #[arg(long)]
    github: bool,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn prefill(path: &Path, n: usize) {
    fixtures::prefill(path, n, now());
}

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Session {
    fn spawn(bin: &Path, args: &[String], env: &[(&str, String)]) -> (Session, Duration) {
        let started = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut session = Session {
            child,
            stdin,
            stdout,
            next_id: 1,
        };
        session.send(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}));
        session.read();
        let to_initialize = started.elapsed();
        session.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
        (session, to_initialize)
    }

    fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).expect("json");
        line.push(b'\n');
        self.stdin.write_all(&line).expect("write");
        self.stdin.flush().expect("flush");
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        line
    }

    fn read(&mut self) -> Value {
        serde_json::from_str(&self.read_line()).expect("answer is JSON")
    }

    /// One request, timed from writing it to reading the whole answer line (parsing the
    /// answer is the client's cost, so it is left out).
    fn round_trip(&mut self, method: &str, params: Value) -> (Duration, Value) {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
        let started = Instant::now();
        self.send(&request);
        loop {
            let line = self.read_line();
            let took = started.elapsed();
            let answer: Value = serde_json::from_str(&line).expect("answer is JSON");
            if answer["id"] == id {
                return (took, answer);
            }
        }
    }

    /// `calls` requests written at once (as a busy client or several agents behind one
    /// server would), timed until the last answer is read.
    fn burst(&mut self, calls: Vec<(String, Value)>) -> Duration {
        let first_id = self.next_id;
        let mut lines = Vec::new();
        for (tool, arguments) in &calls {
            let request = json!({"jsonrpc":"2.0","id":self.next_id,"method":"tools/call",
                "params":{"name": tool, "arguments": arguments}});
            self.next_id += 1;
            lines.extend(serde_json::to_vec(&request).expect("json"));
            lines.push(b'\n');
        }
        let started = Instant::now();
        self.stdin.write_all(&lines).expect("write");
        self.stdin.flush().expect("flush");
        let mut answered = 0;
        while answered < calls.len() {
            let answer: Value = serde_json::from_str(&self.read_line()).expect("answer is JSON");
            if answer["id"].as_u64().is_some_and(|id| id >= first_id) {
                assert_eq!(
                    answer["result"]["isError"], false,
                    "burst call failed: {answer}"
                );
                answered += 1;
            }
        }
        started.elapsed()
    }

    fn call(&mut self, tool: &str, arguments: Value) -> (Duration, Value) {
        let (took, answer) =
            self.round_trip("tools/call", json!({"name": tool, "arguments": arguments}));
        assert_eq!(
            answer["result"]["isError"], false,
            "{tool} failed: {answer}"
        );
        (took, answer)
    }

    /// Peak resident set size (VmHWM) in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

struct Row {
    operation: String,
    p50: Duration,
    p99: Duration,
    extra: String,
}

fn measure(
    session: &mut Session,
    calls: usize,
    mut op: impl FnMut(&mut Session, usize) -> Duration,
) -> (Duration, Duration) {
    for i in 0..(calls / 10).max(10) {
        op(session, i); // warm-up
    }
    let mut samples: Vec<Duration> = (0..calls).map(|i| op(session, calls + i)).collect();
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

fn bench_local(args: &Args, n: usize) -> (Vec<Row>, f64, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    prefill(&path, n);
    let server_args = vec![
        "--registry-path".to_owned(),
        path.display().to_string(),
        "--cleanup-interval".to_owned(),
        "0".to_owned(),
    ];
    let mut starts: Vec<Duration> = (0..args.spawns)
        .map(|_| {
            let (session, took) = Session::spawn(&args.bin, &server_args, &[]);
            session.close();
            took
        })
        .collect();
    let start_p50 = percentile(&mut starts, 0.5);

    let (mut s, _) = Session::spawn(&args.bin, &server_args, &[]);
    let mut rows = Vec::new();
    let (p50, p99) = measure(&mut s, args.calls, |s, _| s.round_trip("ping", json!({})).0);
    rows.push(Row {
        operation: "ping (bare JSON-RPC round trip)".into(),
        p50,
        p99,
        extra: String::new(),
    });
    let (p50, p99) = measure(&mut s, args.calls, |s, _| {
        s.call(
            "discover_peers",
            json!({"capability_filter": ["compute"], "max_peers": 50}),
        )
        .0
    });
    rows.push(Row {
        operation: "discover_peers [compute], max 50".into(),
        p50,
        p99,
        extra: format!("{} matches", n / 10),
    });
    let (p50, p99) = measure(&mut s, args.calls.min(500), |s, i| {
        s.call("register_peer", json!({"peer_id": format!("new-{i:06}"), "multiaddr": "/ip4/127.0.0.1/tcp/1", "capabilities": ["compute"]})).0
    });
    rows.push(Row {
        operation: "register_peer (new peer, fsync)".into(),
        p50,
        p99,
        extra: String::new(),
    });
    let (p50, p99) = measure(&mut s, args.calls.min(500), |s, i| {
        s.call(
            "update_peer",
            json!({"peer_id": format!("peer-{:06}", i % n)}),
        )
        .0
    });
    rows.push(Row {
        operation: "update_peer (heartbeat, fsync)".into(),
        p50,
        p99,
        extra: String::new(),
    });
    const BURST: usize = 32;
    let (p50, p99) = measure(&mut s, (args.calls / 20).max(20), |s, i| {
        let calls = (0..BURST)
            .map(|k| {
                let peer_id = format!("peer-{:06}", (i * BURST + k) % n);
                ("update_peer".to_owned(), json!({"peer_id": peer_id}))
            })
            .collect();
        s.burst(calls)
    });
    rows.push(Row {
        operation: format!("{BURST} update_peer written at once (group commit), whole burst"),
        p50,
        p99,
        extra: format!("{} ms per call", ms(p50 / BURST as u32)),
    });
    let rss = s.peak_rss_mib();
    s.close();
    (rows, rss, start_p50)
}

/// The time of a call whose GitHub outcome must be `ok`: a degraded source (rate
/// limited, failing) would make the figures meaningless.
fn github_ok((took, answer): (Duration, Value)) -> Duration {
    let github = &answer["result"]["structuredContent"]["outcomes"]["github"];
    assert_eq!(github["status"], "ok", "GitHub outcome: {github}");
    took
}

fn bench_github(args: &Args, n: usize) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fake = runtime.block_on(fake_github::FakeGitHub::start());
    let t = now();
    for i in 0..n {
        let id = format!("gh-{i:05}");
        let caps: &[&str] = if i % 10 == 0 {
            &["storage", "compute"]
        } else {
            &["storage"]
        };
        let mut labels = vec!["peer-registry".to_owned(), "peer-active".to_owned()];
        labels.extend(caps.iter().map(|c| format!("capability-{c}")));
        let body = json!({"peer_id": id, "multiaddr": "/ip4/192.0.2.1/tcp/4001", "capabilities": caps,
            "first_seen": t, "last_seen": t, "source": "github", "ttl_seconds": 604800, "metadata": {}});
        fake.seed_issue(fake_github::SeedIssue {
            title: format!("Peer: {id}"),
            body: body.to_string(),
            labels,
            author: fake_github::LOGIN.to_owned(),
            open: true,
        });
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server_args: Vec<String> = [
        "--registry-path",
        &dir.path().join("r.json").display().to_string(),
        "--github-repo",
        "acme/peers",
        "--github-api-url",
        &fake.base_url(),
        "--github-cache-seconds",
        "0",
        "--cleanup-interval",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (mut s, _) = Session::spawn(
        &args.bin,
        &server_args,
        &[("GITHUB_TOKEN", fake_github::TOKEN.to_owned())],
    );
    let calls = (args.calls / 10).max(20);
    let mut rows = Vec::new();
    let mut run_calls = |s: &mut Session,
                         name: &str,
                         calls: usize,
                         op: &dyn Fn(&mut Session, usize) -> Duration| {
        op(s, 0);
        fake.clear_log();
        let mut samples: Vec<Duration> = (1..=calls).map(|i| op(s, i)).collect();
        let requests = fake.requests();
        let not_modified = requests.iter().filter(|r| r.status == 304).count();
        rows.push(Row {
            operation: name.to_owned(),
            p50: percentile(&mut samples, 0.5),
            p99: percentile(&mut samples, 0.99),
            extra: format!(
                "{:.1} requests/call ({:.1} of them 304)",
                requests.len() as f64 / calls as f64,
                not_modified as f64 / calls as f64
            ),
        });
    };
    run_calls(
        &mut s,
        "discover_peers [compute], max 50 (GitHub + file)",
        calls,
        &|s, _| {
            github_ok(s.call(
                "discover_peers",
                json!({"capability_filter": ["compute"], "max_peers": 50}),
            ))
        },
    );
    // The server spends at most 80 GitHub writes a minute (docs/github.md): stay within
    // it, or the rows would time the budget's refusals instead of the source.
    let registers = calls.min(60);
    run_calls(&mut s, "register_peer (new peer)", registers, &|s, i| {
        github_ok(s.call(
            "register_peer",
            json!({"peer_id": format!("bench-{i:05}"), "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
        ))
    });
    run_calls(
        &mut s,
        "update_peer (coalesced heartbeat)",
        calls,
        &|s, i| {
            github_ok(s.call(
                "update_peer",
                json!({"peer_id": format!("bench-{:05}", 1 + i % registers)}),
            ))
        },
    );
    s.close();
    eprintln!("\n### GitHub source against the fake GitHub, {n} peers in the repository\n");
    print_rows(&rows, "GitHub requests");
    drop(fake);
}

/// One operation a line, as a Markdown table on stderr; `extra` heads the last column.
fn print_rows(rows: &[Row], extra: &str) {
    eprintln!("| operation | p50 ms | p99 ms | {extra} |");
    eprintln!("| --- | --- | --- | --- |");
    for row in rows {
        eprintln!(
            "| {} | {} | {} | {} |",
            row.operation,
            ms(row.p50),
            ms(row.p99),
            row.extra
        );
    }
}

fn main() {
    let args = Args::parse();
    assert!(
        args.bin.exists(),
        "{} not found: run `cargo build --release` first",
        args.bin.display()
    );
    if args.github {
        for &n in &args.peers {
            bench_github(&args, n);
        }
        return;
    }
    let mut summary = Vec::new();
    for &n in &args.peers {
        let (rows, rss, start) = bench_local(&args, n);
        eprintln!("\n### Local file, {n} peers\n");
        print_rows(&rows, "notes");
        eprintln!(
            "\nspawn to initialize answer p50: {} ms; peak RSS: {rss:.1} MiB",
            ms(start)
        );
        summary.push((n, rows, rss, start));
    }
    eprintln!("\n### Summary\n");
    eprintln!(
        "| peers | spawn→initialize p50 ms | discover p50 ms | register p50 ms | update p50 ms | peak RSS MiB |"
    );
    eprintln!("| --- | --- | --- | --- | --- | --- |");
    for (n, rows, rss, start) in summary {
        eprintln!(
            "| {n} | {} | {} | {} | {} | {rss:.1} |",
            ms(start),
            ms(rows[1].p50),
            ms(rows[2].p50),
            ms(rows[3].p50)
        );
    }
}
