//! The GitHub Issues source, driven through the real binary over stdio against the
//! stateful fake GitHub on 127.0.0.1 (never the real service).

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::ProgressNotificationParam;
use rmcp::service::NotificationContext;
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::json;
use support::fake_github::{FakeGitHub, Fault, SeedIssue};
use support::{call, err, ids, ok, open_issues_for, read_registry, seed_peer};
use tokio::io::AsyncReadExt;

fn register_args(peer_id: &str, capabilities: &[&str]) -> serde_json::Value {
    json!({"peer_id": peer_id, "multiaddr": "/ip4/127.0.0.1/tcp/4001", "capabilities": capabilities})
}

/// The whole flow against GitHub and the local file together: a peer registered once
/// appears once with both sources; a peer only on GitHub ("another machine") is found;
/// heartbeats are coalesced; unregister and cleanup close issues and swap labels.
#[tokio::test]
async fn flow_across_github_and_the_local_file() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peers.json");
    let client = support::start_with_github(&path, &fake, &["--github-cache-seconds", "0"]).await;

    let registered = call(
        &client,
        "register_peer",
        register_args("agent-1", &["compute"]),
    )
    .await;
    let registered = ok(&registered).clone();
    assert_eq!(registered["created"], true);
    assert_eq!(
        registered["peer"]["sources"],
        json!(["local_file", "github"])
    );
    assert_eq!(registered["outcomes"]["github"]["status"], "ok");
    let location = registered["outcomes"]["github"]["location"]
        .as_str()
        .expect("location");
    let issue_number: u64 = location
        .strip_prefix("issue #")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("location `{location}` names no issue"));

    let issues = open_issues_for(&fake, "agent-1");
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].number, issue_number);
    let mut labels = issues[0].labels.clone();
    labels.sort();
    assert_eq!(
        labels,
        ["capability-compute", "peer-active", "peer-registry"]
    );
    let body: serde_json::Value =
        serde_json::from_str(issues[0].body.as_deref().expect("body")).expect("JSON body");
    assert_eq!(body["peer_id"], "agent-1");
    assert_eq!(
        body.as_object().expect("object").len(),
        8,
        "exactly the eight shared fields"
    );

    // Another machine registered a peer straight on GitHub.
    seed_peer(
        &fake,
        "remote-9",
        &["compute", "storage"],
        support::now() - 5.0,
        3600,
    );

    let found = call(
        &client,
        "discover_peers",
        json!({"capability_filter": ["compute"]}),
    )
    .await;
    let found = ok(&found).clone();
    assert_eq!(ids(&found), ["agent-1", "remote-9"]);
    assert_eq!(
        found["peers"][0]["sources"],
        json!(["local_file", "github"]),
        "listed once, with both sources"
    );
    assert_eq!(found["peers"][1]["sources"], json!(["github"]));
    assert_eq!(found["peers"][1]["source"], "github");
    assert_eq!(found["outcomes"]["github"]["count"], 2);

    // A heartbeat right after registering is not written to GitHub (lease barely used)...
    fake.clear_log();
    let beat = call(&client, "update_peer", json!({"peer_id": "agent-1"})).await;
    let beat = ok(&beat).clone();
    assert_eq!(
        fake.count("PATCH", "/repos/"),
        0,
        "coalesced heartbeat wrote to GitHub"
    );
    assert!(
        beat["outcomes"]["github"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not written")
    );
    assert_eq!(beat["peer"]["sources"], json!(["local_file", "github"]));
    // ...but a changed field is.
    let changed = call(
        &client,
        "update_peer",
        json!({"peer_id": "agent-1", "capabilities": ["compute", "gpu"]}),
    )
    .await;
    ok(&changed);
    assert_eq!(fake.count("PATCH", "/repos/"), 1);
    let issue = fake.issue(issue_number).expect("issue");
    assert!(issue.labels.contains(&"capability-gpu".to_owned()));

    // Updating the GitHub-only peer from here also brings it into the local file.
    let remote_beat = call(
        &client,
        "update_peer",
        json!({"peer_id": "remote-9", "metadata": {"seen_by": "agent-1"}}),
    )
    .await;
    let remote_beat = ok(&remote_beat).clone();
    assert_eq!(
        remote_beat["peer"]["sources"],
        json!(["local_file", "github"])
    );
    assert!(read_registry(&path)["peers"]["remote-9"].is_object());

    // Unregister closes the issue and swaps peer-active for peer-inactive.
    let gone = call(&client, "unregister_peer", json!({"peer_id": "agent-1"})).await;
    assert_eq!(ok(&gone)["outcomes"]["github"]["count"], 1);
    let closed = fake.issue(issue_number).expect("issue");
    assert_eq!(closed.state, "closed");
    assert!(closed.labels.contains(&"peer-inactive".to_owned()));
    assert!(!closed.labels.contains(&"peer-active".to_owned()));

    // An expired peer on GitHub is closed by cleanup.
    let stale = seed_peer(&fake, "stale-1", &[], support::now() - 100.0, 10);
    let cleaned = call(&client, "cleanup_expired_peers", json!({})).await;
    let cleaned = ok(&cleaned).clone();
    assert_eq!(cleaned["removed"]["github"], 1);
    assert_eq!(cleaned["removed_peer_ids"], json!(["stale-1"]));
    assert_eq!(fake.issue(stale).expect("issue").state, "closed");
    client.cancel().await.expect("shutdown");
}

