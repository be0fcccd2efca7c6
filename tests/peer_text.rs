//! Peer text is data from other parties: what reaches people and models as text is
//! escaped, structuredContent stays exact, and DNS names in multiaddrs are checked.

mod support;

use serde_json::json;
use support::{call, err, ok, text};

/// Characters that hide or reorder text, one of each kind.
const HOSTILE: &str = "pay\u{202e}evil\u{2028}line\u{2029}para\u{0}nul\u{200b}zw\u{e0041}tag";

/// Whether `s` holds one of HOSTILE's characters raw.
fn has_raw(s: &str) -> bool {
    s.chars().any(|c| {
        matches!(
            c,
            '\u{202e}' | '\u{2028}' | '\u{2029}' | '\u{0}' | '\u{200b}' | '\u{e0041}'
        )
    })
}

/// Metadata with a bidi override, U+2028/U+2029, NUL, a zero-width space and a tag
/// character: the text block (of register and of discover) carries them escaped, never
/// raw; structuredContent and the file carry the exact value.
#[tokio::test]
async fn hostile_metadata_is_escaped_in_text_and_exact_in_structured_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let client = support::start(&path, &[]).await;
    let registered = call(
        &client,
        "register_peer",
        json!({"peer_id": "odd", "multiaddr": "/dns4/odd.example.org/tcp/1", "metadata": {"note": HOSTILE}}),
    )
    .await;
    assert_eq!(ok(&registered)["peer"]["metadata"]["note"], HOSTILE);
    let listed = call(&client, "discover_peers", json!({})).await;
    assert_eq!(ok(&listed)["peers"][0]["metadata"]["note"], HOSTILE);
    for result in [&registered, &listed] {
        let shown = text(result);
        assert!(!has_raw(&shown), "raw characters in the text: {shown:?}");
        for escape in [
            "\\u202e",
            "\\u2028",
            "\\u2029",
            "\\u0000",
            "\\u200b",
            "\\udb40\\udc41",
        ] {
            assert!(shown.contains(escape), "{escape} missing from {shown}");
        }
        // The JSON in the text still says exactly what structuredContent says.
        let (_, json_text) = shown.split_once('\n').expect("summary, then JSON");
        let mirrored: serde_json::Value = serde_json::from_str(json_text).expect("JSON");
        assert_eq!(&mirrored, ok(result));
    }
    let file = support::read_registry(&path);
    assert_eq!(file["peers"]["odd"]["metadata"]["note"], HOSTILE);
    client.cancel().await.expect("shutdown");
}

/// A /dns4/ name with a space, a newline or a bidi override is refused with a tool error
/// that names the problem, shows the name escaped, and stores nothing.
#[tokio::test]
async fn bad_dns_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let client = support::start(&path, &[]).await;
    for name in [
        "bad name.example",
        "bad\nname.example",
        "gro\u{202e}.example",
    ] {
        let result = call(
            &client,
            "register_peer",
            json!({"peer_id": "p", "multiaddr": format!("/dns4/{name}/tcp/1")}),
        )
        .await;
        let message = err(&result);
        assert!(
            message.contains("DNS name") && message.contains("letter, digit, hyphen"),
            "{name:?}: {message}"
        );
        assert!(
            !message.contains('\n') && !has_raw(&message),
            "the error shows the name escaped: {message:?}"
        );
    }
    let update = call(
        &client,
        "update_peer",
        json!({"peer_id": "p", "multiaddr": "/dns6/a b/tcp/1"}),
    )
    .await;
    assert!(err(&update).contains("DNS name"));
    let listed = call(&client, "discover_peers", json!({})).await;
    assert_eq!(ok(&listed)["total_matched"], 0);
    client.cancel().await.expect("shutdown");
}

/// The server's instructions and discover's description say that peer fields are data
/// from other parties, and the tools that can replace another peer's record say they are
/// destructive.
#[tokio::test]
async fn the_model_is_told_peer_fields_are_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start(&dir.path().join("r.json"), &[]).await;
    let instructions = client
        .peer_info()
        .and_then(|i| i.instructions.clone())
        .unwrap_or_default();
    assert!(
        instructions.contains("data written by other parties"),
        "{instructions}"
    );
    let tools = client.list_all_tools().await.expect("tools/list");
    for tool in &tools {
        let destructive = tool.annotations.as_ref().and_then(|a| a.destructive_hint);
        match tool.name.as_ref() {
            "discover_peers" => assert!(
                tool.description
                    .as_deref()
                    .unwrap_or("")
                    .contains("data written by other parties"),
                "{:?}",
                tool.description
            ),
            "register_peer" | "update_peer" | "unregister_peer" => {
                assert_eq!(destructive, Some(true), "{}", tool.name);
            }
            _ => {}
        }
    }
    client.cancel().await.expect("shutdown");
}
