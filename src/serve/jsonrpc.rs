//! The JSON-RPC edge shared by both transports: what a message must look like before
//! rmcp sees it, and how an error is written whose request id could not be read.
//!
//! That id depends on the protocol generation the client speaks. JSON-RPC 2.0 (and MCP up
//! to 2025-11-25) says such an error carries `"id": null`; MCP 2026-07-28 says it omits
//! `id`. rmcp writes the second everywhere; each transport writes the first for older
//! clients (stdio: the generation is learnt from the handshake, see [`Negotiated`];
//! HTTP: from the `MCP-Protocol-Version` header). A parse error's id is never guessed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

/// Deepest nesting accepted. rmcp's parser stops at 128 levels and then drops the message
/// without an answer; this answers first.
pub const MAX_DEPTH: usize = 100;

/// The first protocol version that omits an unreadable id (ISO dates compare as text).
const OMITS_UNKNOWN_IDS_FROM: &str = "2026-07-28";

/// How an error whose request id could not be read is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownId {
    /// `"id": null` (JSON-RPC 2.0; MCP up to 2025-11-25, and before any handshake).
    Null,
    /// No `id` member (MCP from 2026-07-28).
    Omitted,
}

impl UnknownId {
    /// The rule of protocol `version` (`None`: not negotiated yet, JSON-RPC 2.0's).
    pub fn of_version(version: Option<&str>) -> UnknownId {
        match version {
            Some(v) if v >= OMITS_UNKNOWN_IDS_FROM => UnknownId::Omitted,
            _ => UnknownId::Null,
        }
    }
}

/// The protocol generation one stdio connection speaks, as learnt from what the client
/// sends: `initialize` starts a session of an older protocol (JSON-RPC 2.0's rule), a
/// request that names its protocol in `_meta` (2026-07-28's inline negotiation, e.g.
/// `server/discover`) sets it. Shared between the tasks of one connection.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    omits: Arc<AtomicBool>,
}

impl Negotiated {
    /// Notes what a well-formed request says about the protocol.
    pub fn observe(&self, message: &Value) {
        let version = if message.get("method").and_then(Value::as_str) == Some("initialize") {
            // An initialize handshake is the older lifecycle whatever version it asks.
            Some(UnknownId::Null)
        } else {
            message
                .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
                .and_then(Value::as_str)
                .map(|v| UnknownId::of_version(Some(v)))
        };
        if let Some(rule) = version {
            self.omits
                .store(rule == UnknownId::Omitted, Ordering::Relaxed);
        }
    }

    pub fn unknown_id(&self) -> UnknownId {
        if self.omits.load(Ordering::Relaxed) {
            UnknownId::Omitted
        } else {
            UnknownId::Null
        }
    }
}

/// Why a message is refused before rmcp sees it, and the error that answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The request's id, or `Value::Null` when it could not be read.
    pub id: Value,
    pub code: i64,
    pub message: String,
}

impl Refusal {
    /// The error message, with an unreadable id written by `rule`.
    pub fn to_json(&self, rule: UnknownId) -> Value {
        error_message(self.id.clone(), self.code, &self.message, rule)
    }
}

/// A JSON-RPC error; an `id` of `Value::Null` means "could not be read" and is written by
/// `rule`.
pub fn error_message(id: Value, code: i64, message: &str, rule: UnknownId) -> Value {
    let mut error = Map::new();
    error.insert("jsonrpc".into(), json!("2.0"));
    if !(id.is_null() && rule == UnknownId::Omitted) {
        error.insert("id".into(), id);
    }
    error.insert("error".into(), json!({"code": code, "message": message}));
    Value::Object(error)
}

/// Adds `"id": null` to an error `message` that has no `id` member when `rule` wants one
/// (rmcp omits it), and says whether it changed anything.
pub fn restore_null_id(message: &mut Value, rule: UnknownId) -> bool {
    match message {
        Value::Object(fields)
            if rule == UnknownId::Null
                && fields.contains_key("error")
                && !fields.contains_key("id") =>
        {
            fields.insert("id".into(), Value::Null);
            true
        }
        _ => false,
    }
}

