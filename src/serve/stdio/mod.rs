//! A guard in front of the MCP transport: it reads stdin line by line with a hard cap on
//! line length, answers what rmcp would silently drop, orders calls that depend on each
//! other, bounds the work in flight, and passes everything else on.
//!
//! rmcp ignores a line that is not JSON (the client then waits forever), buffers a line of
//! any length up to 16 MiB, spawns a task per request with no cap, and runs requests in
//! whatever order its tasks finish. Here:
//! - a line that is not JSON (or that rmcp's parser would refuse: numbers out of range)
//!   gets `-32700 Parse error` with `"id": null`, as JSON-RPC 2.0 says (an id is never
//!   guessed from text that did not parse); a message nested deeper than [`crate::serve::jsonrpc::MAX_DEPTH`]
//!   or whose envelope is malformed (an id that is neither a string nor an integer...)
//!   gets `-32600` carrying its id when it can be read, else `"id": null`;
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

mod lines;
mod order;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::serve::jsonrpc::{Negotiated, UnknownId, error_message, restore_null_id, top_level_id};
use lines::{Line, check_line, json_line, read_bounded_line};
use order::{Access, IdKey, Order, response_id};

/// Longest request line accepted: ample for any valid call (metadata stops at 4 KiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

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
    let negotiated = Negotiated::default();

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
    let answers_negotiated = negotiated.clone();
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
                    fix_unknown_id(&mut line, &answers_negotiated);
                    // Once the client is gone, keep draining rmcp so that it is never
                    // blocked on a pipe nobody reads.
                    if !client_gone && answers_out.send(line).await.is_err() {
                        client_gone = true;
                    }
                }
            }
        }
    });

    let reader = tokio::spawn(read_requests(
        input,
        limits.max_line,
        negotiated.clone(),
        lines,
    ));
    let dispatcher = tokio::spawn(dispatch(
        incoming,
        answers,
        stopped,
        to_rmcp,
        out,
        negotiated,
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
    negotiated: Negotiated,
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
                check_line(line, &negotiated)
            }
            Ok(Line::TooLong { head, length }) => {
                tracing::warn!(length, "refused a request line over the size limit");
                let id = top_level_id(&head).unwrap_or(Value::Null);
                let message = format!(
                    "request too large: the line is {length} bytes; the limit is {max_line}"
                );
                let error = error_message(id, -32600, &message, negotiated.unknown_id());
                Incoming::Refused(json_line(&error))
            }
        };
        if lines.send(incoming).await.is_err() {
            break; // the dispatcher stopped reading (a shutdown signal)
        }
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
    negotiated: Negotiated,
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
                            let error =
                                error_message(raw_id, -32600, &message, negotiated.unknown_id());
                            let _ = out.send(json_line(&error)).await;
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

/// An error rmcp wrote without an `id` (it follows MCP 2026-07-28, which omits an id it
/// could not read) gets `"id": null` when the client speaks an older protocol. rmcp writes
/// an error's members in the order `jsonrpc`, `id`, `error`, so only a line that starts
/// `{"jsonrpc":"2.0","error"` lacks its id: every other answer is passed on after one
/// prefix comparison, whatever its size.
fn fix_unknown_id(line: &mut Vec<u8>, negotiated: &Negotiated) {
    const IDLESS_ERROR: &[u8] = br#"{"jsonrpc":"2.0","error""#;
    if negotiated.unknown_id() != UnknownId::Null || !line.starts_with(IDLESS_ERROR) {
        return;
    }
    if let Ok(mut message) = serde_json::from_slice::<Value>(line)
        && restore_null_id(&mut message, UnknownId::Null)
    {
        *line = json_line(&message);
    }
}
