//! The command line for people: `peer-discovery-mcp peers list|register|unregister|status`.
//! Each subcommand runs one operation through the same [`Coordinator`] and sources the
//! server uses (built from the same options), and prints a table for people, or with
//! `--json` the `structuredContent` the matching MCP tool returns.
//!
//! This module is the only one that writes to stdout on purpose: the server's stdout
//! carries JSON-RPC, and the crate denies `clippy::print_stdout` everywhere. It writes
//! through [`std::io::Write`] instead of `println!` (so the lint needs no exception), and
//! a closed pipe (`peers list | head -1`) ends the command quietly instead of panicking.
//!
//! Everything printed that a peer or a source wrote (ids, addresses, capabilities,
//! metadata, error details) goes through [`crate::mcp::text`], so a hostile value cannot
//! move the cursor, retitle or recolour the terminal, or reorder the line.
//!
//! - `render.rs`: the tables and outcome lines (pure functions of a result and `now`).
//!
//! A subcommand is one variant of [`PeersCommand`], one arm in [`run`] and one `async fn`
//! of the shape `(coordinator, args, out) -> Result<ExitCode, Failure>` that writes to
//! `out` through [`emit`] (a command that streams, such as a watch, calls it per line).

mod render;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::coordinator::{CallError, Coordinator, DiscoverQuery, MAX_DISCOVER_PEERS};
use crate::mcp::text;
use crate::peer::{Announcement, JsonObject, MAX_TTL_SECONDS, MIN_TTL_SECONDS, PeerId};
use crate::source::{Progress, SourceName};

/// `peer-discovery-mcp peers ...`: the registry for an operator, like `etcdctl` or
/// `consul catalog`.
#[derive(Debug, Args)]
#[command(
    about = "Look at and change the registry from a shell: list, register, unregister, status",
    long_about = "Look at and change the registry from a shell. Each command runs one \
operation on the configured sources (the same options as the server, before or after the \
subcommand) and prints a table, or with --json the structuredContent of the matching MCP tool.\n\n\
Text written by peers (ids, addresses, capabilities, metadata) is printed with control and \
invisible characters escaped (\\u{1b}, \\u{202e}...), so it cannot move the cursor or recolour \
the terminal. Exit codes: 0 done (some sources may have failed: see their lines), 1 no source \
could do it, 2 bad input."
)]
pub struct PeersArgs {
    #[command(subcommand)]
    pub command: PeersCommand,
}

#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// List the live peers, newest first (discover_peers)
    #[command(after_help = "Examples:\n  \
peer-discovery-mcp peers list\n  \
peer-discovery-mcp peers list --capability compute --max 10\n  \
peer-discovery-mcp --registry-path /tmp/peers.json peers list --json")]
    List(ListArgs),
    /// Register a peer, or replace its registration (register_peer)
    #[command(after_help = "Examples:\n  \
peer-discovery-mcp peers register agent-7 /ip4/192.0.2.7/tcp/4001 --capability compute\n  \
peer-discovery-mcp peers register agent-7 /dns4/node.example.org/tcp/443/wss \\\n    \
--capability compute,storage --ttl 600 --metadata region=eu --metadata version=1.2")]
    Register(RegisterArgs),
    /// Remove a peer from every source (unregister_peer)
    #[command(after_help = "Examples:\n  \
peer-discovery-mcp peers unregister agent-7\n  \
peer-discovery-mcp peers unregister agent-7 --sources local_file --json")]
    Unregister(UnregisterArgs),
    /// Show the sources, where they store, and whether they answer now (registry_status)
    #[command(after_help = "Examples:\n  \
peer-discovery-mcp peers status\n  \
PEER_REGISTRY_GITHUB_REPO=acme/peers GITHUB_TOKEN=... peer-discovery-mcp peers status --json")]
    Status(StatusArgs),
    /// Print who comes, changes and goes, one line an event, until interrupted (the change
    /// feed, as peer_changes serves it)
    #[command(after_help = "Examples:\n  \
