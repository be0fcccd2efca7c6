//! The promises of the `Source` trait (src/source/mod.rs), checked the same way against
//! every source: the in-memory one, the local file, GitHub on the fake, and etcd (a real
//! one, started by the test, with the `etcd` feature). A new source
//! adds one test here that calls `keeps_the_contract` with it.

mod support;

use std::sync::Arc;

use peer_discovery_mcp::peer::{Announcement, PeerFilter, PeerRecord};
use peer_discovery_mcp::source::github::WriteBudget;
use peer_discovery_mcp::source::{
    Decision, LocalFileSource, MemorySource, Progress, Source, SourceName,
};
use serde_json::json;
use support::fake_github::FakeGitHub;

fn record(id: &str, caps: &[&str], ttl: i64, at: f64) -> PeerRecord {
    let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
    Announcement::new(
        id.into(),
        "/ip4/192.0.2.1/tcp/4001",
        &caps,
        Some(ttl),
        None,
        3600,
    )
    .expect("valid")
    .into_record(at)
}

async fn scan(source: &dyn Source, filter: &PeerFilter) -> Vec<PeerRecord> {
    source
        .scan(filter, &Progress::default())
        .await
        .expect("scan")
        .peers
}

fn ids(records: &[PeerRecord]) -> Vec<&str> {
    records.iter().map(|r| r.peer_id.as_str()).collect()
}

