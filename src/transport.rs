//! A guard in front of the MCP transport: it reads stdin line by line with a hard cap on
//! line length, answers what rmcp would silently drop, orders calls that depend on each
//! other, bounds the work in flight, and passes everything else on.
//!
//! rmcp ignores a line that is not JSON (the client then waits forever), buffers a line of
//! any length up to 16 MiB, spawns a task per request with no cap, and runs requests in
//! whatever order its tasks finish. Here:
//! - a line that is not JSON (or that rmcp's parser would refuse: numbers out of range,
//!   nesting deeper than [`MAX_DEPTH`], an id that is neither a string nor an integer)
//!   gets a JSON-RPC error (`-32700 Parse error`, `-32600`) carrying the request's id when
//!   it can be read, else id null;
//! - a line longer than the cap gets `-32600` naming the limit, with the request's id when
//!   it can be read from the start of the line, and is discarded as it streams in, so no
//!   input makes the server hold more than the cap in memory;
//! - **order**: every `tools/call` is a read or a write (see [`Access`]). A call is held
//!   back (while later, unrelated lines go on) as long as an earlier write it depends on
//!   is unanswered: a read waits for every earlier write, a write of peer P for earlier
//!   writes of P and earlier whole-registry writes, a whole-registry write for every
//!   earlier write. So within one server process a call sees every write that arrived
//!   before it, and writes of different peers still run together (the local file
//!   group-commits them). A write stops being pending when its answer leaves rmcp or the
//!   client cancels it (`notifications/cancelled`);
//! - **bounds**: at most [`Limits::max_in_flight`] requests are read and not yet answered
//!   (held ones included), and at most [`Limits::out_queue`] answers wait for stdout. A
//!   client that stops reading stdout therefore stops the server reading stdin: answers
//!   stop leaving rmcp, no request is released, and no more lines are read. Calls that are
//!   meant to stay open ([`holds_open`]: a `peer_changes` long poll, a
//!   `subscriptions/listen` stream) take one of [`Limits::max_held_open`] slots of their
//!   own instead, so they never use up the bound for ordinary calls; a new kind of
//!   held-open call is exempted by adding it to [`holds_open`];
//! - **end**: at EOF (or [`GuardHandle::stop_reading`], on a signal) no more lines are
//!   read, and rmcp's input closes only once every call already read has been answered,
//!   or after [`Limits::drain`] (held-open calls are not waited for). rmcp's own drain
//!   (5 s) then has nothing left to cut short;
//! - every other line goes to rmcp unchanged, through an in-memory pipe.
//!
//! One writer task owns stdout, so rmcp's answers and the guard's never interleave.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Longest request line accepted: ample for any valid call (metadata stops at 4 KiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Deepest nesting accepted. rmcp's parser stops at 128 levels and then drops the line
/// without an answer; this answers first.
pub const MAX_DEPTH: usize = 100;

/// Size of the in-memory pipe between the guard and rmcp.
const PIPE_BYTES: usize = 1024 * 1024;

/// The bounds of one guarded connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line, in bytes.
    pub max_line: usize,
    /// Requests read and not yet answered (forwarded or held for ordering). At the bound,
    /// stdin is not read until an answer leaves rmcp.
    pub max_in_flight: usize,
    /// Held-open calls ([`holds_open`]) that count against their own bound instead of
    /// `max_in_flight`; beyond it they count as ordinary calls.
    pub max_held_open: usize,
    /// Answers (and the guard's own errors) waiting for stdout.
    pub out_queue: usize,
    /// How long calls already read may take to finish after EOF or a stop signal, and
    /// how long the last answers may take to be written.
    pub drain: Duration,
}

/// Requests in flight by default: above the 32 writes a client pipelines in a burst (so
/// group commit still sees them together), small enough that answers in flight stay a
/// few MiB.
pub const MAX_IN_FLIGHT: usize = 64;

/// How long calls already read may still take after stdin closes (each call is itself
/// bounded by the source timeout; this covers a queue of them).
pub const DRAIN: Duration = Duration::from_secs(60);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: MAX_LINE_BYTES,
            max_in_flight: MAX_IN_FLIGHT,
            max_held_open: 256,
            out_queue: 16,
            drain: DRAIN,
        }
    }
}

