//! peer-discovery-mcp: an MCP server (stdio, JSON-RPC) that lets LLM agents and
//! libp2p-style nodes register themselves as peers and find each other by capability.
//!
//! # Layout
//!
//! - [`peer`]: the peer record, its validation rules and lease maths (time is an argument).
//! - [`source`]: the [`source::Source`] trait, one storage backend ("source")
//!   per module: [`source::local_file`] is the JSON file shared by every process on the
//!   machine; [`source::github`] keeps one GitHub issue per peer in a shared repository;
//!   [`source::etcd`] (feature `etcd`) keeps one key per peer on a lease in an etcd cluster.
//! - [`coordinator`]: fans each call out to the chosen sources under a timeout, merges
//!   (dedup by `peer_id`, newest `last_seen` wins), ranks, reports per-source outcomes,
//!   and cleans up expired peers in the background.
//! - [`feed`]: the change feed (who came, changed, left), written once for every source:
//!   the `peer_changes` tool, resource subscriptions and `peers watch` read it.
//! - [`mcp`]: the rmcp server; one tool per function, each a thin translation to the
//!   coordinator, with schemas cleaned for strict clients ([`mcp::schema`]).
//! - [`serve`]: the transports; [`serve::stdio`] puts a guard in front of rmcp on
//!   stdin/stdout: bounded lines, ordered calls, bounded work in flight.
//! - [`config`]: the command line (clap; every flag has an environment variable).
//! - [`cli`]: `peers list|register|unregister|status`, the command line for people: one
//!   coordinator operation, printed as a table or JSON (the only module that writes to
//!   stdout on purpose).
//! - `main.rs`: parses the command line, sets up logging on stderr, calls [`run`].
//!
//! Data flow of one call: client → stdin → rmcp → `mcp` tool (arguments validated into a
//! [`peer::Announcement`] / [`peer::Heartbeat`]) → [`coordinator::Coordinator`] → every
//! source at once → merged result → `structuredContent` + a text summary → stdout.

pub mod cli;
pub mod config;
pub mod coordinator;
pub mod feed;
pub mod mcp;
pub mod peer;
pub mod serve;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::service::QuitReason;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Options;
use crate::coordinator::{Coordinator, CoordinatorConfig, EnabledSource, system_clock};
use crate::source::{Opened, Secrets};

/// Why the server could not start. Printed as one line before exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A source that was asked for cannot be used (the message names it).
    #[error("{0}")]
    Source(String),
    #[error("cannot serve MCP: {0}")]
    Serve(String),
}

/// Opens every configured source ([`source::open_all`]) and builds the coordinator over
/// them. `secrets` come from the environment ([`source::Secrets::from_env`]).
/// Blocking (it opens files); call it inside a tokio runtime, before serving.
pub fn build_coordinator(
    options: &Options,
    secrets: Secrets,
) -> Result<Arc<Coordinator>, StartError> {
    let mut sources = Vec::new();
    let mut disabled = BTreeMap::new();
    for opened in source::open_all(&options.sources, secrets).map_err(StartError::Source)? {
        match opened {
            Opened::On {
                source,
                description,
            } => sources.push(EnabledSource {
                source,
                description,
            }),
            Opened::Off(name, why) => {
                disabled.insert(name, why);
            }
            // Reported with its built-in text (how to turn it on).
            Opened::NotConfigured(_) => {}
        }
    }
    Ok(Arc::new(Coordinator::new(
        sources,
        disabled,
        CoordinatorConfig {
            default_ttl_seconds: options.default_ttl,
            source_timeout: options.source_timeout(),
            cleanup_interval: options.cleanup_interval(),
        },
        system_clock(),
    )))
}

/// Serves MCP on `input`/`output` (stdin/stdout) until the input closes or `shutdown`
/// resolves, with background cleanup running meanwhile. Either way every call already
/// read is answered first (bounded by [`serve::stdio::DRAIN`]). Returns once every answer
/// has been written.
pub async fn run<R, W>(
    coordinator: Arc<Coordinator>,
    input: R,
    output: W,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<QuitReason, StartError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let background = coordinator.start_background();
    let (transport, mut guard) =
        serve::stdio::guard(input, output, serve::stdio::Limits::default());
    let server = mcp::PeerDiscoveryServer::new(Arc::clone(&coordinator));
    let served = async {
        let running = match server.serve(transport).await {
            Ok(running) => running,
            // The client left before initializing (stdin closed): a normal end.
            Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => {
                return Ok(QuitReason::Closed);
            }
            Err(e) => return Err(StartError::Serve(e.to_string())),
        };
        let waiting = running.waiting();
        tokio::pin!(waiting);
        tokio::select! {
            reason = &mut waiting => reason.map_err(|e| StartError::Serve(e.to_string())),
            () = shutdown => {
                // As at EOF: read no more requests, answer every call already read (the
                // guard closes rmcp's input once they are answered, or after its drain
                // time), then stop.
                tracing::info!("shutdown requested; finishing the calls already read");
                coordinator.close_change_feed();
                guard.stop_reading();
                let _ = waiting.await;
                Ok(QuitReason::Cancelled)
            }
        }
    };
    let quit = served.await;
    drop(background);
    guard.finish().await;
    quit
}

/// The one policy for poisoned locks in this crate: go on with the data. Every mutex here
/// guards state that is whole between statements (counters, caches, queues, notices), and a
/// panic in one call must not stop every later call of a long-running server.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
