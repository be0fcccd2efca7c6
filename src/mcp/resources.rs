//! The peers as MCP resources, with change notifications for subscribers of both
//! protocol generations.
//!
//! - `peers://all`: what `discover_peers` with `max_peers` 1000 answers;
//! - `peers://capability/{name}`: the same with `capability_filter: [name]`;
//! - `peers://peer/{peer_id}`: that peer's record with its lease and holders, as the
//!   change feed last observed it (an unknown peer is MCP's resource-not-found error).
//!
//! A subscribed resource gets `notifications/resources/updated` when a change-feed event
//! touches it ([`touched`]): up to protocol 2025-11-25 through `resources/subscribe`
//! ([`Subscriptions`], one set per connection), from 2026-07-28 through
//! `subscriptions/listen` ([`listen`]). Lease renewals are not events, so a heartbeat does
//! not notify.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ResourceUpdatedNotificationParam,
};
use rmcp::service::{Peer, SubscriptionContext};
use rmcp::{ErrorData, RoleServer};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::coordinator::{Coordinator, DiscoverQuery, MAX_DISCOVER_PEERS};
use crate::feed::Event;

const ALL: &str = "peers://all";
const CAPABILITY: &str = "peers://capability/";
const PEER: &str = "peers://peer/";

/// One of this server's resources.
enum PeersResource {
    All,
    Capability(String),
    Peer(String),
}

impl PeersResource {
    /// The resource `uri` names; a capability or peer id that breaks the record's rules
    /// names none (no event could ever touch it).
    fn parse(uri: &str) -> Option<PeersResource> {
        if uri == ALL {
            return Some(PeersResource::All);
        }
        if let Some(name) = uri.strip_prefix(CAPABILITY) {
            let normalized = crate::peer::normalize_capabilities(&[name.to_owned()]).ok()?;
            return (normalized.len() == 1 && normalized[0] == name)
                .then(|| PeersResource::Capability(name.to_owned()));
        }
        let id = uri.strip_prefix(PEER)?;
        crate::peer::PeerId::new(id).ok()?;
        Some(PeersResource::Peer(id.to_owned()))
    }
}

/// Whether `uri` names one of this server's resources.
pub(super) fn is_ours(uri: &str) -> bool {
    PeersResource::parse(uri).is_some()
}

fn unknown_uri(uri: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "`{}` is not a resource of this server; it has {ALL}, {CAPABILITY}{{name}} and {PEER}{{peer_id}}",
            crate::mcp::text::escape_prose(uri)
        ),
        None,
    )
}

pub(super) fn list() -> ListResourcesResult {
    ListResourcesResult::with_all_items(vec![
        Resource::new(ALL, "all peers")
            .with_description(format!(
                "Every live peer, newest first (what discover_peers with max_peers {MAX_DISCOVER_PEERS} answers). Subscribe to hear when peers come, change or go."
            ))
            .with_mime_type("application/json"),
    ])
}

pub(super) fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new(format!("{CAPABILITY}{{name}}"), "peers with a capability")
            .with_description("The live peers that announce this capability, newest first.")
            .with_mime_type("application/json"),
        ResourceTemplate::new(format!("{PEER}{{peer_id}}"), "one peer")
            .with_description("One peer's record, with its lease and the sources holding it.")
            .with_mime_type("application/json"),
    ])
}

fn json_contents(
    uri: &str,
    value: &impl serde::Serialize,
) -> Result<ReadResourceResult, ErrorData> {
    let text = serde_json::to_string(value)
        .map_err(|e| ErrorData::internal_error(format!("encoding {uri}: {e}"), None))?;
    Ok(ReadResourceResult::new(vec![
        ResourceContents::TextResourceContents {
            uri: uri.to_owned(),
            mime_type: Some("application/json".into()),
            text,
            meta: None,
        },
    ]))
}

pub(super) async fn read(
    coordinator: &Coordinator,
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    let capabilities = match PeersResource::parse(uri).ok_or_else(|| unknown_uri(uri))? {
        PeersResource::Peer(peer_id) => {
            let feed = coordinator.change_feed().await;
            return match feed.peer(&peer_id) {
                Some(peer) => json_contents(uri, &peer),
                None => Err(ErrorData::resource_not_found(
                    format!(
                        "no live peer `{}`; discover_peers lists the peers there are",
                        crate::mcp::text::escape_prose(&peer_id)
                    ),
                    None,
                )),
            };
        }
        PeersResource::All => Vec::new(),
        PeersResource::Capability(name) => vec![name],
    };
    let query = DiscoverQuery::new(&capabilities, Some(MAX_DISCOVER_PEERS), false)
        .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
    let found = coordinator
        .discover(&query, None, &crate::source::Progress::default())
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    json_contents(uri, &found)
}

