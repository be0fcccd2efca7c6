//! `GET /healthz`, for load balancers and probes: no token, no Host check, no peer data.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::coordinator::Coordinator;

/// 200 while the local file is usable (on, and its latest call did not fail), 503
/// otherwise; each source's state, failure count and last error, never a peer.
pub(super) async fn healthz(State(coordinator): State<Arc<Coordinator>>) -> Response {
    let status = coordinator.status();
    let local_file_usable = status
        .sources
        .iter()
        .any(|s| s.source.as_str() == "local_file" && s.enabled && !s.stats.last_call_failed);
    let sources: Vec<_> = status
        .sources
        .iter()
        .map(|s| {
            json!({
                "source": s.source.as_str(),
                "enabled": s.enabled,
                "last_call_failed": s.stats.last_call_failed,
                "failures": s.stats.failures,
                "last_error": s.stats.last_error,
            })
        })
        .collect();
    let code = if local_file_usable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"ok": local_file_usable, "sources": sources});
    (code, axum::Json(body)).into_response()
}