/// Every promise of the trait, on `source`, with records stamped around `now`.
async fn keeps_the_contract(source: Arc<dyn Source>, now: f64) {
    let name = source.name();
    let everything = PeerFilter::new(&[], true, now + 1.0).expect("filter");

    // modify + Write over nothing: created, stamped with the source's name, readable.
    let first = source
        .modify(
            "alpha",
            Box::new(move |_| Decision::Write(record("alpha", &["compute"], 600, now))),
        )
        .await
        .expect("write alpha");
    assert_eq!(first.before, None, "{name}: nothing was held");
    let stored = first.after.expect("a written record is returned");
    assert!(first.written);
    assert_eq!(
        stored.source,
        name.as_str(),
        "{name}: `source` is the source's name"
    );
    assert_eq!(ids(&scan(source.as_ref(), &everything).await), ["alpha"]);

    // The decision sees the held copy (a source may also ask it about other copies, e.g.
    // none, before it reads), and Keep changes nothing.
    let shown = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&shown);
    let kept = source
        .modify(
            "alpha",
            Box::new(move |held| {
                seen.lock().expect("lock").push(held.map(|h| h.last_seen));
                Decision::Keep
            }),
        )
        .await
        .expect("keep alpha");
    let shown = shown.lock().expect("lock").clone();
    assert_eq!(
        shown.last(),
        Some(&Some(now)),
        "{name}: the held copy is given last"
    );
    assert!(!kept.written, "{name}: Keep writes nothing");
    assert_eq!(kept.after.map(|r| r.last_seen), Some(now));

    // Read-modify-write is atomic: concurrent increments of one field all land.
    let increments = (0..6).map(|_| {
        let source = Arc::clone(&source);
        async move {
            source
                .modify(
                    "alpha",
                    Box::new(move |held| {
                        let Some(held) = held else {
                            return Decision::Keep;
                        };
                        let mut next = held.clone();
                        let count = next.metadata.get("n").and_then(|n| n.as_u64()).unwrap_or(0);
                        next.metadata.insert("n".into(), json!(count + 1));
                        Decision::Write(next)
                    }),
                )
                .await
                .expect("increment")
        }
    });
    futures::future::join_all(increments).await;
    let alpha = scan(source.as_ref(), &everything).await;
    assert_eq!(
        alpha[0].metadata.get("n"),
        Some(&json!(6)),
        "{name}: lost updates"
    );

    // Concurrent writes of different peers all land.
    let writes = (0..8).map(|i| {
        let source = Arc::clone(&source);
        async move {
            let id = format!("peer-{i}");
            let at = now - 10.0 + f64::from(i);
            let caps: &[&str] = if i % 2 == 0 {
                &["compute", "gpu"]
            } else {
                &["storage"]
            };
            let rec = record(&id, caps, 600, at);
            source
                .modify(&id, Box::new(move |_| Decision::Write(rec.clone())))
                .await
                .expect("write")
        }
    });
    futures::future::join_all(writes).await;
    assert_eq!(scan(source.as_ref(), &everything).await.len(), 9, "{name}");

    // A scan hint with capabilities and a limit: at least the best `limit`, ranked newest
    // first, with the count of all that matched.
    let mut gpu = PeerFilter::new(&["gpu".into()], false, now + 1.0).expect("filter");
    gpu.limit = Some(2);
    let listing = source
        .scan(&gpu, &Progress::default())
        .await
        .expect("scan gpu");
    assert_eq!(listing.matched, 4, "{name}: peers 0, 2, 4, 6 have gpu");
    assert!(
        ids(&listing.peers).starts_with(&["peer-6", "peer-4"]),
        "{name}: {:?}",
        ids(&listing.peers)
    );

    // Remove: gone from scans; removing what is not held is no error and writes nothing.
    let removed = source
        .modify("peer-1", Box::new(|_| Decision::Remove))
        .await
        .expect("remove");
    assert!(
        removed.before.is_some() && removed.after.is_none(),
        "{name}"
    );
    let absent = source
        .modify("nobody", Box::new(|_| Decision::Remove))
        .await
        .expect("remove nothing");
    assert!(absent.before.is_none() && absent.after.is_none(), "{name}");
    assert_eq!(scan(source.as_ref(), &everything).await.len(), 8, "{name}");

    // remove_stale removes exactly what cleanup at `now` removes: a peer refreshed since
    // stays, the others (leases of 600 s, over at +700 s) go.
    let later = now + 700.0;
    let stale = scan(source.as_ref(), &PeerFilter::stale(later)).await;
    assert_eq!(
        stale.len(),
        8,
        "{name}: every lease of 600 s is over at +700 s"
    );
    source
        .modify(
            "peer-0",
            Box::new(move |_| Decision::Write(record("peer-0", &[], 600, later))),
        )
        .await
        .expect("refresh peer-0");
    let mut gone = source
        .remove_stale(later, &Progress::default())
        .await
        .expect("remove_stale");
    gone.sort();
    assert_eq!(
        gone,
        [
            "alpha", "peer-2", "peer-3", "peer-4", "peer-5", "peer-6", "peer-7"
        ],
        "{name}"
    );
    let left = scan(
        source.as_ref(),
        &PeerFilter::new(&[], true, later).expect("f"),
    )
    .await;
    assert_eq!(ids(&left), ["peer-0"], "{name}");
}

/// The in-memory source keeps the contract.
#[tokio::test]
async fn memory_source_keeps_the_contract() {
    let name = SourceName::new("memory").expect("name");
    keeps_the_contract(Arc::new(MemorySource::new(name)), support::now()).await;
}

/// The local file keeps the contract.
#[tokio::test]
async fn local_file_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = LocalFileSource::open(dir.path().join("peer_registry.json")).expect("open");
    keeps_the_contract(Arc::new(source), support::now()).await;
}

/// The GitHub source keeps the contract, against the fake GitHub.
#[tokio::test]
async fn github_source_keeps_the_contract() {
    let fake = FakeGitHub::start().await;
    let budget = WriteBudget {
        per_minute: 1000,
        per_hour: 1000,
    };
    let source = support::github_source(&fake, budget);
    keeps_the_contract(Arc::new(source), support::now()).await;
}

/// The etcd source keeps the contract, against a real single-member etcd.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_source_keeps_the_contract() {
    let etcd = support::etcd::Etcd::start();
    let source = support::etcd_source(&etcd, "/contract/");
    keeps_the_contract(Arc::new(source), support::now()).await;
}
