//! Helpers shared by the integration tests: start the real binary, call its tools.
#![allow(dead_code)]

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod fake_github;
pub mod sources;

use std::path::Path;
use std::process::Stdio;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::process::Command;

pub type Client = RunningService<RoleClient, ()>;

/// The server binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_peer-discovery-mcp");

/// A command for the binary with a clean environment for its settings: no inherited
/// PEER_REGISTRY_* or GitHub variables, logs at warn.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("PEER_REGISTRY_")
            || key.starts_with("GITHUB_")
            || key == "GH_TOKEN"
            || key == "RUST_LOG"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Starts the server on `registry` and completes the MCP handshake with rmcp's client.
pub async fn start(registry: &Path, extra_args: &[&str]) -> Client {
    let cmd = command().configure(|c| {
        c.arg("--registry-path").arg(registry).args(extra_args);
    });
    start_command(cmd).await
}

pub async fn start_command(cmd: Command) -> Client {
    let (transport, _stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    ().serve(transport).await.expect("MCP handshake")
}

/// Calls a tool; `args` must be a JSON object.
pub async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(arguments) = args else {
        panic!("tool arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
}

/// The structured content of a successful call.
pub fn ok(result: &CallToolResult) -> &Value {
    assert_eq!(
        result.is_error,
        Some(false),
        "expected success, got {:?}",
        text(result)
    );
    result
        .structured_content
        .as_ref()
        .expect("structuredContent")
}

/// The message of a failed call (a tool error, not a protocol error).
pub fn err(result: &CallToolResult) -> String {
    assert_eq!(
        result.is_error,
        Some(true),
        "expected a tool error, got {result:?}"
    );
    assert!(
        result.structured_content.is_none(),
        "a tool error carries no structuredContent"
    );
    text(result)
}

pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The peer ids of a discover answer, in order.
pub fn ids(discover: &Value) -> Vec<String> {
    discover["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["peer_id"].as_str().expect("peer_id").to_owned())
        .collect()
}

/// The registry file as JSON.
pub fn read_registry(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("registry file")).expect("registry JSON")
}

/// Starts the server on `registry` with the GitHub source pointed at `fake`.
pub async fn start_with_github(
    registry: &Path,
    fake: &fake_github::FakeGitHub,
    extra_args: &[&str],
) -> Client {
    start_command(github_command(registry, fake, extra_args)).await
}

/// The command of [`start_with_github`], for tests that need to change it further.
pub fn github_command(
    registry: &Path,
    fake: &fake_github::FakeGitHub,
    extra_args: &[&str],
) -> Command {
    let mut cmd = command();
    cmd.arg("--registry-path")
        .arg(registry)
        .arg("--github-repo")
        .arg(format!("{}/{}", fake_github::OWNER, fake_github::REPO))
        .arg("--github-api-url")
        .arg(fake.base_url())
        .args(extra_args)
        .env("GITHUB_TOKEN", fake_github::TOKEN);
    cmd
}

/// A peer record as JSON, as another machine would write it in an issue body.
pub fn record_json(peer_id: &str, capabilities: &[&str], last_seen: f64, ttl: u64) -> Value {
    serde_json::json!({
        "peer_id": peer_id,
        "multiaddr": "/ip4/198.51.100.4/tcp/4001",
        "capabilities": capabilities,
        "first_seen": last_seen,
        "last_seen": last_seen,
        "source": "github",
        "ttl_seconds": ttl,
        "metadata": {}
    })
}

/// Seeds an open, labelled peer issue as another machine's server would have made it.
pub fn seed_peer(
    fake: &fake_github::FakeGitHub,
    peer_id: &str,
    capabilities: &[&str],
    last_seen: f64,
    ttl: u64,
) -> u64 {
    let mut labels = vec!["peer-registry".to_owned(), "peer-active".to_owned()];
    labels.extend(capabilities.iter().map(|c| format!("capability-{c}")));
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let body = serde_json::to_string_pretty(&record_json(peer_id, capabilities, last_seen, ttl))
        .expect("json");
    fake.seed_issue(fake_github::SeedIssue::new(
        &format!("Peer: {peer_id}"),
        &body,
        &labels,
    ))
}

/// An etcd source in this process on `etcd`'s members under `prefix`: 2 s request
/// timeouts, no credentials.
#[cfg(feature = "etcd")]
pub fn etcd_source(etcd: &etcd::Etcd, prefix: &str) -> peer_discovery_mcp::source::EtcdSource {
    let settings = peer_discovery_mcp::source::etcd::EtcdSettings {
        endpoints: etcd.members.iter().map(|m| m.client_url.clone()).collect(),
        prefix: prefix.to_owned(),
        request_timeout: std::time::Duration::from_secs(2),
    };
    peer_discovery_mcp::source::EtcdSource::new(settings, None)
}

/// Unix seconds now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The open issues (not pull requests) whose title names `peer_id`.
pub fn open_issues_for(
    fake: &fake_github::FakeGitHub,
    peer_id: &str,
) -> Vec<fake_github::IssueSnapshot> {
    fake.issues()
        .into_iter()
        .filter(|i| {
            !i.is_pull_request && i.state == "open" && i.title == format!("Peer: {peer_id}")
        })
        .collect()
}

/// A server driven with raw JSON-RPC lines, for tests that need to send what no real
/// client would, or kill the process at a chosen moment.
pub struct RawSession {
    pub child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl RawSession {
    /// Starts the server with `args` and completes the MCP handshake.
    pub async fn start(args: &[&std::ffi::OsStr]) -> RawSession {
        let mut cmd = command();
        cmd.args(args);
        RawSession::start_command(cmd).await
    }

    /// Starts `cmd` (e.g. from [`github_command`]) and completes the MCP handshake.
    pub async fn start_command(cmd: Command) -> RawSession {
        RawSession::spawn(cmd, false).await
    }

    /// As [`RawSession::start_command`], with the server's stderr a pipe whose reading end
    /// is closed at once (a client that does not keep the server's stderr).
    pub async fn start_with_closed_stderr(cmd: Command) -> RawSession {
        RawSession::spawn(cmd, true).await
    }

    /// Starts `cmd` without any handshake: the client speaks first, as it chooses.
    pub async fn start_bare(cmd: Command) -> RawSession {
        RawSession::launch(cmd, false)
    }

    async fn spawn(cmd: Command, closed_stderr: bool) -> RawSession {
        let mut session = RawSession::launch(cmd, closed_stderr);
        session
            .send_line(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#)
            .await;
        session.expect_id(&serde_json::json!(0)).await;
        session
            .send_line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        session
    }

    fn launch(mut cmd: Command, closed_stderr: bool) -> RawSession {
        use tokio::io::AsyncBufReadExt;
        let stderr = if closed_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn server");
        drop(child.stderr.take());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        RawSession {
            child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    pub async fn send_line(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to server");
        stdin.write_all(b"\n").await.expect("write to server");
        stdin.flush().await.expect("flush");
    }

    /// Sends a tools/call with `id`.
    pub async fn call(&mut self, id: u64, tool: &str, arguments: Value) {
        let line = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        self.send_line(&line.to_string()).await;
    }

    /// The next message from the server; every stdout line must be JSON.
    pub async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("the server answers within 20 s")
            .expect("read stdout")?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}")),
        )
    }

    /// Reads messages until the one with `id` (others are dropped).
    pub async fn expect_id(&mut self, id: &Value) -> Value {
        loop {
            let message = self.next().await.expect("the server closed stdout");
            if message.get("id") == Some(id) {
                return message;
            }
        }
    }

    /// Closes stdin, as a client does when it is done.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

/// A GitHub source in this process on `fake`: listings never reused (every scan asks the
/// fake, conditionally), `write_budget` writes, a 10 s request timeout.
pub fn github_source(
    fake: &fake_github::FakeGitHub,
    write_budget: peer_discovery_mcp::source::github::WriteBudget,
) -> peer_discovery_mcp::source::GitHubIssuesSource {
    let settings = peer_discovery_mcp::source::github::GitHubSettings {
        repo: format!("{}/{}", fake_github::OWNER, fake_github::REPO)
            .parse()
            .expect("repo"),
        api_url: fake.base_url(),
        request_timeout: std::time::Duration::from_secs(10),
        trusted_authors: Vec::new(),
        listing_ttl: std::time::Duration::ZERO,
        write_budget,
    };
    peer_discovery_mcp::source::GitHubIssuesSource::new(settings, fake_github::TOKEN.to_owned())
        .expect("client")
}
