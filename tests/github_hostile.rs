//! A hostile or broken GitHub API, driven through the real binary over stdio against the
//! fake GitHub on 127.0.0.1: absurd rate-limit headers, endless bodies, `Link` headers
//! that loop or never end, requests that hang, and a token smuggled into the API URL.
//! Every call answers with the `github` outcome that says what happened, the fake's
//! request log shows a bounded number of requests, and the server's memory stays small.

mod support;

use std::process::Stdio;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};
use support::fake_github::{FakeGitHub, Fault};
use support::{call, ids, ok};

const ISSUES: &str = "/repos/acme/peers/issues";

fn register_args(peer_id: &str) -> Value {
    json!({"peer_id": peer_id, "multiaddr": "/ip4/127.0.0.1/tcp/4001"})
}

/// A call, with a liveness bound so that a server that never answers fails the test
/// instead of hanging it (not a timing assertion: every call here answers in well under
/// a second when the server is right).
async fn answered(client: &support::Client, tool: &str, args: Value) -> Value {
    let result = tokio::time::timeout(Duration::from_secs(60), call(client, tool, args))
        .await
        .unwrap_or_else(|_| panic!("{tool} never answered"));
    ok(&result).clone()
}

/// The GitHub listing requests the fake received.
/// The GitHub outcome of `found` has `status` and a detail that mentions `text`.
fn github_outcome_says(found: &Value, status: &str, text: &str) {
    let github = &found["outcomes"]["github"];
    assert_eq!(github["status"], status, "{found}");
    let detail = github["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(text),
        "the detail does not say {text:?}: {github}"
    );
}

fn listing_requests(fake: &FakeGitHub) -> Vec<support::fake_github::LoggedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == ISSUES)
        .collect()
}

/// The peak resident memory of a process, in KiB, from /proc/<pid>/status (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A `retry-after` of 2^64-1, or an `x-ratelimit-reset` of 2^64-1 or a negative one,
/// once panicked the rate-limit arithmetic and left every later call unanswered. Now the
/// call answers `rate_limited` with a wait of at most an hour (a minute for a reset that
/// is not a number), the local file answers, and the next call answers too.
#[tokio::test]
async fn absurd_rate_limit_headers_answer_rate_limited() {
    let max = u64::MAX.to_string();
    let cases: Vec<(Fault, u64)> = vec![
        (Fault::status(429).header("retry-after", max.clone()), 3600),
        (
            Fault::status(403)
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", max.clone())
                .message("API rate limit exceeded for user ID 1."),
            3600,
        ),
        (
            Fault::status(403)
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", "-5")
                .message("API rate limit exceeded for user ID 1."),
            60,
        ),
    ];
    for (fault, wait) in cases {
        let fake = FakeGitHub::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let client = support::start_with_github(&dir.path().join("r.json"), &fake, &[]).await;
        fake.inject(fault.clone());
        let limited = answered(&client, "register_peer", register_args("p")).await;
        assert_eq!(limited["outcomes"]["local_file"]["status"], "ok");
        let github = &limited["outcomes"]["github"];
        assert_eq!(github["status"], "rate_limited", "{fault:?}: {limited}");
        assert_eq!(github["retry_after_seconds"], wait, "{fault:?}");
        let found = answered(&client, "discover_peers", json!({})).await;
        assert_eq!(ids(&found), ["p"], "local results still come back");
        assert_eq!(found["outcomes"]["github"]["status"], "rate_limited");
        assert!(
            found["outcomes"]["github"]["retry_after_seconds"]
                .as_u64()
                .is_some_and(|s| (1..=3600).contains(&s))
        );
        client.cancel().await.expect("shutdown");
    }
}

/// A response body that never ends is read up to 8 MiB and no further: the call answers
/// `error` naming the cap after one request, and the server's peak memory stays small.
#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = support::github_command(
        &dir.path().join("r.json"),
        &fake,
        &["--github-timeout", "60", "--source-timeout", "120"],
    );
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = transport.id().expect("server pid");
    let client = ().serve(transport).await.expect("handshake");
    fake.inject(Fault::endless_body().method("GET").path(ISSUES));
    let found = answered(&client, "discover_peers", json!({})).await;
    github_outcome_says(&found, "error", "larger than 8 MiB");
    assert_eq!(listing_requests(&fake).len(), 1);
    let peak = peak_rss_kib(pid);
    eprintln!("peak RSS of the server after an endless body: {} KiB", peak);
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
    client.cancel().await.expect("shutdown");
}