/// Checks one message as rmcp would parse it and returns it parsed, or the refusal that
/// answers what rmcp would drop without an answer (bad syntax, numbers out of range,
/// nesting too deep, a malformed envelope).
pub fn check_message(bytes: &[u8]) -> Result<Value, Refusal> {
    // Depth first: rmcp's parser would stop at 128 levels and drop the message silently,
    // and the id can still be read to answer it.
    if nesting_exceeds(bytes, MAX_DEPTH) {
        tracing::warn!("refused a request nested too deeply");
        return Err(Refusal {
            id: top_level_id(bytes).unwrap_or(Value::Null),
            code: -32600,
            message: format!("Invalid Request: JSON nested more than {MAX_DEPTH} levels deep"),
        });
    }
    let message = serde_json::from_slice::<Value>(bytes).map_err(|e| {
        // JSON-RPC 2.0: the id of a parse error is null. It is never guessed from the
        // text: a truncated `{"id":1,"method":` may be cut from the client's real
        // request 1, whose own answer would then look delivered.
        tracing::warn!(error = %e, "answered a message that is not JSON with a parse error");
        Refusal {
            id: Value::Null,
            code: -32700,
            message: format!("Parse error: {e}"),
        }
    })?;
    if let Some((id, code, reason)) = envelope_error(&message) {
        tracing::warn!(reason, "refused a malformed JSON-RPC message");
        return Err(Refusal {
            id,
            code,
            message: reason.to_string(),
        });
    }
    Ok(message)
}

/// A request id as rmcp reads it: an integer (also written `1.0` or `1e2`) or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IdKey {
    Number(i64),
    Text(String),
}

impl IdKey {
    pub(crate) fn from_value(value: &Value) -> Option<IdKey> {
        match value {
            Value::String(s) => Some(IdKey::Text(s.clone())),
            Value::Number(n) => n
                .as_i64()
                .or_else(|| {
                    // 2^53 itself is excluded, as in rmcp: it stands for two integers.
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
                        .map(|f| f as i64)
                })
                .map(IdKey::Number),
            _ => None,
        }
    }
}

/// Whether a request is meant to stay open for long (a long poll or a stream), so that it
/// takes a held-open slot instead of one of the bounded in-flight slots: a `peer_changes`
/// call that waits (`wait_seconds` above 0) and `subscriptions/listen`.
pub(crate) fn holds_open(message: &Value) -> bool {
    match message.get("method").and_then(Value::as_str) {
        Some("subscriptions/listen") => true,
        Some("tools/call") => {
            message.pointer("/params/name").and_then(Value::as_str) == Some("peer_changes")
                && message
                    .pointer("/params/arguments/wait_seconds")
                    .and_then(Value::as_f64)
                    .is_some_and(|w| w > 0.0)
        }
        _ => false,
    }
}

/// What is wrong with a parsed message that rmcp would answer without an id, or with
/// "method not found" for a `tools/call` whose params do not fit: (id, code, message).
fn envelope_error(message: &Value) -> Option<(Value, i64, &'static str)> {
    let Value::Object(fields) = message else {
        let reason = if message.is_array() {
            "Invalid Request: batches are not supported; send one message per line"
        } else {
            "Invalid Request: a JSON-RPC message is an object"
        };
        return Some((Value::Null, -32600, reason));
    };
    let id = fields
        .get("id")
        .filter(|v| v.is_string() || v.is_number())
        .cloned()
        .unwrap_or(Value::Null);
    if fields
        .get("id")
        .is_some_and(|v| !v.is_null() && IdKey::from_value(v).is_none())
    {
        return Some((
            id,
            -32600,
            "Invalid Request: \"id\" must be a string or an integer",
        ));
    }
    if fields.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some((id, -32600, "Invalid Request: \"jsonrpc\" must be \"2.0\""));
    }
    match fields.get("method") {
        Some(Value::String(method)) if method == "tools/call" => {
            let fits = matches!(fields.get("params"), Some(Value::Object(params))
                if params.get("name").is_some_and(Value::is_string)
                    && params.get("arguments").is_none_or(|a| a.is_object() || a.is_null()));
            (!fits).then_some((
                id,
                -32602,
                "Invalid params: tools/call needs params.name (a string) and params.arguments (an object)",
            ))
        }
        Some(Value::String(_)) => None,
        Some(_) => Some((id, -32600, "Invalid Request: \"method\" must be a string")),
        None if fields.contains_key("result") || fields.contains_key("error") => None,
        None => Some((
            id,
            -32600,
            "Invalid Request: neither a request (method) nor a response (result or error)",
        )),
    }
}

