//! The source: its operations on the key layout, under guarded transactions.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::client::{Connection, Failure, MAX_MESSAGE_BYTES, Retry};
use super::keys::{Layout, decode, encode};
use super::view::{self, Table, View};
use crate::peer::{PeerFilter, PeerRecord};
use crate::source::{
    Abilities, Commitment, Decide, Decision, Listing, Modified, Progress, Source, SourceError,
    SourceName,
};

const SOURCE: SourceName = SourceName::ETCD;
/// Read-decide-write rounds one change may take while other writers keep changing the
/// same peer before it gives up (each lost round means another writer's change landed).
const MAX_ROUNDS: usize = 20;
/// Stripes of the in-process lock that lets one change of a peer at a time through, so
/// this process's own writers do not lose compares to each other.
const TURN_STRIPES: usize = 64;

/// Everything the source needs, but the credentials.
pub struct EtcdSettings {
    /// `http://HOST:PORT` or `https://HOST:PORT`, checked by the options.
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Timeout of one request, and of connecting to one member.
    pub request_timeout: Duration,
}

pub struct EtcdSource {
    layout: Layout,
    connection: Arc<Connection>,
    view: Arc<View>,
    /// The task that keeps the view current, started on first use, stopped with the source.
    informer: OnceLock<AbortOnDrop>,
    /// The revision of this source's last write: a scan answers from the view only once
    /// the view has applied it (read-your-writes).
    last_written: AtomicI64,
    turns: Box<[tokio::sync::Mutex<()>]>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The record key of one peer as read: its record (when it is one this source serves),
/// and what the guard of the next write compares.
struct Held {
    record: Option<PeerRecord>,
    /// 0 when there is no key.
    mod_revision: i64,
    /// 0 when the key has no lease (or there is no key).
    lease: i64,
    /// Read from the watch-kept view, which may trail etcd: good for a guarded write to
    /// build on (a stale copy only loses the compare), not for an answer without one.
    from_view: bool,
}

impl Held {
    fn exists(&self) -> bool {
        self.mod_revision > 0
    }
}

/// A lease granted for a write, kept across lost rounds when the TTL stays the same.
#[derive(Clone, Copy)]
struct Granted {
    id: i64,
    asked: i64,
    ttl: i64,
}

/// How one round ended.
enum Round {
    Done(Box<Modified>),
    /// Someone else changed the peer between the read and the write: read again.
    Lost,
    /// A round built on the view ended without a write (nothing to do, nothing held):
    /// an answer only etcd can give, so the round is done again from etcd.
    Unconfirmed,
}

impl EtcdSource {
    /// The source over `settings.endpoints`; connects on first use. `credentials` (user,
    /// password) come from the environment.
    pub fn new(settings: EtcdSettings, credentials: Option<(String, String)>) -> Self {
        EtcdSource {
            layout: Layout::new(&settings.prefix),
            connection: Arc::new(Connection::new(
                settings.endpoints,
                settings.request_timeout,
                credentials,
            )),
            view: Arc::new(View::new(Layout::new(&settings.prefix))),
            informer: OnceLock::new(),
            last_written: AtomicI64::new(0),
            turns: (0..TURN_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "keys under `{}` in etcd at {}",
            self.layout.prefix(),
            self.connection.endpoints().join(", ")
        )
    }

    /// Starts the task that keeps the view current, once (needs a tokio runtime; without
    /// one, the next call that has one starts it).
    fn start_view(&self) {
        if self.informer.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.informer.get_or_init(|| {
            let task =
                runtime.spawn(Arc::clone(&self.view).keep_current(Arc::clone(&self.connection)));
            AbortOnDrop(task.abort_handle())
        });
    }

    /// How long a scan waits for the view to catch up before reading etcd directly.
    fn view_wait(&self) -> Duration {
        self.connection.request_timeout() * 3
    }

    fn turn(&self, peer_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        peer_id.hash(&mut hasher);
        &self.turns[hasher.finish() as usize % self.turns.len()]
    }

    fn wrote(&self, revision: i64) {
        self.last_written.fetch_max(revision, Ordering::AcqRel);
    }

    async fn read(&self, peer_id: &str) -> Result<Held, SourceError> {
        let key = self.layout.peer(peer_id);
        let answer = self
            .connection
            .call(Retry::Reads, |client| {
                let key = key.clone();
                async move {
                    client
                        .kv_client()
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .get(key, None)
                        .await
                }
            })
            .await
            .map_err(|f| f.error)?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(Held {
                record: None,
                mod_revision: 0,
                lease: 0,
                from_view: false,
            });
        };
        let record = match decode(peer_id, kv.value()) {
            Ok(record) => Some(record),
            Err(why) => {
                tracing::warn!(
                    peer_id,
                    "etcd holds a record this source does not serve: {why}"
                );
                None
            }
        };
        Ok(Held {
            record,
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
            from_view: false,
        })
    }

