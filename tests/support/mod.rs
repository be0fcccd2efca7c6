//! Helpers shared by the integration tests: start the real binary, call its tools.
#![allow(dead_code)]

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
