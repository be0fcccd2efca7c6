//! MCP's streamable HTTP transport: one long-running server many agents connect to, on
//! rmcp's `StreamableHttpService` mounted in axum at `/mcp`, with `GET /healthz` beside it.
//!
//! Safe by default: a loopback bind unless told otherwise, and a bind that is not loopback
//! is refused without a bearer token; `Host` and `Origin` are checked against allow-lists
//! (loopback plus what is configured; rmcp answers 403); with `PEER_REGISTRY_HTTP_TOKEN`
//! set every `/mcp` request needs `Authorization: Bearer <token>` (compared in constant
//! time, never logged; 401 otherwise); request bodies are capped at 1 MiB (413); at most
//! `--http-max-sessions` sessions are open at once (503 past it) and a session idle for
//! `--http-session-idle` is closed; a plain request is held at most `--http-hold-limit`
//! and JSON-RPC errors follow the client's protocol ([`edge`]). `/healthz` needs no token
//! and reveals no peer ([`health`]).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

mod edge;
mod health;

use crate::StartError;
use crate::coordinator::Coordinator;
use crate::mcp::PeerDiscoveryServer;
use crate::serve::stdio::MAX_LINE_BYTES;

/// How long requests in flight get to finish after a stop signal.
const DRAIN: Duration = Duration::from_secs(10);

/// What the HTTP server is told at start.
pub struct HttpSettings {
    pub addr: SocketAddr,
    /// `Host` values accepted besides loopback names and the bind address.
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted besides loopback origins.
    pub allowed_origins: Vec<String>,
    /// The bearer token every `/mcp` request must carry, when set.
    pub token: Option<String>,
    /// Most sessions open at once; a new one past it is refused (503).
    pub max_sessions: usize,
    /// A session with no request for this long is closed and its memory freed.
    pub session_idle: Duration,
    /// Longest a plain request may take, first byte to last (long polls get their wait on
    /// top; subscription streams are not limited).
    pub hold_limit: Duration,
}

/// Serves MCP over streamable HTTP until `shutdown` resolves, with background cleanup
/// running meanwhile; then stops accepting, ends every session and returns. Prints
/// `listening on http://HOST:PORT/mcp` on stderr once bound (port 0 picks a free port).
pub async fn run_http(
    coordinator: Arc<Coordinator>,
    settings: HttpSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if !settings.addr.ip().is_loopback() && settings.token.is_none() {
        return Err(StartError::Serve(format!(
            "--http {} is not a loopback address: set PEER_REGISTRY_HTTP_TOKEN so that only clients with the token can use the registry",
            settings.addr
        )));
    }
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .map_err(|e| StartError::Serve(format!("cannot listen on {}: {e}", settings.addr)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Serve(format!("cannot read the bound address: {e}")))?;
    let stop = CancellationToken::new();
    let router = router(
        Arc::clone(&coordinator),
        &settings,
        bound,
        stop.child_token(),
    );
    let _background = coordinator.start_background();
    // The one line printed whatever the log level: scripts and tests read the address.
    // Not `eprintln!`, which panics when stderr is closed.
    let _ = writeln!(std::io::stderr(), "listening on http://{bound}/mcp");
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stopping_seen = Arc::clone(&stopping);
    let closing = Arc::clone(&coordinator);
    let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutdown requested; ending the HTTP sessions");
        // Held long polls answer now, empty, instead of holding the drain; their answers
        // get a moment to leave before the sessions (and their streams) are ended.
        closing.close_change_feed();
        tokio::time::sleep(Duration::from_millis(250)).await;
        stop.cancel();
        stopping.notify_one();
    });
    // Graceful, but bounded: what is in flight gets DRAIN to finish (sessions and their
    // streams end at once); a request still running after that is dropped with the process.
    tokio::select! {
        served = serving => served.map_err(|e| StartError::Serve(e.to_string())),
        () = async {
            stopping_seen.notified().await;
            tokio::time::sleep(DRAIN).await;
        } => {
            tracing::warn!("requests still running {DRAIN:?} after the stop signal are dropped");
            Ok(())
        }
    }
}

fn router(
    coordinator: Arc<Coordinator>,
    settings: &HttpSettings,
    bound: SocketAddr,
    stop: CancellationToken,
) -> Router {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1", "[::1]"]
        .map(String::from)
        .to_vec();
    if !bound.ip().is_loopback() && !bound.ip().is_unspecified() {
        hosts.push(bound.ip().to_string());
    }
    hosts.extend(settings.allowed_hosts.iter().cloned());
    let mut origins: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .flat_map(|h| [format!("http://{h}:*"), format!("https://{h}:*")])
        .collect();
    origins.extend(settings.allowed_origins.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_max_request_body_bytes(MAX_LINE_BYTES)
        .with_cancellation_token(stop);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(settings.session_idle);
    let sessions = Arc::new(sessions);
    let server_coordinator = Arc::clone(&coordinator);
    let mcp = StreamableHttpService::new(
        move || Ok(PeerDiscoveryServer::new(Arc::clone(&server_coordinator))),
        Arc::clone(&sessions),
        config,
    );
    let token: Option<Arc<[u8]>> = settings.token.as_deref().map(|t| t.as_bytes().into());
    let cap = SessionCap {
        sessions,
        max: settings.max_sessions,
    };
    let edge = edge::Edge {
        hold_limit: settings.hold_limit,
        max_body: MAX_LINE_BYTES,
    };
    // Outermost first: the token, then the session cap, then the JSON-RPC edge and the
    // hold limit, then rmcp.
    let guarded = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(edge, edge::jsonrpc_edge))
        .layer(middleware::from_fn_with_state(cap, cap_sessions))
        .layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/healthz", get(health::healthz))
        .with_state(coordinator)
        .merge(guarded)
}

/// The open sessions and how many may be open at once.
#[derive(Clone)]
struct SessionCap {
    sessions: Arc<LocalSessionManager>,
    max: usize,
}

/// 503 for a request that would open a session (one without `Mcp-Session-Id`) while
/// `max` sessions are open; requests of open sessions always pass.
async fn cap_sessions(State(cap): State<SessionCap>, request: Request, next: Next) -> Response {
    let opens_one = request.method() == axum::http::Method::POST
        && !request.headers().contains_key("mcp-session-id");
    if opens_one && cap.sessions.sessions.read().await.len() >= cap.max {
        tracing::warn!(
            max = cap.max,
            "refused a new session: the session cap is reached"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server has {} sessions open, its cap (--http-max-sessions); close one or retry later\n",
                cap.max
            ),
        )
            .into_response();
    }
    next.run(request).await
}

/// 401 unless the request carries `Authorization: Bearer <token>` (when a token is set).
async fn require_token(
    State(token): State<Option<Arc<[u8]>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if bool::from(presented.ct_eq(&token)) {
        return next.run(request).await;
    }
    let mut refused = (
        StatusCode::UNAUTHORIZED,
        "a bearer token is required: send Authorization: Bearer <the server's PEER_REGISTRY_HTTP_TOKEN>\n",
    )
        .into_response();
    refused
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    refused
}