/// The tasks around one guarded connection.
pub struct GuardHandle {
    reader: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    outbound: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    drain: Duration,
}

impl GuardHandle {
    /// Stops reading requests (a shutdown signal while stdin is still open): the calls
    /// already read are finished and answered, as at EOF.
    pub fn stop_reading(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until every answer is written (at most [`Limits::drain`] once rmcp is done).
    /// Call it after rmcp's service has ended.
    pub async fn finish(self) {
        // The reader may be blocked on a stdin that stays open (after a signal).
        self.reader.abort();
        let _ = self.dispatcher.await;
        if tokio::time::timeout(self.drain, self.outbound)
            .await
            .is_err()
        {
            tracing::warn!(
                "the client did not read the last answers within {:?}; they are dropped",
                self.drain
            );
        }
    }
}

/// Puts the guard between `input`/`output` (stdin/stdout) and rmcp. Returns the transport
/// to hand to rmcp and the handle of the guard's tasks.
pub fn guard<R, W>(input: R, output: W, limits: Limits) -> (tokio::io::DuplexStream, GuardHandle)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (transport, ours) = tokio::io::duplex(PIPE_BYTES);
    let (from_rmcp, to_rmcp) = tokio::io::split(ours);
    let (out, mut waiting_out) = mpsc::channel::<Vec<u8>>(limits.out_queue.max(1));
    let (lines, incoming) = mpsc::channel::<Incoming>(4);
    let (answered, answers) = mpsc::unbounded_channel::<IdKey>();
    let (stop, stopped) = oneshot::channel();

    let outbound = tokio::spawn(async move {
        let mut output = output;
        while let Some(line) = waiting_out.recv().await {
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                break; // the client is gone
            }
        }
    });

    // Reads rmcp's answers: each response releases its request, then waits its turn for
    // stdout. While the queue is full nothing is released, so the dispatcher stops reading.
    let answers_out = out.clone();
    tokio::spawn(async move {
        let mut from_rmcp = BufReader::new(from_rmcp);
        let mut client_gone = false;
        loop {
            let mut line = Vec::new();
            match from_rmcp.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(id) = response_id(&line) {
                        let _ = answered.send(id);
                    }
                    // Once the client is gone, keep draining rmcp so that it is never
                    // blocked on a pipe nobody reads.
                    if !client_gone && answers_out.send(line).await.is_err() {
                        client_gone = true;
                    }
                }
            }
        }
    });

    let reader = tokio::spawn(read_requests(input, limits.max_line, lines));
    let dispatcher = tokio::spawn(dispatch(
        incoming,
        answers,
        stopped,
        to_rmcp,
        out,
        limits.clone(),
    ));

    (
        transport,
        GuardHandle {
            reader,
            dispatcher,
            outbound,
            stop: Some(stop),
            drain: limits.drain,
        },
    )
}

/// A line read from the client, checked and classified.
enum Incoming {
    /// A request to pass on once nothing it depends on is pending.
    Request {
        id: IdKey,
        raw_id: Value,
        access: Access,
        held_open: bool,
        line: Vec<u8>,
    },
    /// `notifications/cancelled`: the named request is no longer pending.
    Cancel { id: Option<IdKey>, line: Vec<u8> },
    /// Any other notification, or a response to a request of the server: passed on now.
    Pass(Vec<u8>),
    /// The guard's own answer (a JSON-RPC error) to a line it refused.
    Refused(Vec<u8>),
}

/// Reads stdin, refuses what rmcp would drop, and hands the rest to the dispatcher. The
/// dispatcher takes a line only while there is room in flight, so this blocks (and stops
/// reading stdin) when there is none.
async fn read_requests<R: AsyncRead + Unpin>(
    input: R,
    max_line: usize,
    lines: mpsc::Sender<Incoming>,
) {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    loop {
        let incoming = match read_bounded_line(&mut input, max_line).await {
            Ok(Line::End) | Err(_) => break,
            Ok(Line::Complete(line)) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                check_line(line)
            }
            Ok(Line::TooLong { head, length }) => {
                tracing::warn!(length, "refused a request line over the size limit");
                let id = top_level_id(&head).unwrap_or(Value::Null);
                let message = format!(
                    "request too large: the line is {length} bytes; the limit is {max_line}"
                );
                Incoming::Refused(error_line(id, -32600, &message))
            }
        };
        if lines.send(incoming).await.is_err() {
            break; // the dispatcher stopped reading (a shutdown signal)
        }
    }
}