peer-discovery-mcp peers watch\n  \
peer-discovery-mcp peers watch --capability compute\n  \
peer-discovery-mcp peers watch --json | jq -c 'select(.type == \"removed\")'")]
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Command options")]
pub struct WatchArgs {
    /// Only changes of peers that announce every one of these capabilities (repeat the
    /// flag, or separate with commas): a peer that starts matching is `added`, one that
    /// stops is `removed` (no_longer_matches).
    #[arg(long = "capability", value_name = "NAME", value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Print each event as one JSON object a line (peer_changes' event shape).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
// Its own options first, apart from the server's (which clap lists as "Options").
#[command(next_help_heading = "Command options")]
pub struct ListArgs {
    /// Only peers that announce every one of these capabilities (repeat the flag, or
    /// separate with commas).
    #[arg(long = "capability", value_name = "NAME", value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Most peers to show (1..=1000); the summary says how many matched in all.
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::coordinator::DEFAULT_DISCOVER_PEERS,
        value_parser = clap::value_parser!(i64).range(1..=MAX_DISCOVER_PEERS)
    )]
    pub max: i64,
    /// Also show peers whose lease has ended (not yet cleaned up).
    #[arg(long)]
    pub include_expired: bool,
    #[command(flatten)]
    pub sources: SourcesArg,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Args)]
// Its own options first, apart from the server's (which clap lists as "Options").
#[command(next_help_heading = "Command options")]
pub struct RegisterArgs {
    /// The peer's id: 1 to 128 characters of A-Z a-z 0-9 . _ - (a libp2p id or any
    /// opaque id such as agent-7).
    #[arg(value_name = "ID")]
    pub peer_id: String,
    /// Where to reach the peer, e.g. /ip4/192.0.2.7/tcp/4001 (a /p2p/ part must name ID).
    #[arg(value_name = "MULTIADDR")]
    pub multiaddr: String,
    /// What the peer can do (repeat the flag, or separate with commas), lower-case,
    /// e.g. compute.
    #[arg(long = "capability", value_name = "NAME", value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// The lease in seconds (1..=604800); without it, --default-ttl.
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(i64).range(MIN_TTL_SECONDS as i64..=MAX_TTL_SECONDS as i64)
    )]
    pub ttl: Option<i64>,
    /// One metadata entry, stored as a JSON string (repeat for more); the whole metadata
    /// object replaces the old one.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    #[command(flatten)]
    pub sources: SourcesArg,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Args)]
// Its own options first, apart from the server's (which clap lists as "Options").
#[command(next_help_heading = "Command options")]
pub struct UnregisterArgs {
    /// The id the peer was registered with.
    #[arg(value_name = "ID")]
    pub peer_id: String,
    #[command(flatten)]
    pub sources: SourcesArg,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Args)]
// Its own options first, apart from the server's (which clap lists as "Options").
#[command(next_help_heading = "Command options")]
pub struct StatusArgs {
    #[command(flatten)]
    pub output: OutputArg,
}

/// `--sources`, as the tools' `sources` argument.
#[derive(Debug, Args)]
pub struct SourcesArg {
    /// Only these sources (comma-separated, e.g. local_file,github); without it, every
    /// source (those not on are listed with why).
    #[arg(
        long,
        value_name = "NAME,...",
        value_delimiter = ',',
        value_parser = SourceName::new
    )]
    pub sources: Option<Vec<SourceName>>,
}

#[derive(Debug, Args)]
pub struct OutputArg {
    /// Print the result as one JSON document: the structuredContent of the matching MCP
    /// tool (exact values; control characters as JSON escapes).
    #[arg(long)]
    pub json: bool,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE with a non-empty KEY".to_owned()),
    }
}

/// Why a command did not do what was asked; decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The input cannot work (a bad id, an unknown source): exit code 2, as clap's errors.
    Input(String),
    /// No source could do it: exit code 1.
    Undone(String),
    /// stdout could not be written. A reader that went away (`peers list | head -1`) is
    /// the normal end of a pipe, not an error: exit code 0, nothing said.
    Output(std::io::Error),
}

