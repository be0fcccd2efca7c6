//! Many agents, one registry: durable registrations a second from 8 concurrent clients
//! through one streamable-HTTP server against the same through 8 stdio server processes
//! (each client its own process, as MCP clients start them), and discover's latency over
//! both transports. Every client is rmcp's own (streamable HTTP or child process), every
//! registration is answered only once it is on disk (fsync).
//!
//! ```sh
//! cargo build --release && cargo run --release --example http_bench
//! cargo run --release --example http_bench -- --clients 8 --per-client 250 --peers 1000 --discover-peers 10000
//! ```
//! Figures are written to stderr as Markdown (stdout is left alone).

#[path = "../benches/figures.rs"]
mod figures;
#[path = "../benches/fixtures.rs"]
mod fixtures;
#[path = "../benches/mcp_client.rs"]
mod mcp_client;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use figures::{ms, percentile};
use mcp_client::{Client, call, command, now, stdio_client};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

#[derive(Parser)]
struct Args {
    /// The server binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/peer-discovery-mcp")]
    bin: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Registrations each client makes.
    #[arg(long, default_value_t = 250)]
    per_client: usize,
    /// Peers in the registry before the registrations.
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Peers in the registry for the discover latency.
    #[arg(long, default_value_t = 10_000)]
    discover_peers: usize,
    /// Discover calls measured per transport.
    #[arg(long, default_value_t = 1000)]
    discover_calls: usize,
}

/// One HTTP server on a free loopback port; its address, read from stderr.
async fn http_server(bin: &Path, registry: &Path) -> (Child, String) {
    let mut child = command(bin, registry)
        .args(["--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the HTTP server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    while let Some(line) = lines.next_line().await.expect("stderr") {
        if let Some(rest) = line.strip_prefix("listening on ") {
            let url = rest.to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, url);
        }
    }
    panic!("the HTTP server did not say where it listens");
}

async fn http_client(url: &str) -> Client {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    ().serve(transport).await.expect("HTTP handshake")
}

/// Each client registers `per_client` new peers one after the other (an agent waits for
/// its answer), all clients at once; registrations a second, wall clock.
async fn registrations_a_second(clients: &[Client], per_client: usize) -> f64 {
    let started = Instant::now();
    let runs = clients.iter().enumerate().map(|(c, client)| async move {
        for i in 0..per_client {
            let written = call(
                client,
                "register_peer",
                json!({"peer_id": format!("agent-{c}-{i:04}"), "multiaddr": "/ip4/127.0.0.1/tcp/4001", "capabilities": ["compute"]}),
            )
            .await;
            assert_eq!(written["outcomes"]["local_file"]["status"], "ok");
        }
    });
    futures::future::join_all(runs).await;
    (clients.len() * per_client) as f64 / started.elapsed().as_secs_f64()
}

async fn discover_latency(client: &Client, calls: usize) -> (Duration, Duration) {
    let args = json!({"capability_filter": ["compute"], "max_peers": 50});
    for _ in 0..calls / 10 {
        call(client, "discover_peers", args.clone()).await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call(client, "discover_peers", args.clone()).await;
        samples.push(started.elapsed());
    }
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

fn count_peers(registry: &Path) -> usize {
    let file: Value =
        serde_json::from_slice(&std::fs::read(registry).expect("registry")).expect("JSON");
    file["peers"].as_object().map_or(0, serde_json::Map::len)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.bin.exists(),
        "{} not found: run `cargo build --release` first",
        args.bin.display()
    );
    let total = args.clients * args.per_client;

    // Registrations: 8 stdio processes on one file, then one HTTP server for 8 clients.
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("stdio.json");
    fixtures::prefill(&registry, args.peers, now());
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(stdio_client(&args.bin, &registry).await);
    }
    let stdio_rate = registrations_a_second(&clients, args.per_client).await;
    for client in clients {
        let _ = client.cancel().await;
    }
    assert_eq!(
        count_peers(&registry),
        args.peers + total,
        "stdio lost a write"
    );

    let registry = dir.path().join("http.json");
    fixtures::prefill(&registry, args.peers, now());
    let (server, url) = http_server(&args.bin, &registry).await;
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(http_client(&url).await);
    }
    let http_rate = registrations_a_second(&clients, args.per_client).await;
    for client in clients {
        let _ = client.cancel().await;
    }
    drop(server);
    assert_eq!(
        count_peers(&registry),
        args.peers + total,
        "HTTP lost a write"
    );

    eprintln!(
        "\n### {} clients × {} durable registrations at {} peers\n",
        args.clients, args.per_client, args.peers
    );
    eprintln!("| transport | registrations/s |");
    eprintln!("| --- | --- |");
    eprintln!(
        "| {} stdio server processes, one client each | {stdio_rate:.0} |",
        args.clients
    );
    eprintln!(
        "| one streamable-HTTP server, {} clients | {http_rate:.0} |",
        args.clients
    );

    // Discover latency at a larger registry, one client each way.
    let registry = dir.path().join("discover.json");
    fixtures::prefill(&registry, args.discover_peers, now());
    let stdio = stdio_client(&args.bin, &registry).await;
    let (stdio_p50, stdio_p99) = discover_latency(&stdio, args.discover_calls).await;
    let _ = stdio.cancel().await;
    let (server, url) = http_server(&args.bin, &registry).await;
    let http = http_client(&url).await;
    let (http_p50, http_p99) = discover_latency(&http, args.discover_calls).await;
    let _ = http.cancel().await;
    drop(server);
    eprintln!(
        "\n### discover_peers [compute], max 50, at {} peers ({} calls)\n",
        args.discover_peers, args.discover_calls
    );
    eprintln!("| transport | p50 ms | p99 ms |");
    eprintln!("| --- | --- | --- |");
    eprintln!("| stdio | {} | {} |", ms(stdio_p50), ms(stdio_p99));
    eprintln!("| streamable HTTP | {} | {} |", ms(http_p50), ms(http_p99));
}