/// 250 peers on GitHub are all found (three pages); pull requests and unlabelled
/// `Peer: x` issues never are; a spoofed issue whose body names another peer is rejected
/// and counted.
#[tokio::test]
async fn pagination_and_trust() {
    let fake = FakeGitHub::start().await;
    let now = support::now();
    for i in 0..250 {
        seed_peer(
            &fake,
            &format!("peer-{i:03}"),
            &["storage"],
            now - i as f64,
            3600,
        );
    }
    let body =
        serde_json::to_string(&support::record_json("pr-peer", &[], now, 3600)).expect("json");
    fake.seed_pull_request("Peer: pr-peer", &body, &["peer-registry", "peer-active"]);
    let unlabelled =
        serde_json::to_string(&support::record_json("no-label", &[], now, 3600)).expect("json");
    fake.seed_issue(SeedIssue::new("Peer: no-label", &unlabelled, &[]));
    let spoof = serde_json::to_string(&support::record_json("peer-000", &[], now + 100.0, 3600))
        .expect("json");
    fake.seed_issue(SeedIssue::new(
        "Peer: impostor",
        &spoof,
        &["peer-registry", "peer-active"],
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(&dir.path().join("r.json"), &fake, &[]).await;
    let found = call(
        &client,
        "discover_peers",
        json!({"max_peers": 1000, "sources": ["github"]}),
    )
    .await;
    let found = ok(&found).clone();
    assert_eq!(found["total_matched"], 250);
    let found_ids = ids(&found);
    assert!(
        !found_ids
            .iter()
            .any(|id| id == "pr-peer" || id == "no-label" || id == "impostor")
    );
    assert_eq!(found_ids[0], "peer-000");
    assert_eq!(
        found["peers"][0]["last_seen"].as_f64(),
        Some(now),
        "the spoofed copy did not win"
    );
    assert_eq!(found["outcomes"]["github"]["rejected"], 1);
    assert!(
        fake.count("GET", "/repos/acme/peers/issues") >= 3,
        "three pages were read"
    );
    client.cancel().await.expect("shutdown");
}

/// With `--github-trusted-authors`, issues opened by anyone else are rejected.
#[tokio::test]
async fn trusted_authors_narrow_the_listing() {
    let fake = FakeGitHub::start().await;
    seed_peer(&fake, "ours", &[], support::now(), 3600);
    let body = serde_json::to_string(&support::record_json("theirs", &[], support::now(), 3600))
        .expect("json");
    let mut seed = SeedIssue::new("Peer: theirs", &body, &["peer-registry", "peer-active"]);
    seed.author = "stranger".to_owned();
    fake.seed_issue(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &["--github-trusted-authors", "peer-bot,another-bot"],
    )
    .await;
    let found = call(&client, "discover_peers", json!({"sources": ["github"]})).await;
    let found = ok(&found).clone();
    assert_eq!(ids(&found), ["ours"]);
    assert_eq!(found["outcomes"]["github"]["rejected"], 1);
    client.cancel().await.expect("shutdown");
}

/// Registering the same peer twice, or from two servers at once, leaves one open issue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_open_issue_per_peer() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = support::start_with_github(&dir.path().join("a.json"), &fake, &[]).await;
    ok(&call(&a, "register_peer", register_args("twice", &[])).await);
    let again = call(&a, "register_peer", register_args("twice", &["gpu"])).await;
    assert_eq!(ok(&again)["created"], false);
    assert_eq!(open_issues_for(&fake, "twice").len(), 1);

    // Two machines (two servers with their own files) register one peer at the same time;
    // latency widens the race so both create before either sees the other.
    let b = support::start_with_github(&dir.path().join("b.json"), &fake, &[]).await;
    fake.set_latency(Duration::from_millis(50));
    let (ra, rb) = tokio::join!(
        call(&a, "register_peer", register_args("raced", &[])),
        call(&b, "register_peer", register_args("raced", &[]))
    );
    fake.set_latency(Duration::ZERO);
    let (ra, rb) = (ok(&ra).clone(), ok(&rb).clone());
    assert_eq!(
        open_issues_for(&fake, "raced").len(),
        1,
        "{:#?}",
        fake.issues()
    );
    assert_eq!(
        ra["outcomes"]["github"]["location"], rb["outcomes"]["github"]["location"],
        "both servers report the surviving issue"
    );
    let found = call(&a, "discover_peers", json!({"sources": ["github"]})).await;
    assert_eq!(ids(ok(&found)), ["raced", "twice"]);
    a.cancel().await.expect("shutdown");
    b.cancel().await.expect("shutdown");
}

/// With GitHub failing (500s, a 10 s stall beyond the timeout, rate limits), every tool
/// still answers in time with the local results and the right `github` outcome; nothing
/// is lost locally, and a rate limit stops requests instead of retrying.
#[tokio::test]
async fn failing_github_degrades_to_local_results() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let client = support::start_with_github(
        &path,
        &fake,
        &[
            "--github-timeout",
            "0.5",
            "--source-timeout",
            "2",
            "--github-cache-seconds",
            "0",
        ],
    )
    .await;
    ok(&call(
        &client,
        "register_peer",
        register_args("steady", &["compute"]),
    )
    .await);

    // 500s.
    fake.inject(Fault::status(500).times(100));
    let reg = call(&client, "register_peer", register_args("during-500", &[])).await;
    let reg = ok(&reg).clone();
    assert_eq!(reg["outcomes"]["github"]["status"], "error");
    assert!(
        reg["outcomes"]["github"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("500")
    );
    assert_eq!(reg["outcomes"]["local_file"]["status"], "ok");
    let found = call(&client, "discover_peers", json!({})).await;
    let found = ok(&found).clone();
    assert_eq!(found["outcomes"]["github"]["status"], "error");
    assert_eq!(ids(&found), ["during-500", "steady"]);
    fake.clear_faults();

    // A 10 s stall: the answer comes as a timeout, from the 0.5 s request timeout.
    fake.inject(Fault::status(200).delay(Duration::from_secs(10)).times(100));
    let found = call(&client, "discover_peers", json!({})).await;
    let found = ok(&found).clone();
    assert_eq!(found["outcomes"]["github"]["status"], "timeout");
    assert!(
        found["outcomes"]["github"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("500ms"),
        "{found}"
    );
    assert_eq!(ids(&found), ["during-500", "steady"]);
    let beat = call(&client, "update_peer", json!({"peer_id": "steady"})).await;
    assert_eq!(ok(&beat)["outcomes"]["local_file"]["status"], "ok");
    fake.clear_faults();

    // A primary rate limit: reported with when to retry, and no request until then.
    fake.inject(
        Fault::status(403)
            .header("x-ratelimit-remaining", "0")
            .header(
                "x-ratelimit-reset",
                format!("{}", support::now() as u64 + 120),
            )
            .message("API rate limit exceeded for user ID 1."),
    );
    let limited = call(&client, "discover_peers", json!({})).await;
    let limited = ok(&limited).clone();
    assert_eq!(limited["outcomes"]["github"]["status"], "rate_limited");
    let retry = limited["outcomes"]["github"]["retry_after_seconds"]
        .as_u64()
        .expect("retry_after_seconds");
    assert!((100..=121).contains(&retry), "retry after {retry}");
    let before = fake.requests().len();
    let again = call(
        &client,
        "register_peer",
        register_args("while-limited", &[]),
    )
    .await;
    let again = ok(&again).clone();
    assert_eq!(again["outcomes"]["github"]["status"], "rate_limited");
    assert_eq!(
        fake.requests().len(),
        before,
        "no request is sent while rate limited"
    );

    // Only GitHub asked, and it is limited: the call fails as a whole, saying so.
    let only_github = call(&client, "discover_peers", json!({"sources": ["github"]})).await;
    assert!(err(&only_github).contains("github: rate_limited"));

    let file = read_registry(&path);
    for id in ["steady", "during-500", "while-limited"] {
        assert!(file["peers"][id].is_object(), "{id} lost locally");
    }
    client.cancel().await.expect("shutdown");
}

/// A secondary rate limit (429 with retry-after) is honoured too.
#[tokio::test]
async fn retry_after_is_honoured() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(&dir.path().join("r.json"), &fake, &[]).await;
    fake.inject(
        Fault::status(429)
            .header("retry-after", "37")
            .message("You have exceeded a secondary rate limit."),
    );
    let limited = call(&client, "register_peer", register_args("p", &[])).await;
    let limited = ok(&limited).clone();
    assert_eq!(limited["outcomes"]["github"]["status"], "rate_limited");
    assert_eq!(limited["outcomes"]["github"]["retry_after_seconds"], 37);
    assert!(
        limited["outcomes"]["github"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("retry after 37 s")
    );
    client.cancel().await.expect("shutdown");
}

/// Listings are conditional: an unchanged repository answers 304, which costs no quota.
#[tokio::test]
async fn unchanged_listings_cost_no_quota() {
    let fake = FakeGitHub::start().await;
    for i in 0..150 {
        seed_peer(&fake, &format!("p{i}"), &[], support::now(), 3600);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &["--github-cache-seconds", "0"],
    )
    .await;
    ok(&call(&client, "discover_peers", json!({"sources": ["github"]})).await);
    let quota = fake.rate_limit_remaining();
    fake.clear_log();
    let again = call(&client, "discover_peers", json!({"sources": ["github"]})).await;
    assert_eq!(ok(&again)["total_matched"], 150);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [304, 304]);
    assert_eq!(fake.rate_limit_remaining(), quota);
    client.cancel().await.expect("shutdown");
}

/// The token never appears in logs (RUST_LOG=trace), even when GitHub refuses it.
#[tokio::test]
async fn token_never_appears_in_logs() {
    let fake = FakeGitHub::start().await;
    let secret = "ghp_Distinctive0Secret0Token0For0Logs";
    fake.add_token(secret, "peer-bot");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = support::github_command(&dir.path().join("r.json"), &fake, &[]);
    cmd.env("GITHUB_TOKEN", secret).env("RUST_LOG", "trace");
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = stderr.expect("stderr");
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let client = ().serve(transport).await.expect("handshake");
    ok(&call(&client, "register_peer", register_args("p", &[])).await);
    ok(&call(&client, "discover_peers", json!({})).await);
    fake.inject(Fault::status(401).message("Bad credentials").times(10));
    let refused = call(&client, "register_peer", register_args("q", &[])).await;
    let refused = ok(&refused).clone();
    assert!(
        refused["outcomes"]["github"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("401")
    );
    assert!(!refused.to_string().contains(secret));
    client.cancel().await.expect("shutdown");
    let log = log.await.expect("stderr reader");
    assert!(log.contains("github request"), "trace logging was on");
    assert!(!log.contains(secret), "the token leaked into the logs");
}

/// Records progress notifications the server sends.
#[derive(Clone, Default)]
struct ProgressRecorder(Arc<Mutex<Vec<ProgressNotificationParam>>>);

impl ClientHandler for ProgressRecorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.0.lock().expect("lock").push(params);
    }
}

/// A discover over several pages of GitHub issues sends progress notifications (rmcp's
/// client asks for them on every request).
#[tokio::test]
async fn long_listings_report_progress() {
    let fake = FakeGitHub::start().await;
    for i in 0..250 {
        seed_peer(&fake, &format!("p{i}"), &[], support::now(), 3600);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = support::github_command(&dir.path().join("r.json"), &fake, &[]);
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let recorder = ProgressRecorder::default();
    let client = recorder.clone().serve(transport).await.expect("handshake");
    let found = client
        .call_tool(
            rmcp::model::CallToolRequestParams::new("discover_peers").with_arguments(
                json!({"max_peers": 1000})
                    .as_object()
                    .cloned()
                    .expect("object"),
            ),
        )
        .await
        .expect("discover");
    assert_eq!(ok(&found)["total_matched"], 250);
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = recorder.0.lock().expect("lock").clone();
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.len(), 3, "one notification per page");
    assert!(
        seen[2]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("250 GitHub issues")
    );
    client.cancel().await.expect("shutdown");
}