/// A `Link: rel="next"` that points back at the page it came from is followed at most
/// once more: the listing stops with an `error` that says so.
#[tokio::test]
async fn a_link_back_to_a_read_page_stops_the_listing() {
    let fake = FakeGitHub::start().await;
    support::seed_peer(&fake, "a", &[], support::now(), 3600);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(&dir.path().join("r.json"), &fake, &[]).await;
    fake.inject(
        Fault::link_to_self()
            .method("GET")
            .path(ISSUES)
            .times(100_000),
    );
    let found = answered(&client, "discover_peers", json!({})).await;
    github_outcome_says(&found, "error", "links back to a page already read");
    // The first page, then its own URL once (the first request has no `page=1`).
    let requests = listing_requests(&fake);
    assert!(requests.len() <= 2, "{} listing requests", requests.len());
    client.cancel().await.expect("shutdown");
}

/// `Link` headers that always name one more page stop at 100 pages (10,000 issues) with
/// an `error` that says so; exactly 100 requests were sent.
#[tokio::test]
async fn endless_next_links_stop_at_one_hundred_pages() {
    let fake = FakeGitHub::start().await;
    support::seed_peer(&fake, "a", &[], support::now(), 3600);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &["--source-timeout", "30"],
    )
    .await;
    fake.inject(
        Fault::endless_next_links()
            .method("GET")
            .path(ISSUES)
            .times(100_000),
    );
    let found = answered(&client, "discover_peers", json!({})).await;
    github_outcome_says(&found, "error", "more than 100 pages");
    assert_eq!(listing_requests(&fake).len(), 100);
    client.cancel().await.expect("shutdown");
}

/// The per-request timeout (`--github-timeout`), much shorter than the source timeout,
/// is what ends a request that hangs: the outcome is `timeout` after the request timeout
/// (its detail names 500ms, not the source's 30 s), the hung request is still unanswered
/// in the fake's log, and a later request proceeds.
#[tokio::test]
async fn the_request_timeout_ends_a_hung_request() {
    let fake = FakeGitHub::start().await;
    support::seed_peer(&fake, "remote", &[], support::now(), 3600);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start_with_github(
        &dir.path().join("r.json"),
        &fake,
        &[
            "--github-timeout",
            "0.5",
            "--source-timeout",
            "30",
            "--github-cache-seconds",
            "0",
        ],
    )
    .await;
    fake.inject(
        Fault::status(200)
            .method("GET")
            .path(ISSUES)
            .delay(Duration::from_secs(300)),
    );
    let found = answered(&client, "discover_peers", json!({})).await;
    // The request timeout, not the source timeout, ended it.
    github_outcome_says(&found, "timeout", "500ms");
    assert_eq!(found["outcomes"]["local_file"]["status"], "ok");

    let again = answered(&client, "discover_peers", json!({"sources": ["github"]})).await;
    assert_eq!(ids(&again), ["remote"]);
    let statuses: Vec<u16> = listing_requests(&fake).iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [0, 200],
        "the hung request is never answered; the next one is"
    );
    client.cancel().await.expect("shutdown");
}

/// A token in `--github-api-url`'s userinfo (or GITHUB_API_URL's) is refused at start:
/// one line on stderr that does not contain it, exit code 2.
#[tokio::test]
async fn an_api_url_with_userinfo_is_refused_without_echoing_it() {
    let secret = "ghp_SecretSmuggledIntoTheUrl0123";
    let url = format!("https://x-access-token:{secret}@127.0.0.1:9/api/v3");
    let by_flag = support::command()
        .args(["--github-repo", "acme/peers", "--github-api-url", &url])
        .env("GITHUB_TOKEN", "t")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run");
    let by_env = support::command()
        .args(["--github-repo", "acme/peers"])
        .env("GITHUB_API_URL", &url)
        .env("GITHUB_TOKEN", "t")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run");
    for out in [by_flag, by_env] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--github-api-url"), "{stderr}");
        assert!(!stderr.contains(secret), "the token leaked: {stderr}");
        assert!(!stderr.contains("x-access-token"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}
