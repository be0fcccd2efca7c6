//! One line of input: read with a hard cap on its length, checked as rmcp would parse it
//! ([`crate::serve::jsonrpc`]), and classified for the dispatcher.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::Incoming;
use super::order::{Access, IdKey};
use crate::serve::jsonrpc::{Negotiated, check_message, holds_open};

/// Checks one complete line and classifies it; a refused line is answered with an
/// unreadable id written as `negotiated` says.
pub(super) fn check_line(line: Vec<u8>, negotiated: &Negotiated) -> Incoming {
    let message = match check_message(&line) {
        Ok(message) => message,
        Err(refusal) => {
            return Incoming::Refused(json_line(&refusal.to_json(negotiated.unknown_id())));
        }
    };
    negotiated.observe(&message);
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

/// One message as a line of output.
pub(super) fn json_line(message: &Value) -> Vec<u8> {
    let mut line = message.to_string().into_bytes();
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
