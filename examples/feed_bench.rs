//! The change feed's figures: how soon a `peer_changes` long poll on one server process
//! sees a registration made by another process on the same file, and what the history
//! costs in memory at 20,000 events.
//!
//! ```sh
//! cargo build --release && cargo run --release --example feed_bench
//! cargo run --release --example feed_bench -- --peers 1000,10000 --samples 50
//! ```
//! Figures are written to stderr as Markdown (stdout is left alone).

#[path = "../benches/figures.rs"]
mod figures;
#[path = "../benches/fixtures.rs"]
mod fixtures;
#[path = "../benches/mcp_client.rs"]
mod mcp_client;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use figures::{ms, percentile};
use mcp_client::{call, now, stdio_client};
use peer_discovery_mcp::feed::ChangeFeed;
use peer_discovery_mcp::peer::PeerRecord;
use peer_discovery_mcp::source::{MemorySource, Source, SourceName};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The server binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/peer-discovery-mcp")]
    bin: PathBuf,
    /// Registry sizes for the cross-process figure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    peers: Vec<usize>,
    /// Registrations timed per size.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Events for the memory figure.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
}

/// Resident memory of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn cross_process(args: &Args, n: usize) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    fixtures::prefill(&registry, n, now());
    let watcher = stdio_client(&args.bin, &registry).await;
    let writer = stdio_client(&args.bin, &registry).await;
    let mut cursor = call(&watcher, "peer_changes", json!({})).await["cursor"].clone();
    let mut samples = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let poll = call(
            &watcher,
            "peer_changes",
            json!({"cursor": cursor, "wait_seconds": 10}),
        );
        let write = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            call(
                &writer,
                "register_peer",
                json!({"peer_id": format!("arrival-{i}"), "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
            )
            .await;
            Instant::now()
        };
        let (seen, written_at) = tokio::join!(poll, write);
        samples.push(written_at.elapsed());
        assert_eq!(
            seen["events"][0]["peer_id"],
            format!("arrival-{i}"),
            "{seen}"
        );
        cursor = seen["cursor"].clone();
    }
    let _ = watcher.cancel().await;
    let _ = writer.cancel().await;
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

/// Wall time of `calls` heartbeats at `n` peers, with the change feed started or not:
/// what the feed costs writers (its own writes are not read back).
async fn heartbeats(args: &Args, n: usize, calls: usize, feed_on: bool) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("peer_registry.json");
    fixtures::prefill(&registry, n, now());
    let server = stdio_client(&args.bin, &registry).await;
    if feed_on {
        call(&server, "peer_changes", json!({})).await;
    }
    let started = Instant::now();
    for i in 0..calls {
        call(
            &server,
            "update_peer",
            json!({"peer_id": format!("peer-{:06}", i % n)}),
        )
        .await;
    }
    let took = started.elapsed();
    let _ = server.cancel().await;
    took
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.bin.exists(),
        "{} not found: run `cargo build --release` first",
        args.bin.display()
    );
    // First, while the heap is fresh: RSS growth is then the feed's alone.
    // Memory of the history, in this process: one feed over an empty in-memory source,
    // `events` registrations of distinct peers (so the live state grows too).
    let source: Arc<dyn Source> =
        Arc::new(MemorySource::new(SourceName::new("memory").expect("name")));
    let clock: peer_discovery_mcp::coordinator::Clock = Arc::new(now);
    let before = rss_kib();
    let feed = ChangeFeed::start(vec![source], clock, Duration::from_secs(1)).await;
    let feed = std::hint::black_box(feed);
    let name = SourceName::LOCAL_FILE;
    for i in 0..args.events {
        let id = format!("peer-{i:06}");
        let at = now();
        let mut metadata = serde_json::Map::new();
        metadata.insert("rack".into(), json!(i % 40));
        let record = PeerRecord {
            peer_id: id.clone(),
            multiaddr: format!("/ip4/10.0.{}.{}/tcp/4001", i / 256 % 256, i % 256),
            capabilities: vec!["storage".into(), "compute".into()],
            first_seen: at,
            last_seen: at,
            source: "local_file".into(),
            ttl_seconds: 3600,
            metadata,
            unknown_fields: Default::default(),
        };
        feed.observe_write(&name, &id, Some(&record));
    }
    let after = rss_kib();
    let (live, kept, bytes) = feed.size();
    eprintln!("\n### History at {} events\n", args.events);
    eprintln!("| live peers | events kept | bytes counted | RSS growth (state + history) |");
    eprintln!("| --- | --- | --- | --- |");
    eprintln!(
        "| {live} | {kept} | {:.1} MiB | {:.1} MiB |",
        bytes as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1024.0
    );

    eprintln!("\n### Another process's registration, seen by a waiting peer_changes\n");
    eprintln!("| peers | p50 ms | p99 ms |");
    eprintln!("| --- | --- | --- |");
    for &n in &args.peers {
        let (p50, p99) = cross_process(&args, n).await;
        eprintln!("| {n} | {} | {} |", ms(p50), ms(p99));
    }

    eprintln!("\n### 200 heartbeats (update_peer, fsync) at 10,000 peers\n");
    eprintln!("| change feed | total ms | per call ms |");
    eprintln!("| --- | --- | --- |");
    for feed_on in [false, true] {
        let took = heartbeats(&args, 10_000, 200, feed_on).await;
        eprintln!(
            "| {} | {} | {} |",
            if feed_on { "started" } else { "not started" },
            ms(took),
            ms(took / 200)
        );
    }
}