/// The `id` member of the top-level object at the start of `head`, when it can be read
/// there (clients put it before `params`), so an oversized request still gets an answer
/// its client can match.
pub(crate) fn top_level_id(head: &[u8]) -> Option<Value> {
    let mut depth = 0usize;
    let mut i = 0usize;
    while i < head.len() {
        match head[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let end = string_end(head, i)?;
                if depth == 1 && &head[i..=end] == b"\"id\"" {
                    let rest = &head[end + 1..];
                    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
                    if rest[colon] != b':' {
                        return None;
                    }
                    let value = serde_json::Deserializer::from_slice(&rest[colon + 1..])
                        .into_iter::<Value>()
                        .next()?
                        .ok()?;
                    return matches!(value, Value::Number(_) | Value::String(_)).then_some(value);
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether `json` (valid JSON) nests arrays and objects more than `limit` levels deep.
pub(crate) fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0usize;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => match string_end(json, i) {
                Some(end) => i = end,
                None => return false,
            },
            _ => {}
        }
        i += 1;
    }
    false
}

/// Index of the quote that closes the string opening at `start`.
pub(crate) fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The id is read from the top level only, not from inside params.
    #[test]
    fn id_is_read_from_the_top_level_object() {
        assert_eq!(
            top_level_id(br#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"#),
            Some(json!(7))
        );
        assert_eq!(
            top_level_id(br#"{"id": "a\"b", "params": "#),
            Some(json!("a\"b"))
        );
        assert_eq!(top_level_id(br#"{"params":{"id":3},"#), None);
        assert_eq!(
            top_level_id(br#"{"method":"x","params":{"id":3},"id":9,"#),
            Some(json!(9))
        );
        assert_eq!(top_level_id(b"garbage"), None);
    }

    /// Malformed envelopes are answered with the id when there is one.
    #[test]
    fn envelopes_are_checked() {
        let check = |v: Value| envelope_error(&v).map(|(id, code, _)| (id, code));
        assert_eq!(
            check(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
            None
        );
        assert_eq!(
            check(json!({"jsonrpc": "2.0", "id": 1, "result": {}})),
            None
        );
        assert_eq!(check(json!([1])), Some((Value::Null, -32600)));
        assert_eq!(
            check(json!({"jsonrpc": "2.0", "id": 1.5, "method": "ping"})),
            Some((json!(1.5), -32600))
        );
        assert_eq!(
            check(json!({"jsonrpc": "2.0", "id": 2.0, "method": "ping"})),
            None
        );
        assert_eq!(
            check(json!({"id": 4, "method": "ping"})),
            Some((json!(4), -32600))
        );
        assert_eq!(
            check(json!({"jsonrpc": "2.0", "id": 5})),
            Some((json!(5), -32600))
        );
        assert_eq!(
            check(
                json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "x", "arguments": [1]}})
            ),
            Some((json!(6), -32602))
        );
        assert_eq!(
            check(
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"arguments": {}}})
            ),
            Some((json!(7), -32602))
        );
    }

    /// rmcp's id-less errors get `"id": null` for older clients; nothing else changes.
    #[test]
    fn a_null_id_is_restored_only_where_the_rule_wants_it() {
        let idless = json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "x"}});
        let mut message = idless.clone();
        assert!(restore_null_id(&mut message, UnknownId::Null));
        assert_eq!(message.get("id"), Some(&Value::Null));
        let mut message = idless.clone();
        assert!(!restore_null_id(&mut message, UnknownId::Omitted));
        assert_eq!(message, idless);
        let mut answer = json!({"jsonrpc": "2.0", "id": 4, "error": {"code": 1, "message": "x"}});
        assert!(!restore_null_id(&mut answer, UnknownId::Null));
        assert_eq!(answer["id"], 4);
        let mut result = json!({"jsonrpc": "2.0", "result": {}});
        assert!(!restore_null_id(&mut result, UnknownId::Null));
        assert_eq!(UnknownId::of_version(Some("2025-11-25")), UnknownId::Null);
        assert_eq!(
            UnknownId::of_version(Some("2026-07-28")),
            UnknownId::Omitted
        );
        assert_eq!(UnknownId::of_version(None), UnknownId::Null);
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(!nesting_exceeds(br#"{"a":[[1]]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[[[1]]]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[["}"#, 3));
    }
}
