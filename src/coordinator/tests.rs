use super::*;
use crate::peer::{DEFAULT_TTL_SECONDS, PeerId, PeerRecord};
use crate::source::{Decide, Listing, Modified};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};

fn rec(id: &str, last_seen: f64, source: &str) -> PeerRecord {
    let mut r = Announcement::new(
        id.into(),
        "/ip4/127.0.0.1/tcp/1",
        &[],
        None,
        None,
        DEFAULT_TTL_SECONDS,
    )
    .expect("valid")
    .into_record(last_seen);
    r.source = source.into();
    r
}

/// The newest copy wins, every holder is listed, ranking is newest first then by id.
#[test]
fn merge_dedups_and_ranks() {
    let merged = merge(vec![
        (
            SourceName::LOCAL_FILE,
            vec![rec("b", 10.0, "local_file"), rec("a", 5.0, "local_file")],
        ),
        (
            SourceName::GITHUB,
            vec![rec("a", 20.0, "github"), rec("c", 10.0, "github")],
        ),
    ]);
    let order: Vec<(&str, f64, &str)> = merged
        .iter()
        .map(|(r, _)| (r.peer_id.as_str(), r.last_seen, r.source.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("a", 20.0, "github"),
            ("b", 10.0, "local_file"),
            ("c", 10.0, "github")
        ]
    );
    assert_eq!(
        merged[0].1,
        vec![SourceName::LOCAL_FILE, SourceName::GITHUB]
    );
}

/// A source that is always slow, to prove the timeout and the degraded answer.
struct Stalled;

#[async_trait]
impl Source for Stalled {
    fn name(&self) -> SourceName {
        SourceName::GITHUB
    }
    async fn modify(&self, _: &str, _: Decide) -> Result<Modified, SourceError> {
        futures::future::pending().await
    }
    async fn scan(&self, _: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
        futures::future::pending().await
    }
    async fn remove_stale(&self, _: f64, _: &Progress) -> Result<Vec<String>, SourceError> {
        futures::future::pending().await
    }
}

/// A checked discover query.
fn query(capabilities: &[String], max_peers: Option<i64>, include_expired: bool) -> DiscoverQuery {
    DiscoverQuery::new(capabilities, max_peers, include_expired).expect("valid query")
}

/// An in-memory source under `name`.
fn memory(name: &str) -> crate::source::MemorySource {
    crate::source::MemorySource::new(SourceName::new(name).expect("valid name"))
}

fn coordinator(sources: Vec<Arc<dyn Source>>, clock: Clock) -> Coordinator {
    Coordinator::new(
        sources
            .into_iter()
            .map(|source| EnabledSource {
                source,
                description: String::new(),
            })
            .collect(),
        BTreeMap::new(),
        CoordinatorConfig {
            default_ttl_seconds: DEFAULT_TTL_SECONDS,
            source_timeout: Duration::from_millis(200),
            cleanup_interval: Duration::ZERO,
        },
        clock,
    )
}

fn announcement(id: &str, ttl: i64) -> Announcement {
    Announcement::new(
        id.into(),
        "/ip4/127.0.0.1/tcp/1",
        &["compute".into()],
        Some(ttl),
        None,
        DEFAULT_TTL_SECONDS,
    )
    .expect("valid")
}

/// A stalled source times out; the local results still come back with its outcome.
#[tokio::test]
async fn stalled_source_degrades_to_the_others() {
    let local = memory("local_file");
    let c = coordinator(vec![Arc::new(local), Arc::new(Stalled)], Arc::new(|| 100.0));
    let reg = c
        .register(announcement("p", 60), None)
        .await
        .expect("register");
    assert_eq!(
        reg.outcomes.get("github").map(|o| o.status),
        Some(SourceStatus::Timeout)
    );
    assert_eq!(reg.peer.sources, vec![SourceName::LOCAL_FILE]);
    let found = c
        .discover(&query(&[], None, false), None, &Progress::default())
        .await
        .expect("discover");
    assert_eq!(found.peers.len(), 1);
    assert_eq!(
        found.outcomes.get("local_file").map(|o| o.status),
        Some(SourceStatus::Ok)
    );
    let only_stalled = c
        .discover(
            &query(&[], None, false),
            Some(&[SourceName::GITHUB]),
            &Progress::default(),
        )
        .await;
    assert!(matches!(only_stalled, Err(CallError::NoSource(_))));
}

