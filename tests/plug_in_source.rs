//! A source is a plug-in: a test adds sources of its own (the in-memory one under a name
//! it picks, and an always-failing one) to a coordinator and drives register, discover,
//! update, unregister and cleanup through them, with no change to `src/`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peer_discovery_mcp::coordinator::{
    CallError, Coordinator, CoordinatorConfig, DiscoverQuery, EnabledSource, SourceStatus,
};
use peer_discovery_mcp::peer::{Announcement, Heartbeat, PeerId};
use peer_discovery_mcp::source::{MemorySource, Progress, Source, SourceError, SourceName};
use support::sources::FailingSource;

fn name(text: &str) -> SourceName {
    SourceName::new(text).expect("valid source name")
}

fn enabled(source: Arc<dyn Source>) -> EnabledSource {
    EnabledSource {
        description: format!("{} in memory", source.name()),
        source,
    }
}

fn query(capabilities: &[String], max_peers: Option<i64>, include_expired: bool) -> DiscoverQuery {
    DiscoverQuery::new(capabilities, max_peers, include_expired).expect("valid query")
}

fn peer(id: &str) -> PeerId {
    PeerId::new(id).expect("valid peer id")
}

fn announce(id: &str, ttl: i64) -> Announcement {
    Announcement::new(
        id.into(),
        "/ip4/192.0.2.7/tcp/4001",
        &["compute".into()],
        Some(ttl),
        None,
        3600,
    )
    .expect("valid announcement")
}

/// Two in-memory sources named by the test and one failing source, on a clock the test
/// moves: every operation goes through the added sources, outcomes are keyed by their
/// names, and the failing one never hides what the others found.
#[tokio::test]
async fn sources_added_by_a_test_serve_every_operation() {
    let near = Arc::new(MemorySource::new(name("near")));
    let far = Arc::new(MemorySource::new(name("far")));
    let broken = Arc::new(FailingSource::new(
        "broken",
        SourceError::Remote("the remote is down".into()),
    ));
    let now = Arc::new(AtomicU64::new(1_000));
    let clock_now = Arc::clone(&now);
    let coordinator = Coordinator::new(
        vec![enabled(near.clone()), enabled(far.clone()), enabled(broken)],
        BTreeMap::new(),
        CoordinatorConfig {
            default_ttl_seconds: 3600,
            source_timeout: Duration::from_secs(5),
            cleanup_interval: Duration::ZERO,
        },
        Arc::new(move || clock_now.load(Ordering::SeqCst) as f64),
    );

    let registered = coordinator
        .register(announce("agent-1", 60), None)
        .await
        .expect("register");
    assert!(registered.created);
    assert_eq!(registered.peer.sources, [name("near"), name("far")]);
    assert_eq!(
        registered.outcomes.get("near").map(|o| o.status),
        Some(SourceStatus::Ok)
    );
    let broken_outcome = registered.outcomes.get("broken").expect("broken reported");
    assert_eq!(broken_outcome.status, SourceStatus::Error);
    assert_eq!(broken_outcome.detail.as_deref(), Some("the remote is down"));
    assert_eq!((near.len(), far.len()), (1, 1));

    // Only `far` asked: the others are not touched, and the answer says so.
    coordinator
        .register(announce("agent-2", 600), Some(&[name("far")]))
        .await
        .expect("register in far");
    let found = coordinator
        .discover(
            &query(&["compute".into()], None, false),
            None,
            &Progress::default(),
        )
        .await
        .expect("discover");
    let ids: Vec<&str> = found.peers.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(ids, ["agent-1", "agent-2"]);
    assert_eq!(found.peers[1].sources, [name("far")]);
    assert_eq!(found.outcomes.get("near").and_then(|o| o.count), Some(1));
    assert_eq!(found.outcomes.get("far").and_then(|o| o.count), Some(2));

    // A heartbeat reaches every source that holds the peer, and restores it where lost.
    now.store(1_030, Ordering::SeqCst);
    let heartbeat = Heartbeat::new("agent-2", None, None, None, None).expect("heartbeat");
    let updated = coordinator
        .update(
            &peer("agent-2"),
            heartbeat,
            Some(&[name("near"), name("far")]),
        )
        .await
        .expect("update");
    assert_eq!(updated.peer.last_seen, 1_030.0);
    assert_eq!(updated.peer.sources, [name("near"), name("far")]);
    assert_eq!(near.len(), 2);

    // Expiry and cleanup follow the coordinator's clock in every added source.
    now.store(1_061, Ordering::SeqCst);
    let cleaned = coordinator
        .cleanup(
            false,
            Some(&[name("near"), name("far")]),
            &Progress::default(),
        )
        .await
        .expect("cleanup");
    assert_eq!(cleaned.removed_peer_ids, ["agent-1"]);
    assert_eq!(cleaned.removed.get("near"), Some(&1));
    assert_eq!(cleaned.removed.get("far"), Some(&1));
    let left = coordinator
        .discover(&query(&[], None, false), None, &Progress::default())
        .await
        .expect("discover");
    let ids: Vec<&str> = left.peers.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(ids, ["agent-2"]);

    let gone = coordinator
        .unregister(&peer("agent-2"), None)
        .await
        .expect("unregister");
    assert!(gone.removed);
    assert!(near.is_empty() && far.is_empty());

    // Asked alone, the failing source fails the call as a whole, saying why.
    let Err(CallError::NoSource(why)) = coordinator
        .discover(
            &query(&[], None, false),
            Some(&[name("broken")]),
            &Progress::default(),
        )
        .await
    else {
        panic!("a call only the failing source could serve must fail");
    };
    assert_eq!(why, "broken: error (the remote is down)");

    // The status lists the added sources after the built-in ones, with their counters.
    let status = coordinator.status();
    let listed: Vec<&str> = status.sources.iter().map(|s| s.source.as_str()).collect();
    assert_eq!(
        listed,
        ["local_file", "github", "etcd", "broken", "far", "near"]
    );
    let broken_stats = &status.sources[3].stats;
    assert!(broken_stats.failures >= 5, "{broken_stats:?}");
}
