//! The feed's own rules, on in-memory sources and a clock the test moves.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::source::MemorySource;

fn record(peer_id: &str, caps: &[&str], last_seen: f64, ttl: u64) -> PeerRecord {
    PeerRecord {
        peer_id: peer_id.to_owned(),
        multiaddr: "/ip4/192.0.2.1/tcp/1".to_owned(),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        first_seen: last_seen,
        last_seen,
        source: "memory".to_owned(),
        ttl_seconds: ttl,
        metadata: Default::default(),
        unknown_fields: Default::default(),
    }
}

/// A clock at whole seconds the test sets.
fn clock() -> (Clock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let read = Arc::clone(&now);
    (Arc::new(move || read.load(Ordering::SeqCst) as f64), now)
}

async fn feed_with(max_events: usize, max_bytes: usize) -> (ChangeFeed, Clock) {
    let (clock, _) = clock();
    let memory: Arc<dyn Source> =
        Arc::new(MemorySource::new(SourceName::new("memory").expect("name")));
    let feed = ChangeFeed::start_with(
        vec![memory],
        Arc::clone(&clock),
        Duration::from_secs(1),
        max_events,
        max_bytes,
    )
    .await;
    (feed, clock)
}

fn ask(cursor: Option<String>) -> ReadChanges {
    ReadChanges {
        cursor,
        max_events: 1000,
        ..ReadChanges::default()
    }
}

/// Two sources hold copies of one peer: the merged peer changes only when the newest
/// copy does, leaves only when the last copy goes, and a lease renewal is no event.
#[tokio::test]
async fn copies_merge_and_renewals_are_quiet() {
    let (feed, clock) = feed_with(100, MAX_BYTES).await;
    let now = clock();
    let (a, b) = (
        SourceName::new("a").expect("a"),
        SourceName::new("b").expect("b"),
    );
    let start = feed.read(&ask(None), |_| {}).await.expect("read").cursor;
    feed.observe_write(&a, "p", Some(&record("p", &["x"], now, 600)));
    feed.observe_write(&b, "p", Some(&record("p", &["x"], now, 600)));
    feed.observe_write(&a, "p", Some(&record("p", &["x"], now + 1.0, 600)));
    feed.observe_write(&a, "p", None);
    let events = feed
        .read(&ask(Some(start.clone())), |_| {})
        .await
        .expect("read")
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, ChangeKind::Added);
    feed.observe_write(&b, "p", None);
    let events = feed
        .read(&ask(Some(start)), |_| {})
        .await
        .expect("read")
        .events;
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.reason)).collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Added, None),
            (ChangeKind::Removed, Some(RemovalReason::Unregistered))
        ]
    );
}

/// 20,000 events: the history keeps the last 10,000 (bounded by count), a cursor from
/// before them is refused with what to do, and one inside them is served.
#[tokio::test]
async fn the_history_is_bounded_and_an_old_cursor_is_refused() {
    let (feed, clock) = feed_with(MAX_EVENTS, MAX_BYTES).await;
    let source = SourceName::new("a").expect("a");
    let first = feed.read(&ask(None), |_| {}).await.expect("read").cursor;
    for i in 0..20_000 {
        let id = format!("peer-{i}");
        feed.observe_write(&source, &id, Some(&record(&id, &["x"], clock(), 600)));
    }
    let (peers, kept, bytes) = feed.size();
    assert_eq!(peers, 20_000);
    assert_eq!(kept, MAX_EVENTS);
    assert!(bytes <= MAX_BYTES, "{bytes}");
    let refused = feed
        .read(&ask(Some(first)), |_| {})
        .await
        .expect_err("too old");
    assert!(refused.to_string().contains("discover_peers"), "{refused}");
    let mut recent = feed.read(&ask(None), |_| {}).await.expect("read").cursor;
    let (epoch, head) = history::parse_cursor(&recent).expect("cursor");
    recent = history::cursor(epoch, head - 10);
    let events = feed
        .read(&ask(Some(recent)), |_| {})
        .await
        .expect("read")
        .events;
    assert_eq!(events.len(), 10);
    assert_eq!(events[9].peer_id, "peer-19999");
}

/// The byte bound drops the oldest events when records are large.
#[tokio::test]
async fn the_history_is_bounded_by_bytes() {
    let (feed, clock) = feed_with(MAX_EVENTS, 64 * 1024).await;
    let source = SourceName::new("a").expect("a");
    for i in 0..1_000 {
        let id = format!("peer-{i}");
        let mut big = record(&id, &["x"], clock(), 600);
        big.metadata
            .insert("blob".into(), serde_json::Value::String("x".repeat(1000)));
        feed.observe_write(&source, &id, Some(&big));
    }
    let (_, kept, bytes) = feed.size();
    assert!(bytes <= 64 * 1024, "{bytes}");
    assert!(kept < 1_000 && kept > 10, "{kept}");
}

/// A forged cursor ahead of the head, or of another epoch, is refused too.
#[tokio::test]
async fn forged_cursors_are_refused() {
    let (feed, _) = feed_with(100, MAX_BYTES).await;
    let now = feed.read(&ask(None), |_| {}).await.expect("read").cursor;
    let (epoch, head) = history::parse_cursor(&now).expect("cursor");
    for forged in [
        history::cursor(epoch, head + 5),
        history::cursor(epoch ^ 1, head),
        "12-3".to_owned(),
    ] {
        assert!(
            feed.read(&ask(Some(forged.clone())), |_| {}).await.is_err(),
            "{forged}"
        );
    }
}
