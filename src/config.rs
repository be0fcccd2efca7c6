//! The command line: every flag has an environment variable and a default shown in
//! `--help`. The flags work with or without the `serve` subcommand, because MCP client
//! configurations call `peer-discovery-mcp --registry-path FILE` directly.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::peer::{MAX_TTL_SECONDS, MIN_TTL_SECONDS};
use crate::source::SourceOptions;

#[derive(Debug, Parser)]
#[command(
    name = "peer-discovery-mcp",
    version,
    about = "An MCP server (stdio, JSON-RPC) that lets LLM agents and libp2p-style nodes register \
             and discover each other",
    long_about = "An MCP server (stdio, JSON-RPC) that lets LLM agents and libp2p-style nodes \
register themselves as peers, find peers by capability, heartbeat, and clean up.\n\n\
It is started by an MCP client (Claude Desktop, an IDE, an agent framework) and speaks JSON-RPC \
on stdin/stdout; logs go to stderr (set RUST_LOG, e.g. RUST_LOG=info). Records live in a local \
JSON file shared by every server process on this machine.",
    after_help = "Run with no command to serve MCP on stdio (same as `serve`).\n\n\
The GitHub source is on when --github-repo is set and a token is in GITHUB_TOKEN (or GH_TOKEN); \
the token is read only from the environment, never from a flag, and never printed.\n\n\
With --http, every request to /mcp needs `Authorization: Bearer <token>` when \
PEER_REGISTRY_HTTP_TOKEN is set (required for an address that is not loopback); GET /healthz \
needs no token."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP on stdin/stdout (the default)
    Serve,
    // Its help text is on `PeersArgs` (a doc comment here would replace its long help).
    Peers(crate::cli::PeersArgs),
}

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Lease, in seconds, of a peer that registers without ttl_seconds (1..=604800).
    #[arg(
        long,
        env = "PEER_REGISTRY_DEFAULT_TTL",
        value_name = "SECONDS",
        global = true,
        default_value_t = crate::peer::DEFAULT_TTL_SECONDS,
        value_parser = clap::value_parser!(u64).range(MIN_TTL_SECONDS..=MAX_TTL_SECONDS)
    )]
    pub default_ttl: u64,

    /// Seconds between background cleanups of expired peers; 0 turns them off.
    #[arg(
        long,
        env = "PEER_REGISTRY_CLEANUP_INTERVAL",
        value_name = "SECONDS",
        global = true,
        default_value_t = 300
    )]
    pub cleanup_interval: u64,

    /// Longest time one source may take to answer before it is reported as `timeout` and
    /// the call goes on with the other sources (seconds, fractions allowed).
    #[arg(
        long,
        env = "PEER_REGISTRY_SOURCE_TIMEOUT",
        value_name = "SECONDS",
        global = true,
        default_value_t = 10.0,
        value_parser = parse_timeout
    )]
    pub source_timeout: f64,

    /// Every source's options, each in its own group (listed after these in --help).
    #[command(flatten)]
    pub sources: SourceOptions,

    /// The streamable HTTP transport's options.
    #[command(flatten)]
    pub http: HttpOptions,
}

/// A number of seconds in (0, 3600], fractions allowed.
pub(crate) fn parse_timeout(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0 {
        Ok(seconds)
    } else {
        Err(format!("must be more than 0 and at most 3600 (got {text})"))
    }
}

/// Streamable HTTP: one server that many agents connect to, instead of stdio.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Streamable HTTP")]
pub struct HttpOptions {
    /// Serve MCP's streamable HTTP transport at http://ADDR/mcp instead of stdio, e.g.
    /// 127.0.0.1:8750 (port 0 picks a free port; the address is printed on stderr as
    /// `listening on http://HOST:PORT/mcp`). An address that is not loopback needs a token
    /// in PEER_REGISTRY_HTTP_TOKEN.
    #[arg(long, env = "PEER_REGISTRY_HTTP", value_name = "ADDR", global = true)]
    pub http: Option<SocketAddr>,

    /// More `Host` names to accept (comma-separated), besides loopback names and the bind
    /// address, e.g. registry.example.org; other hosts get 403 (DNS rebinding).
    #[arg(
        long,
        env = "PEER_REGISTRY_HTTP_ALLOWED_HOSTS",
        value_name = "HOST,...",
        global = true,
        value_delimiter = ','
    )]
    pub http_allowed_hosts: Vec<String>,

    /// More browser `Origin`s to accept (comma-separated, with scheme and port or `:*`,
    /// e.g. https://app.example.org:443), besides loopback origins; others get 403.
    #[arg(
        long,
        env = "PEER_REGISTRY_HTTP_ALLOWED_ORIGINS",
        value_name = "ORIGIN,...",
        global = true,
        value_delimiter = ','
    )]
    pub http_allowed_origins: Vec<String>,

    /// Most MCP sessions open at once; a client that would open one more gets 503.
    #[arg(
        long,
        env = "PEER_REGISTRY_HTTP_MAX_SESSIONS",
        value_name = "COUNT",
        global = true,
        default_value_t = 256,
        value_parser = clap::value_parser!(u64).range(1..=100_000)
    )]
    pub http_max_sessions: u64,

    /// Seconds after which a session with no request is closed and its memory freed.
    #[arg(
        long,
        env = "PEER_REGISTRY_HTTP_SESSION_IDLE",
        value_name = "SECONDS",
        global = true,
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub http_session_idle: u64,

    /// Seconds a plain request may take, from its first byte to the last byte of its
    /// answer, so that slow or stalled clients cannot pin the server; past it the request
    /// is cut (a body still arriving gets 408, an answer not started gets a JSON-RPC error,
    /// a streamed answer ends). A `peer_changes` long poll gets its wait on top;
    /// subscription streams are not limited (they end with their session).
    #[arg(
        long,
        env = "PEER_REGISTRY_HTTP_HOLD_LIMIT",
        value_name = "SECONDS",
        global = true,
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3_600)
    )]
    pub http_hold_limit: u64,
}

/// The HTTP bearer token from the environment (empty = unset); never a flag.
pub fn http_token_from_env() -> Option<String> {
    std::env::var("PEER_REGISTRY_HTTP_TOKEN")
        .ok()
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

impl Options {
    pub fn source_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.source_timeout)
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs(self.cleanup_interval)
    }
}
