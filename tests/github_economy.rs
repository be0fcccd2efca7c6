//! Request economy of the GitHub source, counted from the fake GitHub's request log.
//! The figures are written in docs/github.md; this test keeps them true. Run with
//! `cargo test --test github_economy -- --nocapture` to print the table.

mod support;

use serde_json::json;
use support::fake_github::{FakeGitHub, LoggedRequest};
use support::{call, ok, seed_peer};

/// Requests of one operation: all, 304s (free of quota), writes.
fn tally(requests: &[LoggedRequest]) -> (usize, usize, usize) {
    let not_modified = requests.iter().filter(|r| r.status == 304).count();
    let writes = requests
        .iter()
        .filter(|r| r.method == "POST" || r.method == "PATCH")
        .count();
    (requests.len(), not_modified, writes)
}

/// Each operation costs the documented number of requests at 1,000 peers (plus 20
/// expired): cold and warm discovers, register, coalesced and written heartbeats, cleanup.
#[tokio::test]
async fn requests_per_operation_at_one_thousand_peers() {
    let fake = FakeGitHub::start().await;
    let now = support::now();
    for i in 0..1000 {
        seed_peer(&fake, &format!("p{i:04}"), &["storage"], now, 3600);
    }
    for i in 0..20 {
        seed_peer(&fake, &format!("expired-{i:02}"), &[], now - 100.0, 10);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &["--github-cache-seconds", "3600", "--cleanup-interval", "0"],
    )
    .await;
    // A second server whose listing cache is always out of date, for the rows after the
    // cache (instead of sleeping until the first one's cache ages).
    let uncached = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &["--github-cache-seconds", "0", "--cleanup-interval", "0"],
    )
    .await;
    let mut table = Vec::new();
    let mut measure = |name: &str, expected: (usize, usize, usize)| {
        let requests = fake.requests();
        fake.clear_log();
        let got = tally(&requests);
        table.push(format!(
            "| {name} | {} | {} | {} |",
            got.0,
            got.1,
            got.0 - got.1
        ));
        assert_eq!(got, expected, "{name}: (requests, 304s, writes)");
    };
    fake.clear_log();

    let discover = json!({"sources": ["github"], "max_peers": 1000});
    let found = call(&client, "discover_peers", discover.clone()).await;
    assert_eq!(ok(&found)["total_matched"], 1000);
    measure("discover, 1,000 peers, cold", (11, 0, 0));

    ok(&call(&client, "discover_peers", discover.clone()).await);
    measure("discover again within --github-cache-seconds", (0, 0, 0));

    client.cancel().await.expect("shutdown");
    let client = uncached;
    ok(&call(&client, "discover_peers", discover.clone()).await);
    fake.clear_log();
    ok(&call(&client, "discover_peers", discover.clone()).await);
    measure(
        "discover again after the cache, nothing changed",
        (11, 11, 0),
    );

    let register =
        json!({"peer_id": "newbie", "multiaddr": "/ip4/127.0.0.1/tcp/1", "sources": ["github"]});
    ok(&call(&client, "register_peer", register.clone()).await);
    measure("register_peer, new peer", (13, 11, 1));

    ok(&call(&client, "register_peer", register).await);
    measure("register_peer, known peer", (2, 0, 1));

    let beat = json!({"peer_id": "newbie", "sources": ["github"]});
    ok(&call(&client, "update_peer", beat.clone()).await);
    measure("update_peer, coalesced (first after a write)", (1, 0, 0));
    ok(&call(&client, "update_peer", beat).await);
    measure("update_peer, coalesced", (1, 1, 0));

    let changed = json!({"peer_id": "newbie", "metadata": {"v": 2}, "sources": ["github"]});
    ok(&call(&client, "update_peer", changed).await);
    measure("update_peer, a field changed", (2, 1, 1));

    let cleaned = call(
        &client,
        "cleanup_expired_peers",
        json!({"sources": ["github"]}),
    )
    .await;
    assert_eq!(ok(&cleaned)["removed"]["github"], 20);
    // Oldest first: only the last page (the 20 expired and newbie) changed since the
    // last listing, so the other ten pages are free 304s.
    measure("cleanup_expired_peers, 20 expired of 1,021", (31, 10, 20));

    eprintln!("| operation | requests | of which 304 (free) | counted against the quota |");
    eprintln!("| --- | --- | --- | --- |");
    for row in table {
        eprintln!("{row}");
    }
    client.cancel().await.expect("shutdown");
}

/// The write budget: once this process has spent its writes, a register is refused as
/// rate limited with the wait, before any request is sent (it would have to write),
/// and an edit is refused without sending the write.
#[tokio::test]
async fn write_budget_refuses_before_spending_requests() {
    use peer_discovery_mcp::coordinator::Direct;
    use peer_discovery_mcp::peer::Announcement;
    use peer_discovery_mcp::source::SourceError;
    use peer_discovery_mcp::source::github::WriteBudget;

    let fake = FakeGitHub::start().await;
    let github = support::github_source(
        &fake,
        WriteBudget {
            per_minute: 3,
            per_hour: 500,
        },
    );
    let now = support::now();
    let record = |id: &str| {
        Announcement::new(id.into(), "/ip4/127.0.0.1/tcp/1", &[], None, None, 3600)
            .expect("valid")
            .into_record(now)
    };
    for i in 0..3 {
        github
            .register(record(&format!("b{i}")))
            .await
            .expect("within the budget");
    }
    fake.clear_log();
    match github.register(record("b3")).await {
        Err(SourceError::RateLimited {
            retry_after_seconds,
        }) => assert!(
            (1..=60).contains(&retry_after_seconds),
            "{retry_after_seconds}"
        ),
        other => panic!("expected rate_limited, got {other:?}"),
    }
    assert!(
        fake.requests().is_empty(),
        "a refused register sent {:?}",
        fake.requests()
    );
    // Re-registering a known peer must write too: refused the same way.
    assert!(matches!(
        github.register(record("b0")).await,
        Err(SourceError::RateLimited { .. })
    ));
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(fake.issues().len(), 3);
}