/// The resources an event touches: all peers, the peer's own, and each capability it
/// had before or has after.
pub(crate) fn touched(event: &Event) -> BTreeSet<String> {
    let mut uris = BTreeSet::from([ALL.to_owned(), format!("{PEER}{}", event.peer_id)]);
    uris.extend(event.capabilities().map(|c| format!("{CAPABILITY}{c}")));
    uris
}

/// The `resources/subscribe` subscriptions of one connection (protocol up to 2025-11-25)
/// and the task that notifies them; the task stops when the connection's server goes.
#[derive(Default)]
pub(super) struct Subscriptions {
    state: Mutex<SubscriptionState>,
}

#[derive(Default)]
struct SubscriptionState {
    uris: BTreeSet<String>,
    forwarder: Option<JoinHandle<()>>,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if let Some(task) = crate::lock(&self.state).forwarder.take() {
            task.abort();
        }
    }
}

impl Subscriptions {
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        coordinator: &Coordinator,
        uri: String,
        peer: Peer<RoleServer>,
    ) -> Result<(), ErrorData> {
        PeersResource::parse(&uri).ok_or_else(|| unknown_uri(&uri))?;
        {
            let mut state = crate::lock(&self.state);
            state.uris.insert(uri);
            if state.forwarder.is_none() {
                // Subscribed before the feed may still be starting: nothing after this
                // answer is missed.
                let events = coordinator.change_feed_now().subscribe();
                state.forwarder = Some(tokio::spawn(forward(Arc::downgrade(self), events, peer)));
            }
        }
        coordinator.change_feed().await;
        Ok(())
    }

    /// Removes `uri`; with none left, the notifying task stops (a new subscribe starts
    /// another).
    pub(super) fn unsubscribe(&self, uri: &str) {
        let mut state = crate::lock(&self.state);
        state.uris.remove(uri);
        if state.uris.is_empty()
            && let Some(task) = state.forwarder.take()
        {
            task.abort();
        }
    }

    fn subscribed(&self) -> BTreeSet<String> {
        crate::lock(&self.state).uris.clone()
    }
}

/// Notifies the connection's subscribed resources that an event touches; a subscriber
/// that fell behind hears about every resource it subscribed to.
async fn forward(
    subscriptions: Weak<Subscriptions>,
    mut events: tokio::sync::broadcast::Receiver<Arc<Event>>,
    peer: Peer<RoleServer>,
) {
    loop {
        let received = events.recv().await;
        let Some(subscriptions) = subscriptions.upgrade() else {
            return;
        };
        let subscribed = subscriptions.subscribed();
        drop(subscriptions);
        let due: Vec<String> = match received {
            Ok(event) => touched(&event).intersection(&subscribed).cloned().collect(),
            Err(RecvError::Lagged(_)) => subscribed.into_iter().collect(),
            Err(RecvError::Closed) => return,
        };
        for uri in due {
            let param = ResourceUpdatedNotificationParam::new(uri);
            if peer.notify_resource_updated(param).await.is_err() {
                return; // the client is gone
            }
        }
    }
}

/// Runs one `subscriptions/listen` stream (protocol 2026-07-28) until it is cancelled,
/// on `events`, a subscription to the feed taken before the stream was acknowledged (see
/// [`ListenReceivers`]).
pub(super) async fn listen(
    coordinator: &Coordinator,
    context: SubscriptionContext,
    mut events: tokio::sync::broadcast::Receiver<Arc<Event>>,
) -> Result<(), ErrorData> {
    let accepted: BTreeSet<String> = context
        .accepted()
        .resource_subscriptions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    coordinator.change_feed().await;
    loop {
        let received = tokio::select! {
            () = context.cancelled() => return Ok(()),
            received = events.recv() => received,
        };
        let due: Vec<String> = match received {
            Ok(event) => touched(&event).intersection(&accepted).cloned().collect(),
            Err(RecvError::Lagged(_)) => accepted.iter().cloned().collect(),
            Err(RecvError::Closed) => return Ok(()),
        };
        for uri in due {
            if context.sink().notify_resource_updated(uri).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Subscriptions to the feed taken when a `subscriptions/listen` stream is accepted, before
/// rmcp acknowledges it, for the stream to take up when rmcp calls `listen`: a write the
/// client makes as soon as it sees the acknowledgment is then an event of the stream. Any
/// receiver serves any stream (they differ only by when they were taken).
#[derive(Default)]
pub(super) struct ListenReceivers {
    waiting: Mutex<Vec<tokio::sync::broadcast::Receiver<Arc<Event>>>>,
}

impl ListenReceivers {
    pub(super) fn take_one_now(&self, coordinator: &Coordinator) {
        let events = coordinator.change_feed_now().subscribe();
        crate::lock(&self.waiting).push(events);
    }

    pub(super) fn hand_over(
        &self,
        coordinator: &Coordinator,
    ) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        crate::lock(&self.waiting)
            .pop()
            .unwrap_or_else(|| coordinator.change_feed_now().subscribe())
    }
}
