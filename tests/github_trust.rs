//! Records from the future and duplicate issues, through the real binary against the
//! fake GitHub: a second issue for a victim's peer id cannot win the merge, even when
//! its author is on `--github-trusted-authors`.

mod support;

use serde_json::{Value, json};
use support::fake_github::{FakeGitHub, SeedIssue};
use support::{call, ok};

const VICTIM_ADDR: &str = "/ip4/10.0.0.1/tcp/4001";
const ATTACKER_ADDR: &str = "/ip4/203.0.113.66/tcp/4001";
const TRUSTED: [&str; 2] = ["--github-trusted-authors", "peer-bot,mallory"];

/// Seeds an open, labelled issue for `peer_id` by `mallory` (a trusted author) whose
/// record points at the attacker's address and claims `last_seen`.
fn seed_attacker(fake: &FakeGitHub, peer_id: &str, last_seen: f64) -> u64 {
    let mut record = support::record_json(peer_id, &[], last_seen, 3600);
    record["multiaddr"] = json!(ATTACKER_ADDR);
    let body = serde_json::to_string_pretty(&record).expect("json");
    let mut seed = SeedIssue::new(
        &format!("Peer: {peer_id}"),
        &body,
        &["peer-registry", "peer-active"],
    );
    seed.author = "mallory".to_owned();
    fake.seed_issue(seed)
}

fn register_victim() -> Value {
    json!({"peer_id": "victim", "multiaddr": VICTIM_ADDR})
}

/// An attacker's issue for the victim's id with `last_seen` 10^15 (and first_seen) is
/// rejected and counted; discover serves the victim's own address from GitHub.
#[tokio::test]
async fn a_record_from_the_future_is_rejected_and_cannot_win() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(&dir.path().join("r.json"), &fake, &TRUSTED).await;
    ok(&call(&client, "register_peer", register_victim()).await);
    seed_attacker(&fake, "victim", 1e15);

    let found = call(&client, "discover_peers", json!({"sources": ["github"]})).await;
    let found = ok(&found).clone();
    assert_eq!(found["outcomes"]["github"]["rejected"], 1, "{found}");
    assert_eq!(found["total_matched"], 1, "{found}");
    assert_eq!(found["peers"][0]["peer_id"], "victim");
    assert_eq!(found["peers"][0]["multiaddr"], VICTIM_ADDR);
    client.cancel().await.expect("shutdown");
}

/// A register closes the other open issues for its peer as `duplicate` (swapping
/// `peer-active` for `peer-inactive`), so an attacker's issue with a plausible but newer
/// `last_seen` stops winning too; cleanup closes a record from the future.
#[tokio::test]
async fn register_closes_duplicates_and_cleanup_closes_future_records() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &[TRUSTED[0], TRUSTED[1], "--github-cache-seconds", "0"],
    )
    .await;
    let first = call(&client, "register_peer", register_victim()).await;
    let own: u64 = ok(&first)["outcomes"]["github"]["location"]
        .as_str()
        .and_then(|l| l.strip_prefix("issue #"))
        .and_then(|n| n.parse().ok())
        .expect("location names the issue");
    let future = seed_attacker(&fake, "victim", 1e15);
    let newer = seed_attacker(&fake, "victim", support::now() + 200.0);
    // A discover reads the listing (and with it the duplicates).
    ok(&call(&client, "discover_peers", json!({"sources": ["github"]})).await);

    ok(&call(&client, "register_peer", register_victim()).await);
    for number in [future, newer] {
        let issue = fake.issue(number).expect("issue");
        assert_eq!(issue.state, "closed", "#{number}");
        assert_eq!(
            issue.state_reason.as_deref(),
            Some("duplicate"),
            "#{number}"
        );
        assert!(issue.labels.contains(&"peer-inactive".to_owned()));
        assert!(!issue.labels.contains(&"peer-active".to_owned()));
    }
    assert_eq!(fake.issue(own).expect("issue").state, "open");
    let found = call(&client, "discover_peers", json!({"sources": ["github"]})).await;
    let found = ok(&found).clone();
    assert_eq!(found["total_matched"], 1, "{found}");
    assert_eq!(found["peers"][0]["multiaddr"], VICTIM_ADDR);

    let ghost = seed_attacker(&fake, "ghost", 1e15);
    let cleaned = call(&client, "cleanup_expired_peers", json!({})).await;
    let cleaned = ok(&cleaned).clone();
    assert_eq!(cleaned["removed"]["github"], 1, "{cleaned}");
    assert_eq!(fake.issue(ghost).expect("issue").state, "closed");
    client.cancel().await.expect("shutdown");
}