impl Failure {
    /// One line on stderr (escaped: messages quote what was given, an id, a multiaddr)
    /// and the exit code.
    fn report(self) -> ExitCode {
        let (message, code) = match self {
            Failure::Input(m) => (m, 2),
            Failure::Undone(m) => (m, 1),
            Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return ExitCode::SUCCESS;
            }
            Failure::Output(e) => (format!("cannot write to stdout: {e}"), 1),
        };
        eprintln!("peer-discovery-mcp: {}", text::escape_prose(&message));
        ExitCode::from(code)
    }
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Invalid(_) | CallError::BadArgument(_) | CallError::UnknownPeer(..) => {
                Failure::Input(error.to_string())
            }
            CallError::NoSource(_) => Failure::Undone(error.to_string()),
        }
    }
}

/// Writes `text` (already escaped) to `out` and flushes, so a line is seen when printed.
pub(crate) fn emit(out: &mut dyn Write, text: &str) -> Result<(), Failure> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Failure::Output)
}

/// Runs one `peers` subcommand, printing its result on stdout (a failure: one line on
/// stderr and its exit code). Needs a tokio runtime.
pub async fn run(args: PeersArgs, coordinator: Arc<Coordinator>) -> ExitCode {
    let coordinator = coordinator.as_ref();
    // The one place stdout is written on purpose: `peers` commands print their result for
    // a person, and main.rs runs them instead of a server, never beside one (in server
    // mode stdout carries JSON-RPC and only the transports write it). Not locked: nothing
    // else writes to stdout here, and a lock held across awaits could block a worker
    // thread that logs by mistake.
    let out = &mut std::io::stdout();
    let outcome = match args.command {
        PeersCommand::List(args) => list(coordinator, args, out).await,
        PeersCommand::Register(args) => register(coordinator, args, out).await,
        PeersCommand::Unregister(args) => unregister(coordinator, args, out).await,
        PeersCommand::Status(args) => status(coordinator, args, out).await,
        PeersCommand::Watch(args) => watch(coordinator, args, out).await,
    };
    outcome.unwrap_or_else(Failure::report)
}

/// `--json`: the tool's structuredContent, pretty, with characters that hide or reorder
/// text as JSON escapes (serde_json leaves U+202E, DEL and C1 controls such as U+009B raw).
/// Escaped line by line: serde_json writes a newline inside a string as `\n`, so every raw
/// newline of the pretty form is layout, which must stay a newline to stay JSON.
fn json_document<T: Serialize>(value: &T) -> Result<String, Failure> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Undone(format!("cannot write the result as JSON: {e}")))?;
    let mut out = String::with_capacity(json.len() + 1);
    for line in json.lines() {
        out.push_str(&text::escape_json(line));
        out.push('\n');
    }
    Ok(out)
}

fn now() -> f64 {
    (crate::coordinator::system_clock())()
}

/// `peers watch`: the change feed, one line an event, from now until Ctrl-C (or SIGTERM,
/// or a reader that goes away). Changes by other processes on the same file are seen
/// through the file's watch, within a second.
async fn watch(
    coordinator: &Coordinator,
    args: WatchArgs,
    out: &mut dyn Write,
) -> Result<ExitCode, Failure> {
    let capabilities = crate::peer::normalize_capabilities(&args.capabilities)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let feed = coordinator.change_feed().await;
    let _ = writeln!(
        std::io::stderr(),
        "watching for peer changes; Ctrl-C to stop"
    );
    let mut ask = crate::feed::ReadChanges {
        cursor: None,
        capabilities,
        wait: crate::feed::MAX_WAIT,
        max_events: 1000,
    };
    let stop = crate::serve::terminated();
    tokio::pin!(stop);
    loop {
        let read = tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            read = feed.read(&ask, |_| {}) => read,
        };
        let changes = match read {
            Ok(changes) => changes,
            Err(e @ crate::feed::FeedError::TooOld(..)) => {
                // More changes landed at once than the history keeps: say so, go on from now.
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: {}",
                    crate::mcp::text::escape_prose(&e.to_string())
                );
                ask.cursor = None;
                continue;
            }
            Err(e) => return Err(Failure::Undone(e.to_string())),
        };
        for event in &changes.events {
            let line = if args.json {
                let json = serde_json::to_string(event)
                    .map_err(|e| Failure::Undone(format!("cannot write an event as JSON: {e}")))?;
                format!("{}\n", crate::mcp::text::escape_json(&json))
            } else {
                render::event(event)
            };
            emit(out, &line)?;
        }
        ask.cursor = Some(changes.cursor);
    }
}

