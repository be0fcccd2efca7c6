//! What the end-to-end examples share: the server binary started as a stdio child with
//! rmcp's client, and tool calls (included with `#[path]`).
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::process::Command;

pub type Client = RunningService<RoleClient, ()>;

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The server command on `registry`, with settings from the environment cleared, no
/// background cleanup and logs at warn.
pub fn command(bin: &Path, registry: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("PEER_REGISTRY_") || key.starts_with("GITHUB_") || key == "GH_TOKEN" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "warn")
        .arg("--registry-path")
        .arg(registry)
        .args(["--cleanup-interval", "0"]);
    cmd
}

/// A server on stdio, with rmcp's client in front of it.
pub async fn stdio_client(bin: &Path, registry: &Path) -> Client {
    let cmd = command(bin, registry).configure(|_| {});
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a stdio server");
    ().serve(transport).await.expect("stdio handshake")
}

/// Calls `tool`, which must succeed; its structured content.
pub async fn call(client: &Client, tool: &str, arguments: Value) -> Value {
    let Value::Object(arguments) = arguments else {
        unreachable!("arguments are an object")
    };
    let result = client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
        .await
        .expect("a tool answer");
    assert_ne!(result.is_error, Some(true), "{tool} failed: {result:?}");
    result.structured_content.unwrap_or(Value::Null)
}
