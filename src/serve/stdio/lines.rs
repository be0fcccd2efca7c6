//! One line of input: read with a hard cap on its length, checked as rmcp would parse it,
//! and the JSON-RPC error line that answers a line rmcp would drop.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::order::{Access, IdKey, holds_open};
use super::{Incoming, MAX_DEPTH};

/// Checks one complete line and classifies it.
pub(super) fn check_line(line: Vec<u8>) -> Incoming {
    // Depth first: rmcp's parser would stop at 128 levels and drop the line silently,
    // and the id can still be read to answer it.
    if nesting_exceeds(&line, MAX_DEPTH) {
        tracing::warn!("refused a request nested too deeply");
        let id = top_level_id(&line).unwrap_or(Value::Null);
        let message = format!("Invalid Request: JSON nested more than {MAX_DEPTH} levels deep");
        return Incoming::Refused(error_line(id, -32600, &message));
    }
    // Parsed as rmcp will parse it, so whatever rmcp would drop without an answer (bad
    // syntax, numbers out of range) is answered here.
    let message = match serde_json::from_slice::<Value>(&line) {
        Ok(message) => message,
        Err(e) => {
            // JSON-RPC 2.0: the id of a parse error is null. It is never guessed from the
            // text: a truncated `{"id":1,"method":` may be cut from the client's real
            // request 1, whose own answer would then look delivered.
            tracing::warn!(error = %e, "answered a line that is not JSON with a parse error");
            return Incoming::Refused(error_line(
                Value::Null,
                -32700,
                &format!("Parse error: {e}"),
            ));
        }
    };
    if let Some((id, code, reason)) = envelope_error(&message) {
        tracing::warn!(reason, "refused a malformed JSON-RPC message");
        return Incoming::Refused(error_line(id, code, reason));
    }
    let mut line = line;
    line.push(b'\n');
    let method = message.get("method").and_then(Value::as_str);
    let raw_id = message.get("id").cloned().unwrap_or(Value::Null);
    match (method, IdKey::from_value(&raw_id)) {
        (Some(_), Some(id)) => Incoming::Request {
            id,
            raw_id,
            access: Access::of(&message),
            held_open: holds_open(&message),
            line,
        },
        (Some("notifications/cancelled"), None) => Incoming::Cancel {
            id: message
                .pointer("/params/requestId")
                .and_then(IdKey::from_value),
            line,
        },
        _ => Incoming::Pass(line),
    }
}

/// What is wrong with a parsed message that rmcp would answer without an id, or with
/// "method not found" for a `tools/call` whose params do not fit: (id, code, message).
pub(super) fn envelope_error(message: &Value) -> Option<(Value, i64, &'static str)> {
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

pub(super) fn error_line(id: Value, code: i64, message: &str) -> Vec<u8> {
    let mut line = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

pub(super) enum Line {
    Complete(Vec<u8>),
    /// The first `max` bytes, and the whole length (the rest was discarded).
    TooLong {
        head: Vec<u8>,
        length: usize,
    },
    End,
}

/// Reads one line (without its `\n`), keeping at most `max` bytes of it in memory.
pub(super) async fn read_bounded_line<R: AsyncRead + Unpin>(
    input: &mut BufReader<R>,
    max: usize,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut length = 0usize;
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            return Ok(if length == 0 {
                Line::End
            } else if length > max {
                Line::TooLong { head: line, length }
            } else {
                Line::Complete(line)
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        let room = (max + 1).saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        length += chunk.len();
        let consumed = done.unwrap_or(chunk.len());
        input.consume(consumed);
        if done.is_some() {
            return Ok(if length > max {
                line.truncate(max);
                Line::TooLong { head: line, length }
            } else {
                Line::Complete(line)
            });
        }
    }
}

/// The `id` member of the top-level object at the start of `head`, when it can be read
/// there (clients put it before `params`), so an oversized request still gets an answer
/// its client can match.
pub(super) fn top_level_id(head: &[u8]) -> Option<Value> {
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
pub(super) fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
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
pub(super) fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
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

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(!nesting_exceeds(br#"{"a":[[1]]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[[[1]]]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[["}"#, 3));
    }
}