/// Expiry follows the injected clock: a peer leaves discover at last_seen + ttl.
#[tokio::test]
async fn expiry_follows_the_clock() {
    let local = memory("local_file");
    let now = Arc::new(AtomicU64::new(1000));
    let clock_now = Arc::clone(&now);
    let c = coordinator(
        vec![Arc::new(local)],
        Arc::new(move || clock_now.load(Ordering::SeqCst) as f64),
    );
    c.register(announcement("short", 10), None)
        .await
        .expect("register");
    c.register(announcement("long", 100), None)
        .await
        .expect("register");
    now.store(1010, Ordering::SeqCst);
    let found = c
        .discover(
            &query(&["compute".into()], None, false),
            None,
            &Progress::default(),
        )
        .await
        .expect("discover");
    assert_eq!(
        found
            .peers
            .iter()
            .map(|p| p.peer_id.as_str())
            .collect::<Vec<_>>(),
        ["long"]
    );
    let all = c
        .discover(&query(&[], None, true), None, &Progress::default())
        .await
        .expect("discover");
    assert_eq!(all.total_matched, 2);
    let cleaned = c
        .cleanup(false, None, &Progress::default())
        .await
        .expect("cleanup");
    assert_eq!(cleaned.removed_peer_ids, vec!["short"]);
    assert_eq!(cleaned.removed.get("local_file"), Some(&1));
}

/// max_peers cuts after ranking, so the newest peers are never missed.
#[tokio::test]
async fn max_peers_cuts_after_ranking() {
    let local = memory("local_file");
    let now = Arc::new(AtomicU64::new(1));
    let clock_now = Arc::clone(&now);
    let c = coordinator(
        vec![Arc::new(local)],
        Arc::new(move || clock_now.load(Ordering::SeqCst) as f64),
    );
    for (i, id) in ["z", "y", "x", "w"].iter().enumerate() {
        now.store(10 + i as u64, Ordering::SeqCst);
        c.register(announcement(id, 1000), None)
            .await
            .expect("register");
    }
    let found = c
        .discover(&query(&[], Some(2), false), None, &Progress::default())
        .await
        .expect("discover");
    assert_eq!(
        found
            .peers
            .iter()
            .map(|p| p.peer_id.as_str())
            .collect::<Vec<_>>(),
        ["w", "x"]
    );
    assert_eq!(found.total_matched, 4);
    assert!(matches!(
        DiscoverQuery::new(&[], Some(0), false),
        Err(CallError::BadArgument(_))
    ));
}

/// A source with a bug: every call panics.
struct Panicking;

#[async_trait]
impl Source for Panicking {
    fn name(&self) -> SourceName {
        SourceName::new("buggy").expect("valid")
    }
    async fn modify(&self, _: &str, _: Decide) -> Result<Modified, SourceError> {
        panic!("modify exploded")
    }
    async fn scan(&self, _: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
        panic!("scan exploded")
    }
    async fn remove_stale(&self, _: f64, _: &Progress) -> Result<Vec<String>, SourceError> {
        panic!("remove exploded")
    }
}

/// A panic inside a source is that source's `error` outcome: the call answers with the
/// other sources' results, and later calls still answer.
#[tokio::test]
async fn a_panicking_source_is_an_error_outcome() {
    let local = memory("local_file");
    let c = coordinator(
        vec![Arc::new(local), Arc::new(Panicking)],
        Arc::new(|| 100.0),
    );
    let reg = c
        .register(announcement("p", 60), None)
        .await
        .expect("register answers");
    let buggy = reg.outcomes.get("buggy").expect("buggy outcome");
    assert_eq!(buggy.status, SourceStatus::Error);
    assert!(
        buggy
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("modify exploded")),
        "{buggy:?}"
    );
    for _ in 0..3 {
        let found = c
            .discover(&query(&[], None, false), None, &Progress::default())
            .await
            .expect("discover answers");
        assert_eq!(found.peers.len(), 1);
        assert_eq!(
            found.outcomes.get("buggy").map(|o| o.status),
            Some(SourceStatus::Error)
        );
    }
    let status = c.status();
    let stats = &status
        .sources
        .iter()
        .find(|s| s.source.as_str() == "buggy")
        .expect("listed")
        .stats;
    assert_eq!(stats.failures, 4);
}