async fn list(
    coordinator: &Coordinator,
    args: ListArgs,
    out: &mut dyn Write,
) -> Result<ExitCode, Failure> {
    let query = DiscoverQuery::new(&args.capabilities, Some(args.max), args.include_expired)?;
    let result = coordinator
        .discover(
            &query,
            args.sources.sources.as_deref(),
            &Progress::default(),
        )
        .await?;
    let text = if args.output.json {
        json_document(&result)?
    } else {
        render::discover(&result, &query, now())
    };
    emit(out, &text)?;
    Ok(ExitCode::SUCCESS)
}

async fn register(
    coordinator: &Coordinator,
    args: RegisterArgs,
    out: &mut dyn Write,
) -> Result<ExitCode, Failure> {
    let mut metadata = JsonObject::new();
    for (key, value) in args.metadata {
        if metadata.contains_key(&key) {
            return Err(Failure::Input(format!(
                "--metadata gives the key `{key}` twice; give each key once"
            )));
        }
        metadata.insert(key, serde_json::Value::String(value));
    }
    let announcement = Announcement::new(
        args.peer_id,
        &args.multiaddr,
        &args.capabilities,
        args.ttl,
        Some(metadata),
        coordinator.default_ttl_seconds(),
    )
    .map_err(|e| Failure::Input(e.to_string()))?;
    let result = coordinator
        .register(announcement, args.sources.sources.as_deref())
        .await?;
    let text = if args.output.json {
        json_document(&result)?
    } else {
        render::register(&result, now())
    };
    emit(out, &text)?;
    Ok(ExitCode::SUCCESS)
}

async fn unregister(
    coordinator: &Coordinator,
    args: UnregisterArgs,
    out: &mut dyn Write,
) -> Result<ExitCode, Failure> {
    let peer_id = PeerId::new(&args.peer_id).map_err(|e| Failure::Input(e.to_string()))?;
    let result = coordinator
        .unregister(&peer_id, args.sources.sources.as_deref())
        .await?;
    // A peer no source held is not an error (the tool says `removed: false` too): the
    // registry is as asked. The line says so.
    let text = if args.output.json {
        json_document(&result)?
    } else {
        render::unregister(&result)
    };
    emit(out, &text)?;
    Ok(ExitCode::SUCCESS)
}

/// Status with a check: a fresh process has no counters, so the command asks every
/// enabled source for its live peers once, and reports how that went (the counters then
/// show that one call) and how many peers each holds.
async fn status(
    coordinator: &Coordinator,
    args: StatusArgs,
    out: &mut dyn Write,
) -> Result<ExitCode, Failure> {
    let query = DiscoverQuery::new(&[], Some(1), false)?;
    let check = coordinator
        .discover(&query, None, &Progress::default())
        .await;
    let report = coordinator.status();
    let exit = if check.is_ok() {
        ExitCode::SUCCESS
    } else {
        // Every enabled source failed the check: the registry cannot be used now.
        ExitCode::FAILURE
    };
    let text = if args.output.json {
        json_document(&report)?
    } else {
        render::status(&report, check.as_ref().ok().map(|r| &r.outcomes))
    };
    emit(out, &text)?;
    Ok(exit)
}