    /// The copy a round starts from: the view's when `trust_view` and it can say (no
    /// round trip: heartbeats are mostly this), else etcd's.
    async fn held(&self, peer_id: &str, trust_view: bool) -> Result<Held, SourceError> {
        if trust_view && let Some(copy) = self.view.held(peer_id) {
            let (record, mod_revision, lease) = match copy {
                Some((record, mod_revision, lease)) => (Some(record), mod_revision, lease),
                None => (None, 0, 0),
            };
            return Ok(Held {
                record,
                mod_revision,
                lease,
                from_view: true,
            });
        }
        self.read(peer_id).await
    }

    /// Renews `lease` to its full TTL: that TTL, or 0 when the lease is gone.
    /// etcd-client's `lease_keep_alive` sends one keepalive and reads its answer (an error
    /// for a lease that is gone) but keeps the TTL to itself: a second keepalive on the
    /// same stream (no raft write either) says it.
    async fn renew(&self, lease: i64) -> Result<i64, SourceError> {
        let timeout = self.connection.request_timeout();
        self.connection
            .call(Retry::Reads, |mut client| async move {
                let (mut keeper, mut replies) = match client.lease_keep_alive(lease).await {
                    Ok(stream) => stream,
                    Err(etcd_client::Error::LeaseKeepAliveError(why))
                        if why.contains("not found") =>
                    {
                        return Ok(0);
                    }
                    Err(e) => return Err(e),
                };
                keeper.keep_alive().await?;
                match tokio::time::timeout(timeout, replies.message()).await {
                    Ok(Ok(Some(reply))) => Ok(reply.ttl().max(0)),
                    Ok(Ok(None)) => Ok(0),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(etcd_client::Error::GRpcStatus(
                        tonic::Status::deadline_exceeded("no answer to a lease keepalive"),
                    )),
                }
            })
            .await
            .map_err(|f| f.error)
    }

    async fn grant(&self, ttl: i64) -> Result<Granted, SourceError> {
        let granted = self
            .connection
            .call(Retry::UnsentOnly, |mut client| async move {
                client.lease_grant(ttl, None).await
            })
            .await
            .map_err(|f| f.error)?;
        Ok(Granted {
            id: granted.id(),
            asked: ttl,
            // etcd raises short leases to its minimum (2 s at default timings).
            ttl: granted.ttl().max(ttl),
        })
    }

    /// Revokes a lease no key needs any more; a failure only delays its end to its TTL.
    async fn revoke(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        let revoked = self
            .connection
            .call(Retry::UnsentOnly, |mut client| async move {
                client.lease_revoke(lease).await
            })
            .await;
        match revoked {
            Ok(_)
            | Err(Failure {
                error: SourceError::NotFound(_),
                ..
            }) => {}
            Err(f) => tracing::debug!(
                lease,
                "etcd lease not revoked (it ends by itself): {}",
                f.error
            ),
        }
    }

