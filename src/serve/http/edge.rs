//! The JSON-RPC edge of `/mcp` and the hold limit, as one axum layer in front of rmcp.
//!
//! For each `POST` it reads the body (capped, and within the hold limit: a client that
//! trickles its body is cut with 408), checks it as the stdio guard does
//! ([`crate::serve::jsonrpc::check_message`]: what is not JSON or not a JSON-RPC message
//! gets a JSON-RPC error body, 400, instead of rmcp's plain-text 415), and writes an error
//! whose request id could not be read by the rule of the client's protocol
//! (`MCP-Protocol-Version`: up to 2025-11-25 and when absent `"id": null`, from 2026-07-28
//! no `id`), rmcp's own such errors included.
//!
//! The hold limit bounds a plain request from its first byte to the last byte of its
//! answer: an answer not started by then is a JSON-RPC error for that request, a streamed
//! answer ends there. A `peer_changes` long poll gets its `wait_seconds` on top and a
//! `subscriptions/listen` stream is not limited ([`holds_open`]); `GET` (the session's
//! stream) and `DELETE` pass untouched. So no client, slow or silent, pins a task or an
//! answer's memory for longer than the limit.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use crate::serve::jsonrpc::{UnknownId, check_message, error_message, holds_open, restore_null_id};

/// The JSON-RPC code of a request cut by the hold limit (implementation-defined range).
pub const HELD_TOO_LONG: i64 = -32001;

/// Longest wait a `peer_changes` long poll may ask for, in seconds.
const MAX_WAIT_SECONDS: f64 = 50.0;

/// Largest error body of rmcp's that is read to restore `"id": null`.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub(super) struct Edge {
    /// Longest a plain request may take, first byte to last.
    pub hold_limit: Duration,
    /// Largest request body.
    pub max_body: usize,
}

/// How long a request may be held.
enum Hold {
    /// Until the hold limit.
    Plain,
    /// The hold limit plus a long poll's wait.
    Wait(Duration),
    /// A stream meant to stay open (it ends with its session).
    Open,
}

fn hold_of(message: &Value) -> Hold {
    if !holds_open(message) {
        return Hold::Plain;
    }
    match message
        .pointer("/params/arguments/wait_seconds")
        .and_then(Value::as_f64)
    {
        Some(wait) => Hold::Wait(Duration::from_secs_f64(wait.clamp(0.0, MAX_WAIT_SECONDS))),
        None => Hold::Open,
    }
}

pub(super) async fn jsonrpc_edge(
    State(edge): State<Edge>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST || !is_json(request.headers()) {
        // GET opens the session's stream and DELETE ends a session; a body that is not
        // JSON gets rmcp's own 415.
        return next.run(request).await;
    }
    let started = Instant::now();
    let rule = UnknownId::of_version(
        request
            .headers()
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok()),
    );
    let (parts, body) = request.into_parts();
    let deadline = started + edge.hold_limit;
    let bytes = match timeout_at(deadline, Limited::new(body, edge.max_body).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            tracing::warn!(
                limit = edge.max_body,
                "refused a request body over the size limit"
            );
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over the limit of {} bytes\n",
                    edge.max_body
                ),
            );
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "a request body could not be read");
            return plain(
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n".into(),
            );
        }
        Err(_) => {
            tracing::warn!(limit = ?edge.hold_limit, "cut a request whose body did not arrive within the hold limit");
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within the hold limit ({} s)\n",
                    edge.hold_limit.as_secs()
                ),
            );
        }
    };
    let message = match check_message(&bytes) {
        Ok(message) => message,
        Err(refusal) => return json(StatusCode::BAD_REQUEST, &refusal.to_json(rule)),
    };
    let until = match hold_of(&message) {
        Hold::Plain => deadline,
        Hold::Wait(wait) => deadline + wait,
        Hold::Open => {
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        }
    };
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let response = match timeout_at(
        until,
        next.run(Request::from_parts(parts, Body::from(bytes))),
    )
    .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit = ?edge.hold_limit, "cut a request held past the hold limit");
            let message = held_too_long(edge.hold_limit);
            return json(
                StatusCode::OK,
                &error_message(id, HELD_TOO_LONG, &message, rule),
            );
        }
    };
    let response = restore_unknown_id(response, rule).await;
    // A streamed answer ends at the deadline, whether or not the client reads it; an
    // event stream whose answer had not come gets the same error as its last event.
    let (parts, body) = response.into_parts();
    let last_event = is_event_stream(&parts.headers).then(|| {
        let error = error_message(id, HELD_TOO_LONG, &held_too_long(edge.hold_limit), rule);
        Bytes::from(format!("data: {error}\n\n"))
    });
    let stream = Box::pin(body.into_data_stream());
    let deadline = Box::pin(tokio::time::sleep_until(until));
    let cut = futures::stream::unfold(Some((stream, deadline, last_event)), |state| async move {
        let (mut stream, mut deadline, last_event) = state?;
        tokio::select! {
            item = stream.next() => {
                let item = item?;
                Some((item, Some((stream, deadline, last_event))))
            }
            () = &mut deadline => {
                tracing::warn!("cut a streamed answer held past the hold limit");
                last_event.map(|event| (Ok(event), None))
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(cut))
}

fn held_too_long(limit: Duration) -> String {
    format!(
        "the request took longer than the server's hold limit ({} s) and its answer was cut; a change it asked for may still complete: check with discover_peers",
        limit.as_secs()
    )
}

fn is_event_stream(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// rmcp's own refusals (400 with a JSON-RPC error) omit an id they could not read; a
/// client of an older protocol gets `"id": null` instead.
async fn restore_unknown_id(response: Response, rule: UnknownId) -> Response {
    if rule == UnknownId::Omitted
        || !response.status().is_client_error()
        || !is_json(response.headers())
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(collected) = Limited::new(body, MAX_ERROR_BODY).collect().await else {
        return plain(StatusCode::BAD_REQUEST, "invalid request\n".into());
    };
    let mut bytes = collected.to_bytes();
    if let Ok(mut message) = serde_json::from_slice::<Value>(&bytes)
        && restore_null_id(&mut message, rule)
    {
        parts.headers.remove(header::CONTENT_LENGTH);
        bytes = Bytes::from(message.to_string());
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
        })
}

fn json(status: StatusCode, message: &Value) -> Response {
    let mut response = (status, message.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, text).into_response()
}