/// Sources are named by the caller; unknown names are refused with the list of known ones.
#[tokio::test]
async fn unknown_source_names_are_refused_with_the_known_ones() {
    let local = memory("local_file");
    let c = coordinator(vec![Arc::new(local)], Arc::new(|| 100.0));
    let asked = [SourceName::new("nosuch").expect("valid")];
    let Err(CallError::BadArgument(message)) = c
        .discover(&query(&[], None, false), Some(&asked), &Progress::default())
        .await
    else {
        panic!("an unknown source must be a bad argument");
    };
    assert_eq!(
        message,
        "unknown source `nosuch`; name some of: local_file, github, etcd"
    );
    let found = c
        .discover(&query(&[], None, false), None, &Progress::default())
        .await
        .expect("discover");
    let etcd = found.outcomes.get("etcd").expect("etcd reported");
    assert_eq!(etcd.status, SourceStatus::Disabled);
}

/// A source whose listings come with something to say (a stale cache, for example).
struct Remarking;

#[async_trait]
impl Source for Remarking {
    fn name(&self) -> SourceName {
        SourceName::new("remarking").expect("valid")
    }
    async fn modify(&self, _: &str, _: Decide) -> Result<Modified, SourceError> {
        Err(SourceError::Remote("read-only".into()))
    }
    async fn scan(&self, _: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
        Ok(Listing {
            detail: Some("served a listing read 42 s ago".into()),
            ..Listing::default()
        })
    }
    async fn remove_stale(&self, _: f64, _: &Progress) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }
}

/// What a source says about its listing reaches that source's outcome.
#[tokio::test]
async fn a_listing_detail_reaches_the_outcome() {
    let c = coordinator(vec![Arc::new(Remarking)], Arc::new(|| 100.0));
    let found = c
        .discover(&query(&[], None, false), None, &Progress::default())
        .await
        .expect("discover");
    let outcome = found.outcomes.get("remarking").expect("outcome");
    assert_eq!(outcome.status, SourceStatus::Ok);
    assert_eq!(
        outcome.detail.as_deref(),
        Some("served a listing read 42 s ago")
    );
}

/// A heartbeat coalesced by a costly source still refreshes a source that lacked the
/// peer: the restored copy is the heartbeat applied, not the costly source's old copy.
#[tokio::test]
async fn a_coalesced_heartbeat_restores_a_refreshed_copy() {
    let costly = Arc::new(memory("costly").with_abilities(crate::source::Abilities {
        costly_writes: true,
        ..Default::default()
    }));
    let plain = Arc::new(memory("plain"));
    let c = coordinator(vec![costly.clone(), plain.clone()], Arc::new(|| 1010.0));
    costly.insert_raw(rec("p", 1000.0, "costly"));
    let beat = Heartbeat::default();
    let updated = c
        .update(&PeerId::new("p").expect("id"), beat, None)
        .await
        .expect("update");
    assert_eq!(
        updated.outcomes.get("costly").and_then(|o| o.written),
        Some(false)
    );
    assert_eq!(updated.peer.last_seen, 1010.0);
    let held = plain
        .scan(
            &PeerFilter::new(&[], true, 1010.0).expect("f"),
            &Progress::default(),
        )
        .await
        .expect("scan");
    assert_eq!(
        held.peers[0].last_seen, 1010.0,
        "restored with the heartbeat applied"
    );
}

/// A copy stamped far ahead of the clock is not refreshed (that would keep its future
/// time): a heartbeat finds no peer to refresh, and cleanup removes the copy.
#[tokio::test]
async fn a_copy_from_the_future_is_not_heartbeated() {
    let near = Arc::new(memory("near"));
    let c = coordinator(vec![near.clone()], Arc::new(|| 1000.0));
    near.insert_raw(rec("hijack", 1e15, "near"));
    let answer = c
        .update(
            &PeerId::new("hijack").expect("id"),
            Heartbeat::default(),
            None,
        )
        .await;
    assert!(
        matches!(answer, Err(CallError::UnknownPeer(..))),
        "{answer:?}"
    );
    let cleaned = c
        .cleanup(false, None, &Progress::default())
        .await
        .expect("cleanup");
    assert_eq!(cleaned.removed_peer_ids, ["hijack"]);
}
