//! Benchmark of the etcd source: register, heartbeat and discover latency (p50/p99) with
//! 1,000 and 10,000 peers in etcd (100,000 with `--large`), heartbeats a second sustained
//! from concurrent callers, time until another server sees a new peer, and the server's
//! memory. Each is measured through MCP (the real server binary over stdio, with
//! `sources: ["etcd"]`) and at the source's own API beside it.
//!
//! ```sh
//! cargo build --release --features etcd
//! cargo run --release --features etcd --example etcd_bench              # 1,000 and 10,000
//! cargo run --release --features etcd --example etcd_bench -- --large   # and 100,000
//! cargo run --release --features etcd --example etcd_bench -- --endpoints http://127.0.0.1:2379
//! ```
//! Without `--endpoints` it starts a local single-member etcd (Debian's `etcd-server`) on
//! loopback ports in a temporary folder, and stops it at the end. Figures are written to
//! stderr as Markdown tables (stdout is left alone).

#[path = "../tests/support/etcd.rs"]
mod etcd_launcher;
#[path = "../benches/figures.rs"]
mod figures;

use figures::{ms, percentile};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use peer_discovery_mcp::coordinator::Direct;
use peer_discovery_mcp::peer::{Announcement, Heartbeat, PeerFilter, PeerRecord};
use peer_discovery_mcp::source::etcd::EtcdSettings;
use peer_discovery_mcp::source::{EtcdSource, Source};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Numbers of peers in etcd to measure at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    peers: Vec<usize>,
    /// Also measure at 100,000 peers (slow to fill; kept out of CI).
    #[arg(long)]
    large: bool,
    /// An etcd to use instead of starting one (comma-separated URLs).
    #[arg(long)]
    endpoints: Option<String>,
    /// The server binary (build it with `cargo build --release --features etcd`).
    #[arg(long, default_value = "target/release/peer-discovery-mcp")]
    bin: PathBuf,
    /// Calls per measured operation.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Seconds of each sustained-heartbeat run.
    #[arg(long, default_value_t = 5.0)]
    sustain_seconds: f64,
    /// Concurrent callers in the sustained-heartbeat run at the source's API.
    #[arg(long, default_value_t = 128)]
    callers: usize,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn record(peer_id: &str, i: usize, at: f64) -> PeerRecord {
    let capabilities: Vec<String> = if i.is_multiple_of(10) {
        vec!["storage".into(), "compute".into()]
    } else {
        vec!["storage".into()]
    };
    Announcement::new(
        peer_id.to_owned(),
        &format!("/ip4/10.0.{}.{}/tcp/4001", i / 256 % 256, i % 256),
        &capabilities,
        Some(3600),
        Some(
            json!({"rack": i % 40})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        3600,
    )
    .expect("valid record")
    .into_record(at)
}

struct Row {
    operation: String,
    p50: String,
    p99: String,
    notes: String,
}

impl Row {
    fn timed(operation: impl Into<String>, mut samples: Vec<Duration>, notes: String) -> Row {
        Row {
            operation: operation.into(),
            p50: ms(percentile(&mut samples, 0.5)),
            p99: ms(percentile(&mut samples, 0.99)),
            notes,
        }
    }

    fn figure(operation: impl Into<String>, notes: String) -> Row {
        Row {
            operation: operation.into(),
            p50: "".into(),
            p99: "".into(),
            notes,
        }
    }
}

/// The server binary over stdio, driven with raw JSON-RPC lines.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Session {
    fn spawn(bin: &Path, args: &[String]) -> Session {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
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
        session.read_line();
        session.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
        session
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

    /// One tool call, timed from writing it to reading its answer line; its etcd outcome
    /// must be `ok` (a degraded source would make the figures meaningless).
    fn call(&mut self, tool: &str, arguments: Value) -> (Duration, Value) {
        let id = self.next_id;
        self.next_id += 1;
        let started = Instant::now();
        self.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name": tool, "arguments": arguments}}));
        loop {
            let line = self.read_line();
            let took = started.elapsed();
            let answer: Value = serde_json::from_str(&line).expect("answer is JSON");
            if answer["id"] == id {
                let outcome = &answer["result"]["structuredContent"]["outcomes"]["etcd"];
                assert_eq!(outcome["status"], "ok", "{tool}: {answer}");
                return (took, answer);
            }
        }
    }

    /// Keeps `window` calls made by `next_call` in flight (many agents behind one server)
    /// for `seconds`, each answered `ok` by etcd: how many were answered a second.
    fn sustain(
        &mut self,
        window: usize,
        seconds: f64,
        mut next_call: impl FnMut(usize) -> (&'static str, Value),
    ) -> f64 {
        let first_id = self.next_id;
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(seconds);
        let mut sent = 0;
        let mut answered = 0;
        while answered < sent || sent == 0 {
            while sent - answered < window && (sent < window || Instant::now() < until) {
                let (tool, arguments) = next_call(sent);
                let request = json!({"jsonrpc":"2.0","id":self.next_id,"method":"tools/call",
                    "params":{"name": tool, "arguments": arguments}});
                self.next_id += 1;
                self.send(&request);
                sent += 1;
            }
            let answer: Value = serde_json::from_str(&self.read_line()).expect("answer is JSON");
            if answer["id"].as_u64().is_some_and(|id| id >= first_id) {
                let outcome = &answer["result"]["structuredContent"]["outcomes"]["etcd"];
                assert_eq!(outcome["status"], "ok", "sustained call: {answer}");
                answered += 1;
            }
        }
        answered as f64 / started.elapsed().as_secs_f64()
    }

    /// Resident set size now and at its peak (VmRSS, VmHWM), in MiB.
    fn memory_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

fn source(endpoints: &str, prefix: &str) -> Arc<EtcdSource> {
    Arc::new(EtcdSource::new(
        EtcdSettings {
            endpoints: endpoints.split(',').map(str::to_owned).collect(),
            prefix: prefix.to_owned(),
            request_timeout: Duration::from_secs(5),
        },
        None,
    ))
}

/// Registers peers `peer-000000`.. through the source, 64 at a time.
async fn fill(source: &Arc<EtcdSource>, n: usize) -> Duration {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..64).map(|_| {
        let source = Arc::clone(source);
        let next = Arc::clone(&next);
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let id = format!("peer-{i:06}");
                source
                    .register(record(&id, i, now() - i as f64 * 0.001))
                    .await
                    .expect("fill");
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.expect("fill worker");
    }
    started.elapsed()
}

/// Heartbeats from `callers` concurrent tasks for `seconds`, on peers `0..n`: how many
/// a second succeeded.
async fn sustained_heartbeats(
    source: &Arc<EtcdSource>,
    n: usize,
    callers: usize,
    seconds: f64,
) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks = (0..callers).map(|c| {
        let source = Arc::clone(source);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut i = c;
            while Instant::now() < until {
                let id = format!("peer-{:06}", i % n);
                if let Ok(Some(_)) = source.heartbeat(&id, &Heartbeat::default(), now()).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += callers;
            }
        })
    });
    futures::future::join_all(tasks).await;
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Time from sending a registration (through `register`) until `watcher`'s view has it.
async fn visibility(
    watcher: &Arc<EtcdSource>,
    samples: usize,
    mut register: impl FnMut(usize),
) -> Vec<Duration> {
    let mut changes = watcher.watch_changes().expect("the etcd source watches");
    watcher.warm_up().await;
    let mut lags = Vec::new();
    for i in 0..samples {
        changes.borrow_and_update();
        let started = Instant::now();
        register(i);
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("seen within 5 s")
            .expect("signal open");
        lags.push(started.elapsed());
    }
    lags
}

fn print_rows(title: &str, rows: &[Row]) {
    eprintln!("\n### {title}\n");
    eprintln!("| operation | p50 ms | p99 ms | notes |");
    eprintln!("| --- | --- | --- | --- |");
    for row in rows {
        eprintln!(
            "| {} | {} | {} | {} |",
            row.operation, row.p50, row.p99, row.notes
        );
    }
}

fn main() {
    let args = Args::parse();
    assert!(
        args.bin.exists(),
        "{} not found: run `cargo build --release --features etcd` first",
        args.bin.display()
    );
    let local = args.endpoints.is_none().then(etcd_launcher::Etcd::start);
    let endpoints = args
        .endpoints
        .clone()
        .or_else(|| local.as_ref().map(|e| e.endpoints()))
        .expect("endpoints");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut sizes = args.peers.clone();
    if args.large {
        sizes.push(100_000);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for n in sizes {
        let prefix = format!("/bench-{n}-{}/", std::process::id());
        let api = source(&endpoints, &prefix);
        let mut rows = Vec::new();

        // At the source's own API.
        let filled = runtime.block_on(fill(&api, n));
        rows.push(Row::figure(
            format!("fill: {n} registers, 64 at a time (source API)"),
            format!(
                "{:.1} s, {:.0} registers/s",
                filled.as_secs_f64(),
                n as f64 / filled.as_secs_f64()
            ),
        ));
        let mut compute = PeerFilter::new(&["compute".into()], false, now()).expect("filter");
        compute.limit = Some(50);
        let listed = runtime.block_on(async {
            let first = Instant::now();
            api.list(&compute).await.expect("list");
            let first = first.elapsed();
            let mut samples = Vec::new();
            for _ in 0..args.calls {
                let started = Instant::now();
                let listing = api.list(&compute).await.expect("list");
                samples.push(started.elapsed());
                assert_eq!(listing.peers.len(), 50.min(n / 10));
            }
            (first, samples)
        });
        rows.push(Row::timed(
            "discover [compute], max 50 (source API)",
            listed.1,
            format!(
                "{} match; first call (lists and starts the watch) {} ms",
                n / 10,
                ms(listed.0)
            ),
        ));
        let registers = runtime.block_on(async {
            let mut samples = Vec::new();
            for i in 0..args.calls {
                let id = format!("api-new-{i:06}");
                let started = Instant::now();
                api.register(record(&id, i, now())).await.expect("register");
                samples.push(started.elapsed());
            }
            samples
        });
        rows.push(Row::timed(
            "register, new peer (source API)",
            registers,
            "lease grant + one guarded txn (the held copy from the view)".into(),
        ));
        let heartbeats = runtime.block_on(async {
            let mut samples = Vec::new();
            for i in 0..args.calls {
                let id = format!("peer-{:06}", i % n);
                let started = Instant::now();
                api.heartbeat(&id, &Heartbeat::default(), now())
                    .await
                    .expect("heartbeat")
                    .expect("held");
                samples.push(started.elapsed());
            }
            samples
        });
        rows.push(Row::timed(
            "heartbeat (source API)",
            heartbeats,
            "lease keepalive + one guarded put on the same lease".into(),
        ));
        let rate = runtime.block_on(sustained_heartbeats(
            &api,
            n,
            args.callers,
            args.sustain_seconds,
        ));
        rows.push(Row::figure(
            format!(
                "heartbeats sustained, {} concurrent callers (source API)",
                args.callers
            ),
            format!("{rate:.0} a second"),
        ));
        let watcher = source(&endpoints, &prefix);
        let lags = runtime.block_on(visibility(&watcher, 200, |i| {
            let api = Arc::clone(&api);
            runtime.spawn(async move {
                let id = format!("seen-{i:06}");
                api.register(record(&id, i, now())).await.expect("register");
            });
        }));
        rows.push(Row::timed(
            "another source instance sees a new peer (register sent → its watch has it)",
            lags,
            "200 registrations".into(),
        ));

        // Through MCP, the real server with sources: ["etcd"].
        let server_args: Vec<String> = [
            "--registry-path",
            &dir.path().join(format!("r-{n}.json")).display().to_string(),
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            &prefix,
            "--cleanup-interval",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut server = Session::spawn(&args.bin, &server_args);
        let discover =
            json!({"capability_filter": ["compute"], "max_peers": 50, "sources": ["etcd"]});
        let first = server.call("discover_peers", discover.clone()).0;
        let samples: Vec<Duration> = (0..args.calls)
            .map(|_| server.call("discover_peers", discover.clone()).0)
            .collect();
        rows.push(Row::timed(
            "discover_peers [compute], max 50 (MCP)",
            samples,
            format!("first call (lists and starts the watch) {} ms", ms(first)),
        ));
        let samples: Vec<Duration> = (0..args.calls)
            .map(|i| {
                server
                    .call(
                        "register_peer",
                        json!({"peer_id": format!("mcp-new-{i:06}"), "multiaddr": "/ip4/127.0.0.1/tcp/1",
                               "capabilities": ["compute"], "sources": ["etcd"]}),
                    )
                    .0
            })
            .collect();
        rows.push(Row::timed(
            "register_peer, new peer (MCP)",
            samples,
            String::new(),
        ));
        let samples: Vec<Duration> = (0..args.calls)
            .map(|i| {
                server
                    .call(
                        "update_peer",
                        json!({"peer_id": format!("peer-{:06}", i % n), "sources": ["etcd"]}),
                    )
                    .0
            })
            .collect();
        rows.push(Row::timed(
            "update_peer, heartbeat (MCP)",
            samples,
            String::new(),
        ));
        // The stdio guard admits 64 calls at a time.
        const WINDOW: usize = 64;
        let rate = server.sustain(WINDOW, args.sustain_seconds, |i| {
            let id = format!("peer-{:06}", i % n);
            ("update_peer", json!({"peer_id": id, "sources": ["etcd"]}))
        });
        rows.push(Row::figure(
            format!("heartbeats sustained, {WINDOW} calls in flight (MCP, one server)"),
            format!("{rate:.0} a second"),
        ));
        let watcher = source(&endpoints, &prefix);
        let lags = runtime.block_on(visibility(&watcher, 200, |i| {
            server.call(
                "register_peer",
                json!({"peer_id": format!("mcp-seen-{i:06}"), "multiaddr": "/ip4/127.0.0.1/tcp/1",
                       "sources": ["etcd"]}),
            );
        }));
        rows.push(Row::timed(
            "another server sees a new peer (register_peer sent → its watch has it)",
            lags,
            "upper bound: includes the whole register_peer round trip".into(),
        ));
        let (rss, peak) = server.memory_mib();
        rows.push(Row::figure(
            format!("server memory, {n} peers in etcd (view loaded)"),
            format!("RSS {rss:.1} MiB, peak {peak:.1} MiB"),
        ));
        server.close();
        print_rows(&format!("etcd source, {n} peers"), &rows);
    }
    drop(local);
}