/// Checks one complete line and classifies it.
fn check_line(line: Vec<u8>) -> Incoming {
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
            tracing::warn!(error = %e, "answered a line that is not JSON with a parse error");
            let id = top_level_id(&line).unwrap_or(Value::Null);
            return Incoming::Refused(error_line(id, -32700, &format!("Parse error: {e}")));
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

/// A request id as rmcp reads it: an integer (also written `1.0` or `1e2`) or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdKey {
    Number(i64),
    Text(String),
}

impl IdKey {
    fn from_value(value: &Value) -> Option<IdKey> {
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

/// The id of a response or error line written by rmcp (not of a request it sends).
fn response_id(line: &[u8]) -> Option<IdKey> {
    #[derive(Deserialize)]
    struct Envelope {
        id: Option<Value>,
        method: Option<IgnoredAny>,
    }
    let envelope: Envelope = serde_json::from_slice(line).ok()?;
    if envelope.method.is_some() {
        return None;
    }
    IdKey::from_value(&envelope.id?)
}

/// What a request does to the registry, for ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// Changes nothing: every request but the writes below.
    Read,
    /// Changes one peer: `register_peer`, `update_peer`, `unregister_peer`.
    Peer(String),
    /// May change any peer: `cleanup_expired_peers` (unless `dry_run`), or a write whose
    /// `peer_id` cannot be read.
    Everything,
}

impl Access {
    fn of(message: &Value) -> Access {
        if message.get("method").and_then(Value::as_str) != Some("tools/call") {
            return Access::Read;
        }
        let tool = message.pointer("/params/name").and_then(Value::as_str);
        let arguments = message.pointer("/params/arguments");
        let argument = |name: &str| arguments.and_then(|a| a.get(name));
        match tool {
            Some("register_peer" | "update_peer" | "unregister_peer") => {
                match argument("peer_id").and_then(Value::as_str) {
                    Some(peer) => Access::Peer(peer.to_owned()),
                    None => Access::Everything,
                }
            }
            Some("cleanup_expired_peers") => match argument("dry_run") {
                Some(Value::Bool(true)) => Access::Read,
                _ => Access::Everything,
            },
            _ => Access::Read,
        }
    }

    fn is_write(&self) -> bool {
        !matches!(self, Access::Read)
    }

