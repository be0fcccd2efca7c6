//! A guard in front of the MCP transport: it reads stdin line by line with a hard cap on
//! line length, answers what rmcp would silently drop, and passes everything else on.
//!
//! rmcp ignores a line that is not JSON (the client then waits forever) and buffers a
//! line of any length up to 16 MiB. Here:
//! - a line that is not JSON (or that rmcp's parser would refuse: numbers out of range,
//!   nesting deeper than [`MAX_DEPTH`]) gets a JSON-RPC error (`-32700 Parse error`,
//!   `-32600`) carrying the request's id when it can be read, else id null;
//! - a line longer than the cap gets `-32600` naming the limit, with the request's id when
//!   it can be read from the start of the line, and is discarded as it streams in, so no
//!   input makes the server hold more than the cap in memory;
//! - every other line goes to rmcp unchanged, through an in-memory pipe.
//!
//! One writer task owns stdout, so rmcp's answers and the guard's never interleave.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest request line accepted: ample for any valid call (metadata stops at 4 KiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Deepest nesting accepted. rmcp's parser stops at 128 levels and then drops the line
/// without an answer; this answers first.
pub const MAX_DEPTH: usize = 100;

/// Size of the in-memory pipe between the guard and rmcp.
const PIPE_BYTES: usize = 4 * 1024 * 1024;

/// The transport to hand to rmcp, and the tasks that feed and drain it.
pub struct Guarded {
    pub transport: tokio::io::DuplexStream,
    /// Reads the input; ends at EOF (then rmcp sees EOF too).
    pub inbound: JoinHandle<()>,
    /// Writes every answer; ends once rmcp's side is closed and everything is flushed.
    pub outbound: JoinHandle<()>,
}

/// Puts the guard between `input`/`output` (stdin/stdout) and rmcp.
pub fn guard<R, W>(input: R, output: W, max_line: usize) -> Guarded
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (transport, ours) = tokio::io::duplex(PIPE_BYTES);
    let (from_rmcp, mut to_rmcp) = tokio::io::split(ours);
    let (lines, mut pending) = mpsc::unbounded_channel::<Vec<u8>>();

    let outbound = tokio::spawn(async move {
        let mut output = output;
        while let Some(line) = pending.recv().await {
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                break; // the client is gone
            }
        }
    });

    let answers = lines.clone();
    tokio::spawn(async move {
        let mut from_rmcp = BufReader::new(from_rmcp);
        loop {
            let mut line = Vec::new();
            match from_rmcp.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if answers.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let inbound = tokio::spawn(async move {
        let mut input = BufReader::with_capacity(64 * 1024, input);
        loop {
            match read_bounded_line(&mut input, max_line).await {
                Ok(Line::End) | Err(_) => break,
                Ok(Line::Complete(line)) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    // Depth first: rmcp's parser would stop at 128 levels and drop the
                    // line silently, and the id can still be read to answer it.
                    if nesting_exceeds(&line, MAX_DEPTH) {
                        tracing::warn!("refused a request nested too deeply");
                        let id = top_level_id(&line).unwrap_or(Value::Null);
                        let message = format!(
                            "Invalid Request: JSON nested more than {MAX_DEPTH} levels deep"
                        );
                        let _ = lines.send(error_line(id, -32600, &message));
                        continue;
                    }
                    // Parsed as rmcp will parse it, so whatever rmcp would drop without an
                    // answer (bad syntax, numbers out of range) is answered here.
                    let message = match serde_json::from_slice::<Value>(&line) {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::warn!(error = %e, "answered a line that is not JSON with a parse error");
                            let id = top_level_id(&line).unwrap_or(Value::Null);
                            let _ =
                                lines.send(error_line(id, -32700, &format!("Parse error: {e}")));
                            continue;
                        }
                    };
                    if let Some((id, code, reason)) = envelope_error(&message) {
                        tracing::warn!(reason, "refused a malformed JSON-RPC message");
                        let _ = lines.send(error_line(id, code, reason));
                        continue;
                    }
                    let mut line = line;
                    line.push(b'\n');
                    if to_rmcp.write_all(&line).await.is_err() {
                        break;
                    }
                }
                Ok(Line::TooLong { head, length }) => {
                    tracing::warn!(length, "refused a request line over the size limit");
                    let id = top_level_id(&head).unwrap_or(Value::Null);
                    let message = format!(
                        "request too large: the line is {length} bytes; the limit is {max_line}"
                    );
                    let _ = lines.send(error_line(id, -32600, &message));
                }
            }
        }
        let _ = to_rmcp.shutdown().await;
    });

    Guarded {
        transport,
        inbound,
        outbound,
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

fn error_line(id: Value, code: i64, message: &str) -> Vec<u8> {
    let mut line = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

enum Line {
    Complete(Vec<u8>),
    /// The first `max` bytes, and the whole length (the rest was discarded).
    TooLong {
        head: Vec<u8>,
        length: usize,
    },
    End,
}

/// Reads one line (without its `\n`), keeping at most `max` bytes of it in memory.
async fn read_bounded_line<R: AsyncRead + Unpin>(
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
fn top_level_id(head: &[u8]) -> Option<Value> {
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
fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
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
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
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
    use tokio::io::AsyncReadExt;

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

    async fn exchange(input: &'static [u8], max: usize) -> Vec<Value> {
        let (mut client, server_out) = tokio::io::duplex(1 << 20);
        let guarded = guard(input, server_out, max);
        // Echo rmcp's side: answer every forwarded line with {"echo": <line>}.
        let (rmcp_read, mut rmcp_write) = tokio::io::split(guarded.transport);
        tokio::spawn(async move {
            let mut lines = BufReader::new(rmcp_read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = json!({"echo": line}).to_string() + "\n";
                let _ = rmcp_write.write_all(answer.as_bytes()).await;
            }
        });
        let mut text = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            client.read_to_string(&mut text),
        )
        .await;
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
            .collect()
    }

    /// JSON goes through, non-JSON gets -32700, an oversized line gets -32600 with its id.
    #[tokio::test]
    async fn lines_are_checked_and_bounded() {
        let input: &'static [u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"a\"}\nnot json\n\n{\"id\":5,\"x\":\"0123456789012345678901234567890123456789\"}\n{\"jsonrpc\":\"2.0\",\"method\":\"b\"}\n";
        let out = exchange(input, 40).await;
        assert!(
            out.contains(&json!({"echo": "{\"jsonrpc\":\"2.0\",\"method\":\"a\"}"})),
            "{out:?}"
        );
        assert!(
            out.contains(&json!({"echo": "{\"jsonrpc\":\"2.0\",\"method\":\"b\"}"})),
            "{out:?}"
        );
        let parse = out
            .iter()
            .find(|v| v["error"]["code"] == -32700)
            .expect("parse error");
        assert_eq!(parse["id"], Value::Null);
        let large = out
            .iter()
            .find(|v| v["error"]["code"] == -32600)
            .expect("too large");
        assert_eq!(large["id"], 5);
        assert!(
            large["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("the limit is 40")
        );
        assert_eq!(out.len(), 4);
    }
}
