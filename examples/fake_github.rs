//! Runs the fake GitHub REST issues API of the tests on its own, for trying the server by hand:
//!
//! ```text
//! cargo run --example fake_github -- --port 8787
//! GITHUB_API_URL=http://127.0.0.1:8787 GITHUB_TOKEN=test-token \
//!     peer-discovery-mcp --github-repo acme/peers
//! ```
//!
//! It serves until Ctrl-C; state lives in memory only.

#[path = "../tests/support/fake_github.rs"]
mod fake_github;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fake_github::{FakeGitHub, LOGIN, OWNER, REPO, TOKEN};

/// A stateful fake of the GitHub REST issues API on 127.0.0.1.
#[derive(Parser)]
struct Args {
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Delay before every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let fake = match FakeGitHub::start_on(args.port).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{}: {e}", args.port);
            return ExitCode::FAILURE;
        }
    };
    fake.set_latency(Duration::from_millis(args.latency_ms));
    eprintln!("fake GitHub listening on {}", fake.base_url());
    eprintln!("repository {OWNER}/{REPO}, token {TOKEN} (login {LOGIN})");
    eprintln!(
        "try: GITHUB_API_URL={} GITHUB_TOKEN={TOKEN} PEER_REGISTRY_GITHUB_REPO={OWNER}/{REPO} peer-discovery-mcp",
        fake.base_url()
    );
    eprintln!("Ctrl-C stops it");
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }
    let requests = fake.requests();
    eprintln!("stopping after {} requests", requests.len());
    ExitCode::SUCCESS
}