    /// Whether a request with this access must wait for an `earlier` one still pending.
    fn waits_for(&self, earlier: &Access) -> bool {
        match (self, earlier) {
            (_, Access::Read) => false,
            (Access::Peer(mine), Access::Peer(theirs)) => mine == theirs,
            _ => true,
        }
    }
}

/// Whether a request is meant to stay open for long (a long poll or a stream), so that it
/// takes a held-open slot instead of one of the bounded in-flight slots: a `peer_changes`
/// call that waits (`wait_seconds` above 0) and `subscriptions/listen`.
fn holds_open(message: &Value) -> bool {
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

/// A request read and not answered yet.
struct Pending {
    /// Arrival order.
    seq: u64,
    access: Access,
    held_open: bool,
    /// The line, while it is held back; `None` once passed to rmcp.
    held: Option<Vec<u8>>,
}

/// The requests read and not answered, and which of them are held back.
#[derive(Default)]
struct Order {
    next_seq: u64,
    pending: HashMap<IdKey, Pending>,
    /// Ids of the held requests, in arrival order.
    held: VecDeque<IdKey>,
    /// Pending requests that count against `max_in_flight`.
    counted: usize,
    /// Pending requests in held-open slots.
    held_open: usize,
}

impl Order {
    /// Whether a request with `access` arriving at `seq` must wait for a pending one.
    fn blocked(&self, seq: u64, access: &Access) -> bool {
        self.pending
            .values()
            .any(|p| p.seq < seq && p.access.is_write() && access.waits_for(&p.access))
    }

    /// Admits a request; returns its line when it can go to rmcp now.
    fn admit(
        &mut self,
        id: IdKey,
        access: Access,
        held_open: bool,
        max_held_open: usize,
        line: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let held_open = held_open && self.held_open < max_held_open;
        if held_open {
            self.held_open += 1;
        } else {
            self.counted += 1;
        }
        let blocked = self.blocked(seq, &access);
        let (held, now) = if blocked {
            self.held.push_back(id.clone());
            (Some(line), None)
        } else {
            (None, Some(line))
        };
        self.pending.insert(
            id,
            Pending {
                seq,
                access,
                held_open,
                held,
            },
        );
        now
    }

    /// Ends a request (answered or cancelled); returns whether it had been passed to rmcp,
    /// or None when it was not pending.
    fn end(&mut self, id: &IdKey) -> Option<bool> {
        let pending = self.pending.remove(id)?;
        if pending.held_open {
            self.held_open -= 1;
        } else {
            self.counted -= 1;
        }
        if pending.held.is_some() {
            self.held.retain(|h| h != id);
        }
        Some(pending.held.is_none())
    }

    /// The held lines that nothing blocks any more, in arrival order, marked as passed on.
    fn release(&mut self) -> Vec<Vec<u8>> {
        let mut ready = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            let id = &self.held[i];
            let Some(p) = self.pending.get(id) else {
                self.held.remove(i);
                continue;
            };
            if self.blocked(p.seq, &p.access) {
                i += 1;
                continue;
            }
            let id = self.held.remove(i).expect("index in range");
            if let Some(line) = self.pending.get_mut(&id).and_then(|p| p.held.take()) {
                ready.push(line);
            }
        }
        ready
    }
}

/// Passes requests to rmcp in an order that respects their dependencies, at most
/// `max_in_flight` at a time, and closes rmcp's input once the input has ended and every
/// call read has been answered (or the drain time is up).
async fn dispatch<T: AsyncWrite + Unpin>(
    mut incoming: mpsc::Receiver<Incoming>,
    mut answers: mpsc::UnboundedReceiver<IdKey>,
    mut stopped: oneshot::Receiver<()>,
    mut to_rmcp: T,
    out: mpsc::Sender<Vec<u8>>,
    limits: Limits,
) {
    let mut order = Order::default();
    let mut reading = true;
    let mut stop_armed = true;
    let deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(deadline);
    loop {
        if !reading && order.counted == 0 {
            break;
        }
        let mut forward = Vec::new();
        tokio::select! {
            biased;
            Some(id) = answers.recv() => {
                if order.end(&id).is_some() {
                    forward = order.release();
                }
            }
            () = &mut deadline => {
                tracing::warn!(
                    unanswered = order.counted,
                    "calls still unanswered {:?} after the input ended are dropped",
                    limits.drain
                );
                break;
            }
            _ = &mut stopped, if stop_armed => {
                stop_armed = false;
                if reading {
                    reading = false;
                    incoming.close();
                    deadline.as_mut().reset(tokio::time::Instant::now() + limits.drain);
                }
            }
            line = incoming.recv(), if reading && order.counted < limits.max_in_flight => {
                match line {
                    None => {
                        reading = false;
                        deadline.as_mut().reset(tokio::time::Instant::now() + limits.drain);
                    }
                    Some(Incoming::Request { id, raw_id, access, held_open, line }) => {
                        if order.pending.contains_key(&id) {
                            let message = format!(
                                "Invalid Request: id {raw_id} is already used by a request in flight; give each request its own id"
                            );
                            let _ = out.send(error_line(raw_id, -32600, &message)).await;
                        } else if let Some(line) =
                            order.admit(id, access, held_open, limits.max_held_open, line)
                        {
                            forward.push(line);
                        }
                    }
                    Some(Incoming::Cancel { id, line }) => {
                        let passed = id.as_ref().and_then(|id| order.end(id));
                        forward = order.release();
                        // A request cancelled while held is never passed on, and neither
                        // is its cancellation.
                        if passed != Some(false) {
                            forward.insert(0, line);
                        }
                    }
                    Some(Incoming::Pass(line)) => forward.push(line),
                    Some(Incoming::Refused(line)) => {
                        let _ = out.send(line).await;
                    }
                }
            }
        }
        for line in forward {
            if to_rmcp.write_all(&line).await.is_err() {
                return;
            }
        }
    }
    let _ = to_rmcp.shutdown().await;
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

    fn limits(max_line: usize) -> Limits {
        Limits {
            max_line,
            ..Limits::default()
        }
    }

    /// Runs the guard on `input` in front of a stand-in for rmcp that answers every
    /// forwarded line with {"echo": <line>}; returns everything written to the client.
    async fn exchange(input: &'static [u8], max: usize) -> Vec<Value> {
        let (mut client, server_out) = tokio::io::duplex(1 << 20);
        let (transport, handle) = guard(input, server_out, limits(max));
        let (rmcp_read, mut rmcp_write) = tokio::io::split(transport);
        tokio::spawn(async move {
            let mut lines = BufReader::new(rmcp_read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = json!({"echo": line}).to_string() + "\n";
                let _ = rmcp_write.write_all(answer.as_bytes()).await;
            }
        });
        let finished = tokio::spawn(handle.finish());
        let mut text = String::new();
        client.read_to_string(&mut text).await.expect("read");
        finished.await.expect("guard tasks");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
            .collect()
    }

    /// A guard between a scripted client and a scripted stand-in for rmcp.
    struct Rig {
        client_in: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        client_out: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
        forwarded: mpsc::UnboundedReceiver<Value>,
        rmcp_out: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        _handle: GuardHandle,
    }

    /// Fails a test that would otherwise hang.
    async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(30), future)
            .await
            .unwrap_or_else(|_| panic!("hung waiting for {what}"))
    }

    impl Rig {
        fn start(limits: Limits) -> Rig {
            let (client, server_io) = tokio::io::duplex(1 << 20);
            let (server_in, server_out) = tokio::io::split(server_io);
            let (transport, handle) = guard(server_in, server_out, limits);
            let (rmcp_in, rmcp_out) = tokio::io::split(transport);
            let (seen, forwarded) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = BufReader::new(rmcp_in).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = seen.send(serde_json::from_str::<Value>(&line).expect("JSON"));
                }
            });
            let (client_read, client_in) = tokio::io::split(client);
            Rig {
                client_in,
                client_out: BufReader::new(client_read).lines(),
                forwarded,
                rmcp_out,
                _handle: handle,
            }
        }

        async fn send(&mut self, message: Value) {
            let line = message.to_string() + "\n";
            self.client_in
                .write_all(line.as_bytes())
                .await
                .expect("send");
        }

        async fn call(&mut self, id: u64, tool: &str, arguments: Value) {
            self.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": tool, "arguments": arguments}}))
                .await;
        }

        /// The ids of the requests passed to rmcp since the last look: sends a marker
        /// notification and collects what arrives before it. The guard handles lines in
        /// order, so everything it could pass on by then has been passed on.
        async fn passed(&mut self) -> Vec<u64> {
            self.send(json!({"jsonrpc": "2.0", "method": "notifications/marker"}))
                .await;
            let mut ids = Vec::new();
            loop {
                let message = within("a forwarded line", self.forwarded.recv())
                    .await
                    .expect("rmcp side open");
                if message["method"] == "notifications/marker" {
                    return ids;
                }
                ids.push(message["id"].as_u64().expect("request id"));
            }
        }

        /// rmcp answers `id`; returns once the client has read that answer (so the
        /// guard has seen it go out).
        async fn answer(&mut self, id: u64) {
            let line = json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string() + "\n";
            self.rmcp_out
                .write_all(line.as_bytes())
                .await
                .expect("answer");
            loop {
                let line = within("an answer", self.client_out.next_line())
                    .await
                    .expect("read")
                    .expect("client side open");
                let message: Value = serde_json::from_str(&line).expect("JSON");
                if message["id"] == id {
                    return;
                }
            }
        }
    }

    /// A read waits for every earlier write; a write waits for earlier writes of its peer;
    /// writes of different peers and later unrelated calls go on meanwhile.
    #[tokio::test]
    async fn calls_wait_only_for_the_writes_they_depend_on() {
        let mut rig = Rig::start(Limits::default());
        rig.call(
            1,
            "register_peer",
            json!({"peer_id": "p", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
        )
        .await;
        rig.call(2, "update_peer", json!({"peer_id": "q"})).await;
        rig.call(3, "discover_peers", json!({})).await;
        rig.call(4, "update_peer", json!({"peer_id": "p"})).await;
        rig.call(5, "unregister_peer", json!({"peer_id": "r"}))
            .await;
        rig.call(6, "cleanup_expired_peers", json!({"dry_run": true}))
            .await;
        assert_eq!(rig.passed().await, [1, 2, 5]);
        rig.answer(1).await;
        assert_eq!(
            rig.passed().await,
            [4],
            "p's second write follows its first"
        );
        rig.answer(2).await;
        rig.answer(5).await;
        assert_eq!(rig.passed().await, [3], "3 came before 4, 6 after it");
        rig.answer(4).await;
        assert_eq!(rig.passed().await, [6]);
    }

    /// A whole-registry write waits for every earlier write, and every later call waits
    /// for it; a held write counts as pending for the calls after it.
    #[tokio::test]
    async fn cleanup_is_a_write_of_everything() {
        let mut rig = Rig::start(Limits::default());
        rig.call(1, "update_peer", json!({"peer_id": "p"})).await;
        rig.call(2, "cleanup_expired_peers", json!({})).await;
        rig.call(3, "update_peer", json!({"peer_id": "q"})).await;
        rig.call(4, "registry_status", json!({})).await;
        assert_eq!(rig.passed().await, [1]);
        rig.answer(1).await;
        assert_eq!(rig.passed().await, [2]);
        rig.answer(2).await;
        assert_eq!(rig.passed().await, [3]);
        rig.answer(3).await;
        assert_eq!(rig.passed().await, [4]);
    }

    /// A cancelled write stops being pending: a held one is never passed on, and the calls
    /// that waited for it go on.
    #[tokio::test]
    async fn a_cancelled_write_releases_the_calls_behind_it() {
        let mut rig = Rig::start(Limits::default());
        rig.call(1, "update_peer", json!({"peer_id": "p"})).await;
        rig.call(2, "update_peer", json!({"peer_id": "p"})).await;
        rig.call(3, "discover_peers", json!({})).await;
        assert_eq!(rig.passed().await, [1]);
        rig.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}))
            .await;
        assert_eq!(rig.passed().await, Vec::<u64>::new(), "3 still waits for 1");
        rig.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}))
            .await;
        let cancelled = within("the cancellation", rig.forwarded.recv())
            .await
            .expect("open");
        assert_eq!(cancelled["params"]["requestId"], 1, "{cancelled}");
        assert_eq!(rig.passed().await, [3]);
    }

    /// Held-open calls (a long poll) take their own slots: with room for two ordinary
    /// calls, a long poll that is never answered leaves room for a call and for the
    /// marker notification after it (were it counted, the marker would never be read).
    #[tokio::test]
    async fn held_open_calls_do_not_use_up_the_bound() {
        let mut rig = Rig::start(Limits {
            max_in_flight: 2,
            ..Limits::default()
        });
        rig.call(1, "peer_changes", json!({"wait_seconds": 50}))
            .await;
        rig.call(2, "discover_peers", json!({})).await;
        assert_eq!(rig.passed().await, [1, 2]);
    }

    /// A second request with the id of one still in flight is refused with that id.
    #[tokio::test]
    async fn an_id_in_flight_is_not_reused() {
        let mut rig = Rig::start(Limits::default());
        rig.call(1, "discover_peers", json!({})).await;
        rig.call(1, "registry_status", json!({})).await;
        assert_eq!(rig.passed().await, [1]);
        let line = within("the refusal", rig.client_out.next_line())
            .await
            .expect("read")
            .expect("open");
        let refusal: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(refusal["id"], 1, "{refusal}");
        assert_eq!(refusal["error"]["code"], -32600, "{refusal}");
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
