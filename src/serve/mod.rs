//! Transports: how MCP messages reach the server. Each sits beside the others and hands
//! calls to the same [`crate::mcp::PeerDiscoveryServer`].
//!
//! - [`stdio`]: one client on stdin/stdout (what MCP clients start), behind a guard that
//!   bounds lines, orders dependent calls and bounds the work in flight.
//! - [`http`]: MCP's streamable HTTP transport, one server for many clients, with its
//!   security checks (Host, Origin, bearer token, body cap, idle sessions).
//! - [`jsonrpc`]: the JSON-RPC edge both share: what rmcp would drop unanswered, and how
//!   an error whose id could not be read is written for each protocol generation.

pub mod http;
pub mod jsonrpc;
pub mod stdio;

/// Resolves on SIGTERM or SIGINT (Ctrl-C), for the servers and `peers watch`. The
/// handlers are installed when this is called, not when the future is first polled, so
/// a signal that arrives as soon as the server says it is listening is not lost (its
/// default action would kill the process). Call it inside the runtime.
pub fn terminated() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
