//! The binary: parse the command line, log to stderr, serve MCP on stdio (or run one
//! `peers` command for a person).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use peer_discovery_mcp::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap prints them to stdout, which is right here.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One clear line, not clap's usage block: MCP clients show stderr's first line.
            // clap's message may take several lines before its usage block (a missing
            // argument is named on the next line): joined into one.
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let line = if line.is_empty() {
                "invalid arguments"
            } else {
                &line
            };
            // The line may quote what was typed (an id, a value): escaped, so a pasted
            // escape sequence cannot act on the terminal.
            let line =
                peer_discovery_mcp::mcp::text::escape_prose(line.trim_start_matches("error: "));
            eprintln!("peer-discovery-mcp: {line}; see --help");
            return ExitCode::from(2);
        }
    };

    // The `peers` commands print each source's outcome themselves: a warning that repeats
    // it would only be noise for the person reading. The server logs warnings.
    let default_log = match cli.command {
        Some(peer_discovery_mcp::config::Command::Peers(_)) => "error",
        _ => "warn",
    };
    // stdout carries JSON-RPC: every log line goes to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // A client may close our stderr: a log line that cannot be written is dropped.
        // (With internal errors on, tracing reports the failed write with `eprintln!`,
        // which panics on a closed pipe and took the whole server down.)
        .log_internal_errors(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log)),
        )
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peer-discovery-mcp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    let built = {
        // octocrab builds its client inside a runtime.
        let _entered = runtime.enter();
        let secrets = peer_discovery_mcp::source::Secrets::from_env();
        peer_discovery_mcp::build_coordinator(&cli.options, secrets)
    };
    let coordinator = match built {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peer-discovery-mcp: {e}");
            return ExitCode::from(2);
        }
    };

    if let Some(Command::Peers(peers)) = cli.command {
        // One operation for a person at a shell: no background cleanup, no server.
        let code = runtime.block_on(peer_discovery_mcp::cli::run(peers, coordinator));
        runtime.shutdown_timeout(Duration::from_secs(5));
        return code;
    }

    let http = cli.options.http.clone();
    let outcome = runtime.block_on(async {
        if let Some(addr) = http.http {
            let settings = peer_discovery_mcp::serve::http::HttpSettings {
                addr,
                allowed_hosts: http.http_allowed_hosts,
                allowed_origins: http.http_allowed_origins,
                token: peer_discovery_mcp::config::http_token_from_env(),
                max_sessions: http.http_max_sessions as usize,
                session_idle: Duration::from_secs(http.http_session_idle),
                hold_limit: Duration::from_secs(http.http_hold_limit),
            };
            return peer_discovery_mcp::serve::http::run_http(
                coordinator,
                settings,
                peer_discovery_mcp::serve::terminated(),
            )
            .await
            .map(|()| rmcp::service::QuitReason::Cancelled);
        }
        let (stdin, stdout) = rmcp::transport::stdio_pipes();
        peer_discovery_mcp::run(
            coordinator,
            stdin,
            stdout,
            peer_discovery_mcp::serve::terminated(),
        )
        .await
    });
    // `run` returns once every call read has been answered and written (or the guard's
    // drain time ran out), so no answer waits on this. What may be left on the blocking
    // pool: a stdin read that cannot be cancelled (after a signal), which is not waited
    // for, and file writes of calls the client cancelled, which get time to finish.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(reason) => {
            tracing::info!(?reason, "server stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("peer-discovery-mcp: {e}");
            ExitCode::FAILURE
        }
    }
}
