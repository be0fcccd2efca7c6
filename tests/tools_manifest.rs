//! `tools.json` is exactly what `tools/list` returns, and every schema is one that strict
//! MCP clients accept. Regenerate the manifest with:
//! `UPDATE_TOOLS_JSON=1 cargo test --test tools_manifest`

mod support;

use std::path::Path;

use peer_discovery_mcp::mcp::schema::strictness_violations;
use serde_json::{Value, json};

async fn listed_tools() -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start(&dir.path().join("r.json"), &[]).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    client.cancel().await.expect("shutdown");
    tools
        .into_iter()
        .map(|t| serde_json::to_value(t).expect("tool as JSON"))
        .collect()
}

/// The checked-in manifest equals the live `tools/list` answer.
#[tokio::test]
async fn tools_json_matches_tools_list() {
    let live = json!({ "tools": listed_tools().await });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools.json");
    if std::env::var_os("UPDATE_TOOLS_JSON").is_some() {
        let text = serde_json::to_string_pretty(&live).expect("pretty JSON") + "\n";
        std::fs::write(&path, text).expect("write tools.json");
        return;
    }
    let checked_in: Value =
        serde_json::from_slice(&std::fs::read(&path).expect(
            "tools.json is missing; run UPDATE_TOOLS_JSON=1 cargo test --test tools_manifest",
        ))
        .expect("tools.json parses");
    assert!(
        checked_in == live,
        "tools.json differs from tools/list; run UPDATE_TOOLS_JSON=1 cargo test --test tools_manifest and review the diff"
    );
}

/// Every tool has object input and output schemas free of `$ref`, `$defs`, integer
/// formats and nullable unions, annotations with all four hints, and a description.
#[tokio::test]
async fn every_schema_is_strict_client_safe() {
    for tool in listed_tools().await {
        let name = tool["name"].as_str().expect("name").to_owned();
        for key in ["inputSchema", "outputSchema"] {
            let schema = &tool[key];
            assert_eq!(
                schema["type"], "object",
                "{name} {key} must be an object schema"
            );
            let bad = strictness_violations(schema);
            assert!(bad.is_empty(), "{name} {key}: {bad:#?}");
        }
        let annotations = &tool["annotations"];
        for hint in [
            "readOnlyHint",
            "destructiveHint",
            "idempotentHint",
            "openWorldHint",
        ] {
            assert!(annotations[hint].is_boolean(), "{name} lacks {hint}");
        }
        let description = tool["description"].as_str().unwrap_or("");
        assert!(
            description.len() > 80,
            "{name} needs a description an LLM can act on"
        );
    }
}

/// No output schema names a source inside `outcomes`: one outcome schema sits under
/// `additionalProperties`, so adding a source changes no tool's schema. The `sources`
/// argument lists every built-in source, whatever the build.
#[tokio::test]
async fn outcomes_name_no_source_and_sources_lists_every_built_in() {
    for tool in listed_tools().await {
        let name = tool["name"].as_str().expect("name").to_owned();
        let output = &tool["outputSchema"]["properties"];
        if let Some(outcomes) = output.get("outcomes") {
            assert_eq!(outcomes["type"], "object", "{name}");
            assert!(outcomes.get("properties").is_none(), "{name}: {outcomes}");
            assert_eq!(
                outcomes["additionalProperties"]["properties"]["status"]["enum"],
                json!(["ok", "error", "disabled", "rate_limited", "timeout"]),
                "{name}"
            );
        }
        if let Some(sources) = tool["inputSchema"]["properties"].get("sources") {
            assert_eq!(
                sources["items"]["enum"],
                json!(["local_file", "github", "etcd"]),
                "{name}"
            );
        }
    }
}
