//! The GitHub listing is fetched once for every caller (single flight), completes even
//! when it is slower than one call's source timeout, and is served stale (saying so)
//! while a refresh runs. Driven through the real binary, and through the source itself
//! where the outcome detail is not yet carried to the tool result.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use peer_discovery_mcp::peer::PeerFilter;
use peer_discovery_mcp::source::github::WriteBudget;
use peer_discovery_mcp::source::{Progress, Source};
use serde_json::json;
use support::fake_github::{FakeGitHub, LoggedRequest, SeedIssue};
use support::{call, ok};

const ISSUES: &str = "/repos/acme/peers/issues";

/// `count` open peer issues `p00000`, `p00001`, ... seen now, in one go.
fn seed_peers(fake: &FakeGitHub, count: usize) {
    let now = support::now();
    fake.seed_many((0..count).map(|i| {
        let id = format!("p{i:05}");
        let body = serde_json::to_string(&support::record_json(&id, &[], now, 3600)).expect("json");
        SeedIssue::new(
            &format!("Peer: {id}"),
            &body,
            &["peer-registry", "peer-active"],
        )
    }));
}

fn listing_requests(fake: &FakeGitHub) -> Vec<LoggedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == ISSUES)
        .collect()
}

/// The `page` of each listing request (1 when absent).
fn pages(requests: &[LoggedRequest]) -> Vec<u64> {
    requests
        .iter()
        .map(|r| {
            r.query
                .as_deref()
                .unwrap_or("")
                .split('&')
                .find_map(|p| p.strip_prefix("page="))
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
        })
        .collect()
}

/// 50 concurrent cold discovers send one listing: each of the 3 pages is fetched once,
/// not 50 times (150 requests).
#[tokio::test]
async fn concurrent_cold_discovers_share_one_listing() {
    let fake = FakeGitHub::start().await;
    seed_peers(&fake, 250);
    fake.set_latency(Duration::from_millis(50));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(&dir.path().join("r.json"), &fake, &[]).await;
    let calls = (0..50).map(|_| {
        call(
            &client,
            "discover_peers",
            json!({"sources": ["github"], "max_peers": 1}),
        )
    });
    for found in futures::future::join_all(calls).await {
        assert_eq!(ok(&found)["total_matched"], 250);
    }
    let requests = listing_requests(&fake);
    assert_eq!(pages(&requests), [1, 2, 3], "one listing, each page once");
    client.cancel().await.expect("shutdown");
}

/// 2,000 issues (20 pages) at 100 ms a request take longer than the 1 s source timeout:
/// the first discover answers `timeout`, but the listing goes on in the background, later
/// discovers wait for the same fetch (never starting again from page 1), and once it is
/// done they get the whole listing. The fake's log shows each page fetched once.
#[tokio::test]
async fn a_listing_slower_than_the_source_timeout_completes_for_later_calls() {
    let fake = FakeGitHub::start().await;
    seed_peers(&fake, 2000);
    fake.set_latency(Duration::from_millis(100));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &["--source-timeout", "1", "--github-timeout", "5"],
    )
    .await;
    let first = call(&client, "discover_peers", json!({"max_peers": 1})).await;
    let first = ok(&first).clone();
    assert_eq!(first["outcomes"]["github"]["status"], "timeout", "{first}");
    let mut statuses = Vec::new();
    let mut complete = None;
    for _ in 0..40 {
        let found = call(&client, "discover_peers", json!({"max_peers": 1})).await;
        let found = ok(&found).clone();
        let status = found["outcomes"]["github"]["status"].clone();
        statuses.push(status.clone());
        if status == "ok" {
            complete = Some(found);
            break;
        }
        assert_eq!(status, "timeout", "{found}");
    }
    let complete = complete.unwrap_or_else(|| panic!("never completed: {statuses:?}"));
    assert_eq!(complete["outcomes"]["github"]["count"], 2000);
    let requests = listing_requests(&fake);
    assert_eq!(
        pages(&requests),
        (1..=20).collect::<Vec<u64>>(),
        "each page fetched once, in order"
    );
    client.cancel().await.expect("shutdown");
}

/// While a refresh started by one call runs, another call is served the previous
/// listing at once, with a detail saying how old it is; the refresh itself completes
/// for its caller, and reads each page once.
#[tokio::test]
async fn a_stale_listing_is_served_while_a_refresh_runs() {
    let fake = FakeGitHub::start().await;
    seed_peers(&fake, 250);
    let github = Arc::new(support::github_source(&fake, WriteBudget::default()));
    let filter = PeerFilter::new(&[], false, support::now()).expect("filter");
    let cold = github
        .scan(&filter, &Progress::default())
        .await
        .expect("cold listing");
    assert_eq!((cold.matched, cold.detail.as_deref()), (250, None));

    support::seed_peer(&fake, "newcomer", &[], support::now(), 3600); // the last page changes
    fake.clear_log();
    fake.set_latency(Duration::from_millis(300));
    let refresh = tokio::spawn({
        let github = Arc::clone(&github);
        let filter = filter.clone();
        async move { github.scan(&filter, &Progress::default()).await }
    });
    // Wait until the refresh has sent its first request (its log entry appears when the
    // request arrives; the answer comes 300 ms later).
    for _ in 0..1000 {
        if !fake.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!fake.requests().is_empty(), "the refresh never started");
    let stale = github
        .scan(&filter, &Progress::default())
        .await
        .expect("stale listing");
    assert_eq!(stale.matched, 250);
    let detail = stale.detail.expect("a detail on the stale listing");
    assert!(
        detail.starts_with("served GitHub's listing as read ")
            && detail.ends_with(" s ago; a refresh is under way"),
        "{detail}"
    );
    let fresh = refresh.await.expect("task").expect("refresh");
    assert_eq!(fresh.matched, 251);
    assert_eq!(fresh.detail, None);
    let requests = listing_requests(&fake);
    assert_eq!(pages(&requests), [1, 2, 3], "one refresh, each page once");
    let distinct: HashSet<u64> = pages(&requests).into_iter().collect();
    assert_eq!(distinct.len(), requests.len());
}