    /// Sends a guarded transaction; Ok(None) when its guard failed. A failure that may
    /// have been applied (a timeout, a connection lost mid-call) is checked by reading the
    /// key again: `landed` says whether what is there now is this transaction's doing.
    async fn send(
        &self,
        peer_id: &str,
        txn: Txn,
        landed: impl Fn(&Held) -> bool,
    ) -> Result<Option<i64>, SourceError> {
        let sent = self
            .connection
            .call(Retry::UnsentOnly, |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await;
        match sent {
            Ok(answer) if answer.succeeded() => {
                Ok(Some(answer.header().map_or(0, |h| h.revision())))
            }
            Ok(_) => Ok(None),
            Err(failure) if failure.ambiguous => match self.read(peer_id).await {
                Ok(now) if landed(&now) => {
                    tracing::info!(peer_id, "an etcd write whose answer was lost had landed");
                    Ok(Some(now.mod_revision))
                }
                _ => Err(failure.error),
            },
            Err(failure) => Err(failure.error),
        }
    }

    /// One read-decide-write round.
    async fn round(
        &self,
        peer_id: &str,
        decide: &Decide,
        lease: &mut Option<Granted>,
        trust_view: bool,
    ) -> Result<Round, SourceError> {
        let held = self.held(peer_id, trust_view).await?;
        let key = self.layout.peer(peer_id);
        let guard = if held.exists() {
            Compare::mod_revision(key.clone(), CompareOp::Equal, held.mod_revision)
        } else {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        };
        let location = |revision: i64| Some(format!("etcd revision {revision}"));
        let before = held.record.clone();
        match decide(before.as_ref()) {
            Decision::Keep | Decision::Remove if held.from_view && !held.exists() => {
                Ok(Round::Unconfirmed)
            }
            Decision::Keep if held.from_view => Ok(Round::Unconfirmed),
            Decision::Keep => Ok(Round::Done(Box::new(Modified {
                after: before.clone(),
                before,
                written: false,
                location: held.exists().then(|| location(held.mod_revision)).flatten(),
            }))),
            Decision::Remove if !held.exists() => Ok(Round::Done(Box::new(Modified {
                before,
                after: None,
                written: false,
                location: None,
            }))),
            Decision::Remove => {
                take_the_change()?;
                let mut removals = vec![TxnOp::delete(key, None)];
                for capability in before.iter().flat_map(|r| &r.capabilities) {
                    removals.push(TxnOp::delete(
                        self.layout.capability(capability, peer_id),
                        None,
                    ));
                }
                let txn = Txn::new().when([guard]).and_then(removals);
                let Some(revision) = self.send(peer_id, txn, |now| !now.exists()).await? else {
                    return Ok(Round::Lost);
                };
                self.wrote(revision);
                // Index keys someone else put on the lease go with it.
                self.revoke(held.lease).await;
                Ok(Round::Done(Box::new(Modified {
                    before,
                    after: None,
                    written: true,
                    location: location(revision),
                })))
            }
            Decision::Write(mut record) => {
                record.source = SOURCE.as_str().to_owned();
                take_the_change()?;
                // A heartbeat that changes neither the TTL nor the capabilities renews the
                // peer's lease (no raft write) and rewrites the record on it: the index
                // keys on the lease stay as they are. A lease of another length (put by
                // another tool) is replaced by a fresh one below.
                let renewable = held.lease != 0
                    && before.as_ref().is_some_and(|b| {
                        b.ttl_seconds == record.ttl_seconds && b.capabilities == record.capabilities
                    });
                let same_length = i64::try_from(record.ttl_seconds).unwrap_or(0);
                if renewable && self.renew(held.lease).await? == same_length {
                    let value = encode(&record)?;
                    let on_lease = PutOptions::new().with_lease(held.lease);
                    let txn = Txn::new().when([guard]).and_then([TxnOp::put(
                        key,
                        value.clone(),
                        Some(on_lease),
                    )]);
                    let landed = |now: &Held| now.lease == held.lease && same_value(now, &value);
                    let sent = match self.send(peer_id, txn, landed).await {
                        // The lease ended between the renewal and the write.
                        Err(SourceError::NotFound(_)) => return Ok(Round::Lost),
                        other => other?,
                    };
                    let Some(revision) = sent else {
                        return Ok(Round::Lost);
                    };
                    self.wrote(revision);
                    return Ok(Round::Done(Box::new(Modified {
                        before,
                        after: Some(record),
                        written: true,
                        location: location(revision),
                    })));
                }
                let asked = i64::try_from(record.ttl_seconds).unwrap_or(i64::MAX);
                let granted = match *lease {
                    Some(granted) if granted.asked == asked => granted,
                    other => {
                        if let Some(unused) = other {
                            self.revoke(unused.id).await;
                        }
                        let granted = self.grant(asked).await?;
                        *lease = Some(granted);
                        granted
                    }
                };
                // `expires_at` says what etcd will do: a lease it raised to its minimum.
                record.ttl_seconds = u64::try_from(granted.ttl).unwrap_or(record.ttl_seconds);
                let value = encode(&record)?;
                let on_lease = PutOptions::new().with_lease(granted.id);
                let mut writes = vec![TxnOp::put(key, value.clone(), Some(on_lease.clone()))];
                for capability in &record.capabilities {
                    writes.push(TxnOp::put(
                        self.layout.capability(capability, peer_id),
                        "",
                        Some(on_lease.clone()),
                    ));
                }
                let dropped = before
                    .iter()
                    .flat_map(|r| &r.capabilities)
                    .filter(|c| !record.capabilities.contains(c));
                for capability in dropped {
                    writes.push(TxnOp::delete(
                        self.layout.capability(capability, peer_id),
                        None,
                    ));
                }
                let txn = Txn::new().when([guard]).and_then(writes);
                let landed = |now: &Held| now.lease == granted.id && same_value(now, &value);
                let sent = match self.send(peer_id, txn, landed).await {
                    Err(SourceError::NotFound(why)) => {
                        // The lease ended before the write (a short TTL and a slow round):
                        // the next round gets a fresh one.
                        tracing::debug!(peer_id, "etcd lease gone before the write: {why}");
                        *lease = None;
                        return Ok(Round::Lost);
                    }
                    other => other?,
                };
                let Some(revision) = sent else {
                    return Ok(Round::Lost);
                };
                *lease = None;
                self.wrote(revision);
                if held.lease != granted.id {
                    self.revoke(held.lease).await;
                }
                Ok(Round::Done(Box::new(Modified {
                    before,
                    after: Some(record),
                    written: true,
                    location: location(revision),
                })))
            }
        }
    }

    /// Every record key, read from etcd (not the view), with what a guarded removal needs.
    async fn list_direct(&self) -> Result<(Vec<view::Stored>, i64), SourceError> {
        view::list(&self.connection, &self.layout).await
    }
}

/// Whether the copy read holds exactly `value` (a write whose answer was lost landed).
fn same_value(held: &Held, value: &str) -> bool {
    held.record
        .as_ref()
        .and_then(|r| encode(r).ok())
        .is_some_and(|v| v == value)
}

/// Takes the caller's change before the first write request is sent: from here on the
/// coordinator waits for the answer (bounded by the request timeouts) instead of giving
/// up, so no answer says `timeout` for a write that lands. A change the caller has
/// already given up on is never sent.
fn take_the_change() -> Result<(), SourceError> {
    if Commitment::current().take() {
        Ok(())
    } else {
        Err(SourceError::Withdrawn {
            after: Duration::ZERO,
            waiting_on: "the caller gave up before the write was sent to etcd".into(),
        })
    }
}

#[async_trait]
impl Source for EtcdSource {
    fn name(&self) -> SourceName {
        SOURCE
    }

    /// Leases end records by themselves: cleanup has nothing to do here.
    fn abilities(&self) -> Abilities {
        Abilities {
            expires_by_itself: true,
            ..Abilities::default()
        }
    }

    async fn modify(&self, peer_id: &str, decide: Decide) -> Result<Modified, SourceError> {
        let turn = self.turn(peer_id);
        let _turn = match turn.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                // Said to the caller if it gives up meanwhile: the change is withdrawn.
                Commitment::current().set_waiting_on(format!(
                    "another change of a peer in the same lock stripe as `{peer_id}` in this server"
                ));
                turn.lock().await
            }
        };
        let mut lease = None;
        let mut result = Err(SourceError::Remote(format!(
            "peer `{peer_id}` kept changing in etcd through {MAX_ROUNDS} attempts; try again"
        )));
        // The first round builds on the view; a lost or unconfirmed one reads etcd.
        let mut trust_view = true;
        for round in 0..MAX_ROUNDS {
            let this_round = self.round(peer_id, &decide, &mut lease, trust_view).await;
            trust_view = false;
            match this_round {
                Ok(Round::Done(modified)) => {
                    result = Ok(*modified);
                    break;
                }
                Ok(Round::Unconfirmed) => {}
                Ok(Round::Lost) if round == 0 => {}
                Ok(Round::Lost) => {
                    // Other writers of this peer: let them finish before reading again.
                    let pause = Duration::from_millis(1 + (round as u64 * 7) % 20);
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Some(unused) = lease {
            self.revoke(unused.id).await;
        }
        result
    }

    async fn scan(&self, hint: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
        self.start_view();
        let wanted = self.last_written.load(Ordering::Acquire);
        if self.view.current_at(wanted, self.view_wait()).await {
            return Ok(self.view.scan(hint));
        }
        let why = self
            .view
            .last_error()
            .unwrap_or_else(|| "it is still catching up".to_owned());
        let (stored, revision) = self.list_direct().await?;
        let mut listing = Table::from_stored(&stored).scan(hint);
        listing.detail = Some(format!(
            "read from etcd directly at revision {revision}: the watch is not up ({why})"
        ));
        Ok(listing)
    }

    /// Leases end records by themselves, so the coordinator never asks; asked directly,
    /// this removes records whose own `last_seen + ttl_seconds` is past (a leader change
    /// in etcd 3.4 restarts lease countdowns, so a lease can outlive its record's time)
    /// or that claim a time ahead of the clock, each by a guarded transaction.
    async fn remove_stale(
        &self,
        now: f64,
        progress: &Progress,
    ) -> Result<Vec<String>, SourceError> {
        let (stored, _) = self.list_direct().await?;
        let stale: Vec<(String, PeerRecord, i64, i64)> = stored
            .into_iter()
            .filter_map(|kv| {
                let record = decode(&kv.peer_id, &kv.value).ok()?;
                record.is_removed_by_cleanup(now).then_some((
                    kv.peer_id,
                    record,
                    kv.mod_revision,
                    kv.lease,
                ))
            })
            .collect();
        let total = stale.len() as u64;
        let mut removed = Vec::new();
        for (done, (peer_id, record, mod_revision, lease)) in stale.into_iter().enumerate() {
            let _turn = self.turn(&peer_id).lock().await;
            let key = self.layout.peer(&peer_id);
            let mut removals = vec![TxnOp::delete(key.clone(), None)];
            for capability in &record.capabilities {
                removals.push(TxnOp::delete(
                    self.layout.capability(capability, &peer_id),
                    None,
                ));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
                .and_then(removals);
            // A peer refreshed since the listing keeps its new copy.
            if let Some(revision) = self.send(&peer_id, txn, |now| !now.exists()).await? {
                self.wrote(revision);
                self.revoke(lease).await;
                removed.push(peer_id);
            }
            progress.report(
                done as u64 + 1,
                Some(total),
                format!("removed {} of {total} stale etcd records", removed.len()),
            );
        }
        removed.sort_unstable();
        Ok(removed)
    }

    async fn warm_up(&self) {
        self.start_view();
        self.view.current_at(0, self.view_wait()).await;
    }

    fn watch_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.start_view();
        Some(self.view.changes())
    }
}
