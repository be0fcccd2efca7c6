//! The fake GitHub in `tests/support/fake_github.rs` against octocrab 0.54.9 itself and raw
//! requests: it must behave as GitHub documents, and octocrab's models must parse its JSON.

#[path = "support/fake_github.rs"]
mod fake_github;

use std::collections::HashSet;
use std::time::Duration;

use fake_github::{FakeGitHub, Fault, OWNER, REPO, SeedIssue, TOKEN};
use http::StatusCode;
use http::header::{ETAG, IF_NONE_MATCH, LINK};
use octocrab::models::issues::{Issue, IssueStateReason};
use octocrab::models::{IssueState, Label};
use octocrab::service::middleware::retry::RetryConfig;
use octocrab::{GitHubError, Octocrab, Page, params};
use serde_json::{Value, json};

const ISSUES: &str = "/repos/acme/peers/issues";

/// An octocrab client as the server builds it: no retries, explicit timeouts.
fn client_with(fake: &FakeGitHub, token: Option<&str>, read_timeout: Duration) -> Octocrab {
    let mut builder = Octocrab::builder();
    if let Some(token) = token {
        builder = builder.personal_token(token.to_owned());
    }
    builder
        .base_uri(fake.base_url())
        .expect("base uri")
        .add_retry_config(RetryConfig::None)
        .set_connect_timeout(Some(Duration::from_secs(2)))
        .set_read_timeout(Some(read_timeout))
        .build()
        .expect("octocrab client")
}

fn client(fake: &FakeGitHub) -> Octocrab {
    client_with(fake, Some(TOKEN), Duration::from_secs(5))
}

fn gh_error(result: Result<impl std::fmt::Debug, octocrab::Error>) -> Box<GitHubError> {
    match result {
        Err(octocrab::Error::GitHub { source, .. }) => source,
        other => panic!("expected a GitHub error, got {other:?}"),
    }
}

fn header<'a>(error: &'a GitHubError, name: &str) -> Option<&'a str> {
    error
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .and_then(|v| v.to_str().ok())
}

fn names(labels: &[Label]) -> Vec<&str> {
    labels.iter().map(|l| l.name.as_str()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn remaining(headers: &http::HeaderMap) -> u64 {
    headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-ratelimit-remaining")
}

/// Create, get, update and list through octocrab's typed API, and the fake's state agrees.
#[tokio::test]
async fn create_get_update_list_round_trip() {
    let fake = FakeGitHub::start().await;
    let gh = client(&fake);
    let issues = gh.issues(OWNER, REPO);

    let created: Issue = issues
        .create("Peer: a")
        .body("{\"peer_id\":\"a\"}")
        .labels(strings(&["peer-registry", "Peer-Active"]))
        .send()
        .await
        .expect("create");
    assert_eq!(created.number, 1);
    assert_eq!(created.title, "Peer: a");
    assert_eq!(created.user.login, "peer-bot");
    assert_eq!(created.state, IssueState::Open);
    assert!(created.pull_request.is_none());
    assert_eq!(names(&created.labels), ["peer-registry", "Peer-Active"]);
    assert!(
        created
            .labels
            .iter()
            .all(|l| l.color == "ededed" && !l.default)
    );
    assert!(fake.labels().contains(&"Peer-Active".to_owned()));

    let got = issues.get(created.number).await.expect("get");
    assert_eq!(got.body.as_deref(), Some("{\"peer_id\":\"a\"}"));
    assert_eq!(got.id, created.id);

    // "peer-active" matches the existing "Peer-Active" label, whatever the case.
    let labels = strings(&["peer-registry", "peer-inactive"]);
    let closed = issues
        .update(created.number)
        .body("{\"peer_id\":\"a\",\"v\":2}")
        .labels(&labels)
        .state(IssueState::Closed)
        .state_reason(IssueStateReason::NotPlanned)
        .send()
        .await
        .expect("update");
    assert_eq!(closed.state, IssueState::Closed);
    assert_eq!(closed.state_reason, Some(IssueStateReason::NotPlanned));
    assert!(closed.closed_at.is_some());
    assert_eq!(
        closed.closed_by.as_ref().map(|u| u.login.as_str()),
        Some("peer-bot")
    );
    assert_eq!(names(&closed.labels), ["peer-registry", "peer-inactive"]);

    let open = issues.list().send().await.expect("list open");
    assert!(open.items.is_empty(), "the default state is open");
    let all = issues
        .list()
        .state(params::State::All)
        .send()
        .await
        .expect("list all");
    assert_eq!(all.items.len(), 1);
    assert_eq!(
        all.items[0].body.as_deref(),
        Some("{\"peer_id\":\"a\",\"v\":2}")
    );
    assert!(all.next.is_none() && all.last.is_none());

    let reopened = issues
        .update(1)
        .state(IssueState::Open)
        .send()
        .await
        .expect("reopen");
    assert_eq!(reopened.state_reason, Some(IssueStateReason::Reopened));
    assert!(reopened.closed_at.is_none());

    let no_labels: Vec<String> = Vec::new();
    let cleared = issues
        .update(1)
        .labels(&no_labels)
        .send()
        .await
        .expect("clear labels");
    assert!(cleared.labels.is_empty(), "[] clears the labels");

    let snapshot = fake.issues();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].state, "open");
    assert_eq!(snapshot[0].state_reason.as_deref(), Some("reopened"));
    assert_eq!(snapshot[0].author, "peer-bot");
    assert!(snapshot[0].labels.is_empty());
    assert_eq!(fake.count("POST", ISSUES), 1);
    assert_eq!(fake.count("PATCH", "/repos/acme/peers/issues/1"), 3);
}

/// 250 issues at 100 a page: three pages joined by absolute `Link` headers on the fake's origin.
#[tokio::test]
async fn pages_follow_link_headers() {
    let fake = FakeGitHub::start().await;
    for i in 0..250 {
        fake.seed_issue(SeedIssue::new(
            &format!("Peer: p{i}"),
            "{}",
            &["peer-registry"],
        ));
    }
    fake.seed_issue(SeedIssue::new("unlabelled", "", &[]));
    let gh = client(&fake);
    let wanted = strings(&["peer-registry"]);
    let first = gh
        .issues(OWNER, REPO)
        .list()
        .labels(&wanted)
        .state(params::State::Open)
        .per_page(100)
        .send()
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 100);
    assert_eq!(first.items[0].number, 250, "newest first");
    assert!(first.prev.is_none() && first.first.is_none());
    assert_eq!(first.number_of_pages(), Some(3));
    let next = first.next.clone().expect("rel=next");
    assert_eq!(
        next.authority().map(|a| a.as_str()),
        fake.base_url().strip_prefix("http://")
    );
    let query = next.query().expect("query");
    assert!(query.contains("labels=peer-registry"), "{query}");
    assert!(
        query.contains("per_page=100") && query.contains("page=2"),
        "{query}"
    );

    let second: Page<Issue> = gh
        .get_page(&first.next)
        .await
        .expect("second page")
        .expect("some page");
    assert_eq!(second.items.len(), 100);
    assert_eq!(second.items[0].number, 150);
    assert!(second.prev.is_some() && second.first.is_some() && second.next.is_some());

    let everything = gh.all_pages(first).await.expect("all pages");
    assert_eq!(everything.len(), 250);
    let numbers: Vec<u64> = everything.iter().map(|i| i.number).collect();
    assert_eq!(numbers, (1..=250).rev().collect::<Vec<u64>>());
    // 1 first page + 1 get_page + 2 more by all_pages.
    assert_eq!(fake.count("GET", ISSUES), 4);

    // The last page links back but not forward.
    let resp = gh
        ._get(format!("{ISSUES}?labels=peer-registry&per_page=100&page=3"))
        .await
        .expect("raw page 3");
    let link = resp
        .headers()
        .get(LINK)
        .and_then(|v| v.to_str().ok())
        .expect("link")
        .to_owned();
    assert!(
        link.contains("rel=\"prev\"") && link.contains("rel=\"first\""),
        "{link}"
    );
    assert!(
        !link.contains("rel=\"next\"") && !link.contains("rel=\"last\""),
        "{link}"
    );
}

/// `per_page` defaults to 30 and stops at 100; `creator`, `sort`, `direction` and `state` filter.
#[tokio::test]
async fn list_parameters_follow_github() {
    let fake = FakeGitHub::start().await;
    for i in 0..120 {
        let mut seed = SeedIssue::new(&format!("i{i}"), "", &[]);
        if i % 2 == 0 {
            seed.author = "someone-else".to_owned();
        }
        seed.open = i < 110;
        fake.seed_issue(seed);
    }
    let gh = client(&fake);
    let issues = gh.issues(OWNER, REPO);

    let default = issues.list().send().await.expect("default page");
    assert_eq!(default.items.len(), 30);
    assert_eq!(default.number_of_pages(), Some(4), "110 open issues");

    let resp = gh
        ._get(format!("{ISSUES}?per_page=500"))
        .await
        .expect("raw per_page=500");
    let text = gh.body_to_string(resp).await.expect("body");
    let items: Vec<Value> = serde_json::from_str(&text).expect("array");
    assert_eq!(items.len(), 100, "per_page is clamped to 100");

    let mine = issues
        .list()
        .creator("peer-bot")
        .state(params::State::All)
        .per_page(100)
        .send()
        .await
        .expect("creator");
    let mine = gh.all_pages(mine).await.expect("all");
    assert_eq!(mine.len(), 60);
    assert!(mine.iter().all(|i| i.user.login == "peer-bot"));

    let closed = issues
        .list()
        .state(params::State::Closed)
        .direction(params::Direction::Ascending)
        .send()
        .await
        .expect("closed");
    let numbers: Vec<u64> = closed.items.iter().map(|i| i.number).collect();
    assert_eq!(numbers, (111..=120).collect::<Vec<u64>>());

    // sort=updated puts the issue edited last first.
    issues.update(5).body("edited").send().await.expect("edit");
    let updated = issues
        .list()
        .sort(params::issues::Sort::Updated)
        .send()
        .await
        .expect("by updated");
    assert_eq!(updated.items[0].number, 5);

    let bad = gh
        ._get(format!("{ISSUES}?state=shut"))
        .await
        .expect("raw bad state");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// A comma-separated `labels` filter keeps issues that have all of them, in any case.
#[tokio::test]
async fn labels_filter_is_all_of() {
    let fake = FakeGitHub::start().await;
    let both = fake.seed_issue(SeedIssue::new(
        "both",
        "",
        &["peer-registry", "capability-relay"],
    ));
    fake.seed_issue(SeedIssue::new("registry only", "", &["peer-registry"]));
    fake.seed_issue(SeedIssue::new("relay only", "", &["capability-relay"]));
    let three = fake.seed_issue(SeedIssue::new(
        "three",
        "",
        &["capability-store", "peer-registry", "capability-relay"],
    ));
    let gh = client(&fake);
    let issues = gh.issues(OWNER, REPO);

    let wanted = strings(&["peer-registry", "capability-relay"]);
    let page = issues.list().labels(&wanted).send().await.expect("list");
    let numbers: Vec<u64> = page.items.iter().map(|i| i.number).collect();
    assert_eq!(numbers, [three, both]);

    let shouting = strings(&["PEER-REGISTRY", "Capability-Relay"]);
    let page = issues.list().labels(&shouting).send().await.expect("list");
    assert_eq!(page.items.len(), 2, "label names match in any case");

    let none = strings(&["peer-registry", "capability-missing"]);
    let page = issues.list().labels(&none).send().await.expect("list");
    assert!(page.items.is_empty());

    let raw = gh
        ._get(format!("{ISSUES}?labels=peer-registry,capability-store"))
        .await
        .expect("raw comma");
    let text = gh.body_to_string(raw).await.expect("body");
    let items: Vec<Issue> = serde_json::from_str(&text).expect("issues");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].number, three);
}

/// Pull requests are issues with `pull_request` set and appear in issue listings.
#[tokio::test]
async fn pull_requests_are_listed_as_issues() {
    let fake = FakeGitHub::start().await;
    let issue = fake.seed_issue(SeedIssue::new("Peer: a", "{}", &["peer-registry"]));
    let pr = fake.seed_pull_request("Peer: spoof", "{}", &["peer-registry"]);
    let gh = client(&fake);
    let wanted = strings(&["peer-registry"]);
    let page = gh
        .issues(OWNER, REPO)
        .list()
        .labels(&wanted)
        .send()
        .await
        .expect("list");
    assert_eq!(page.items.len(), 2);
    let listed_pr = page
        .items
        .iter()
        .find(|i| i.number == pr)
        .expect("the PR is listed");
    let link = listed_pr.pull_request.as_ref().expect("pull_request set");
    assert!(link.url.path().ends_with(&format!("/pulls/{pr}")));
    assert!(link.diff_url.path().ends_with(".diff"));
    assert!(
        page.items
            .iter()
            .find(|i| i.number == issue)
            .is_some_and(|i| i.pull_request.is_none())
    );
    let got = gh.issues(OWNER, REPO).get(pr).await.expect("get PR");
    assert!(got.pull_request.is_some());
    let snapshot = fake.issue(pr).expect("snapshot");
    assert!(snapshot.is_pull_request);
}

/// A matching `If-None-Match` gets a 304 with no body and no quota spent; a write changes the ETag.
#[tokio::test]
async fn etag_gives_free_304_until_a_write() {
    let fake = FakeGitHub::start().await;
    fake.seed_issue(SeedIssue::new("Peer: a", "{}", &["peer-registry"]));
    let gh = client(&fake);
    let route = format!("{ISSUES}?labels=peer-registry&state=open&per_page=100");

    let first = gh._get(route.as_str()).await.expect("first");
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers().get(ETAG).cloned().expect("etag");
    assert!(etag.to_str().expect("ascii").starts_with("W/\""));
    let before = remaining(first.headers());
    assert_eq!(before, 4999);

    let mut headers = http::HeaderMap::new();
    headers.insert(IF_NONE_MATCH, etag.clone());
    let cached = gh
        ._get_with_headers(route.as_str(), Some(headers.clone()))
        .await
        .expect("conditional");
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(remaining(cached.headers()), before, "a 304 is free");
    assert_eq!(cached.headers().get(ETAG), Some(&etag));
    let body = gh.body_to_string(cached).await.expect("body");
    assert!(body.is_empty());
    assert_eq!(fake.rate_limit_remaining(), before);

    gh.issues(OWNER, REPO)
        .update(1)
        .body("{\"v\":2}")
        .send()
        .await
        .expect("write");
    let fresh = gh
        ._get_with_headers(route.as_str(), Some(headers))
        .await
        .expect("after write");
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_ne!(fresh.headers().get(ETAG), Some(&etag));
    assert_eq!(remaining(fresh.headers()), before - 2);

    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 304, 200, 200]);
    assert_eq!(
        fake.requests()[1].header("if-none-match"),
        etag.to_str().ok()
    );
}

/// No token or an unknown one is 401 `Bad credentials`, logged with its status.
#[tokio::test]
async fn missing_or_unknown_token_is_401() {
    let fake = FakeGitHub::start().await;
    for token in [None, Some("wrong-token")] {
        let gh = client_with(&fake, token, Duration::from_secs(5));
        let err = gh_error(gh.issues(OWNER, REPO).list().send().await);
        assert_eq!(err.status_code, StatusCode::UNAUTHORIZED);
        assert_eq!(err.message, "Bad credentials");
        assert_eq!(
            err.documentation_url.as_deref(),
            Some("https://docs.github.com/rest")
        );
    }
    let log = fake.requests();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.status == 401));
    assert_eq!(log[0].header("authorization"), None);
    assert_eq!(log[1].header("authorization"), Some("Bearer wrong-token"));

    fake.add_token("other-token", "other-bot");
    let gh = client_with(&fake, Some("other-token"), Duration::from_secs(5));
    let issue = gh
        .issues(OWNER, REPO)
        .create("Peer: b")
        .send()
        .await
        .expect("create with the added token");
    assert_eq!(issue.user.login, "other-bot");
}

/// Injected 500, 429 with `retry-after` and 403 with `x-ratelimit-remaining: 0` reach octocrab
/// as errors with that status and those headers, once each.
#[tokio::test]
async fn injected_faults_surface_as_octocrab_errors() {
    let fake = FakeGitHub::start().await;
    let gh = client(&fake);
    let issues = gh.issues(OWNER, REPO);

    fake.inject(Fault::status(500));
    let err = gh_error(issues.list().send().await);
    assert_eq!(err.status_code, StatusCode::INTERNAL_SERVER_ERROR);

    fake.inject(Fault {
        method: Some("POST"),
        path_contains: Some("/issues"),
        headers: vec![("retry-after", "30".to_owned())],
        body: json!({"message": "You have exceeded a secondary rate limit."}),
        ..Fault::status(429)
    });
    // The GET does not match the POST-only fault.
    issues.list().send().await.expect("GET passes");
    let err = gh_error(issues.create("Peer: a").send().await);
    assert_eq!(err.status_code, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err.message, "You have exceeded a secondary rate limit.");
    assert_eq!(header(&err, "retry-after"), Some("30"));
    assert!(
        fake.issues().is_empty(),
        "a fault without after_commit changes nothing"
    );

    fake.inject(
        Fault::status(403)
            .header("x-ratelimit-remaining", "0")
            .message("API rate limit exceeded")
            .times(2),
    );
    for _ in 0..2 {
        let err = gh_error(issues.get(1).await);
        assert_eq!(err.status_code, StatusCode::FORBIDDEN);
        assert_eq!(header(&err, "x-ratelimit-remaining"), Some("0"));
        assert!(err.rate_limit_reset.is_some());
    }
    issues
        .create("Peer: a")
        .send()
        .await
        .expect("faults used up");

    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 200, 429, 403, 403, 201]);
}

/// With the primary quota at 0 every request is 403 with `x-ratelimit-remaining: 0`, and
/// `GET /rate_limit` (free, per GitHub) still answers.
#[tokio::test]
async fn exhausted_quota_is_403() {
    let fake = FakeGitHub::start().await;
    let gh = client(&fake);
    gh.issues(OWNER, REPO).list().send().await.expect("list");
    let limits = gh.ratelimit().get().await.expect("rate_limit");
    assert_eq!(limits.resources.core.limit, 5000);
    assert_eq!(limits.resources.core.remaining, 4999);
    assert_eq!(limits.resources.core.used, 1);
    assert!(limits.resources.core.reset > 0);
    assert_eq!(fake.rate_limit_remaining(), 4999, "/rate_limit is free");

    fake.set_rate_limit_remaining(0);
    let err = gh_error(gh.issues(OWNER, REPO).create("Peer: a").send().await);
    assert_eq!(err.status_code, StatusCode::FORBIDDEN);
    assert!(err.message.starts_with("API rate limit exceeded"));
    assert_eq!(header(&err, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&err, "x-ratelimit-limit"), Some("5000"));
    assert_eq!(header(&err, "x-ratelimit-resource"), Some("core"));
    assert!(fake.issues().is_empty());
    let limits = gh.ratelimit().get().await.expect("rate_limit at 0");
    assert_eq!(limits.resources.core.remaining, 0);
}

/// An `after_commit` 502 on POST creates the issue and still fails the call.
#[tokio::test]
async fn after_commit_fault_keeps_the_write() {
    let fake = FakeGitHub::start().await;
    let gh = client(&fake);
    fake.inject(Fault {
        method: Some("POST"),
        after_commit: true,
        ..Fault::status(502)
    });
    let err = gh_error(
        gh.issues(OWNER, REPO)
            .create("Peer: a")
            .labels(strings(&["peer-registry"]))
            .send()
            .await,
    );
    assert_eq!(err.status_code, StatusCode::BAD_GATEWAY);
    let issues = fake.issues();
    assert_eq!(issues.len(), 1, "the issue was created before the 502");
    assert_eq!(issues[0].title, "Peer: a");
    assert_eq!(issues[0].labels, ["peer-registry"]);
    assert_eq!(fake.count("POST", ISSUES), 1);
    assert_eq!(fake.requests()[0].status, 502);
}

/// A delayed fault outlasts the client's read timeout: the call fails as a service error
/// while the fake is still answering (its log shows status 0), not after the delay.
#[tokio::test]
async fn slow_answer_trips_the_read_timeout() {
    let fake = FakeGitHub::start().await;
    let gh = client_with(&fake, Some(TOKEN), Duration::from_millis(150));
    fake.inject(Fault {
        delay: Duration::from_secs(5),
        ..Fault::status(200)
    });
    let result = gh.issues(OWNER, REPO).list().send().await;
    assert!(
        matches!(result, Err(octocrab::Error::Service { .. })),
        "{result:?}"
    );
    assert_eq!(fake.count("GET", ISSUES), 1);
    assert_eq!(fake.requests()[0].status, 0, "still being answered");

    fake.set_latency(Duration::from_millis(400));
    let result = gh.issues(OWNER, REPO).create("Peer: slow").send().await;
    assert!(result.is_err(), "latency beyond the read timeout");
    assert_eq!(fake.issues().len(), 1, "the write happens before the delay");
}

/// Validation answers are GitHub's 422 `Validation Failed` with their `errors` detail.
#[tokio::test]
async fn validation_errors_match_github() {
    let fake = FakeGitHub::start().await;
    let gh = client(&fake);

    let resp = gh
        ._post(ISSUES, Some(&json!({"body": "no title"})))
        .await
        .expect("raw post");
    let err = gh_error(octocrab::map_github_error(resp).await.map(drop));
    assert_eq!(err.status_code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err.message, "Validation Failed");
    assert_eq!(
        err.errors,
        Some(vec![
            json!({"resource": "Issue", "code": "missing_field", "field": "title"})
        ])
    );

    let err = gh_error(
        gh.issues(OWNER, REPO)
            .create("Peer: big")
            .body("x".repeat(65_537))
            .send()
            .await,
    );
    assert_eq!(err.status_code, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = err.errors.as_ref().and_then(|e| e.first()).expect("detail");
    assert_eq!(detail["field"], "body");
    assert_eq!(detail["code"], "custom");
    assert_eq!(
        detail["message"],
        "body is too long (maximum is 65536 characters)"
    );
    gh.issues(OWNER, REPO)
        .create("Peer: fits")
        .body("x".repeat(65_536))
        .send()
        .await
        .expect("65,536 characters fit");
    assert_eq!(fake.issues().len(), 1);

    let resp = gh
        ._patch(format!("{ISSUES}/1"), Some(&json!({"state": "shut"})))
        .await
        .expect("raw patch");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// The label endpoints add, replace, remove (404 when absent) and clear an issue's labels.
#[tokio::test]
async fn label_endpoints_follow_github() {
    let fake = FakeGitHub::start().await;
    let number = fake.seed_issue(SeedIssue::new("Peer: a", "{}", &["peer-registry"]));
    let gh = client(&fake);
    let issues = gh.issues(OWNER, REPO);

    let labels = issues
        .add_labels(number, &strings(&["peer-active", "PEER-REGISTRY"]))
        .await
        .expect("add");
    assert_eq!(names(&labels), ["peer-registry", "peer-active"]);

    let labels = issues
        .remove_label(number, "Peer-Active")
        .await
        .expect("remove");
    assert_eq!(names(&labels), ["peer-registry"]);

    let err = gh_error(issues.remove_label(number, "peer-active").await);
    assert_eq!(err.status_code, StatusCode::NOT_FOUND);
    assert_eq!(err.message, "Label does not exist");

    let labels = issues
        .replace_all_labels(number, &strings(&["capability relay", "bug"]))
        .await
        .expect("replace");
    assert_eq!(names(&labels), ["capability relay", "bug"]);
    assert!(labels[1].default, "bug is one of GitHub's default labels");
    let labels = issues
        .remove_label(number, "capability relay")
        .await
        .expect("remove a name with a space");
    assert_eq!(names(&labels), ["bug"]);

    issues.remove_all_labels(number).await.expect("clear");
    assert!(fake.issue(number).expect("issue").labels.is_empty());

    let err = gh_error(issues.get(999).await);
    assert_eq!(err.status_code, StatusCode::NOT_FOUND);
    let err = gh_error(gh.issues(OWNER, "elsewhere").list().send().await);
    assert_eq!(err.status_code, StatusCode::NOT_FOUND);
    assert_eq!(err.message, "Not Found");
}

/// A user without push access gets its labels silently dropped, as GitHub does.
#[tokio::test]
async fn labels_from_readers_are_dropped() {
    let fake = FakeGitHub::start().await;
    fake.add_reader_token("reader-token", "stranger");
    let gh = client_with(&fake, Some("reader-token"), Duration::from_secs(5));
    let issue = gh
        .issues(OWNER, REPO)
        .create("Peer: spoof")
        .labels(strings(&["peer-registry"]))
        .send()
        .await
        .expect("create");
    assert!(issue.labels.is_empty());
    assert_eq!(issue.user.login, "stranger");
    let wanted = strings(&["peer-registry"]);
    let page = client(&fake)
        .issues(OWNER, REPO)
        .list()
        .labels(&wanted)
        .send()
        .await
        .expect("list");
    assert!(page.items.is_empty());
}

/// Every answer carries the `x-ratelimit-*` headers, and each counted request spends one.
#[tokio::test]
async fn every_answer_carries_rate_limit_headers() {
    let fake = FakeGitHub::start().await;
    let gh = client(&fake);
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let resp = gh._get(ISSUES).await.expect("get");
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-used",
            "x-ratelimit-reset",
            "x-ratelimit-resource",
        ] {
            assert!(resp.headers().contains_key(name), "{name}");
        }
        seen.insert(remaining(resp.headers()));
    }
    assert_eq!(seen, HashSet::from([4999, 4998, 4997]));
    let resp = gh
        ._post(ISSUES, Some(&json!({"title": "Peer: a"})))
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(remaining(resp.headers()), 4996);
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{}{ISSUES}/1", fake.base_url()).as_str())
    );
    let logged = &fake.requests()[3];
    assert_eq!(logged.json()["title"], "Peer: a");
    assert_eq!(logged.header("authorization"), Some("Bearer test-token"));
}

/// octocrab's own ETag cache gets free 304s from the fake and fresh data after a write.
#[tokio::test]
async fn octocrab_in_memory_cache_revalidates() {
    let fake = FakeGitHub::start().await;
    fake.seed_issue(SeedIssue::new("Peer: a", "{}", &["peer-registry"]));
    let gh = Octocrab::builder()
        .personal_token(TOKEN.to_owned())
        .base_uri(fake.base_url())
        .expect("base uri")
        .add_retry_config(RetryConfig::None)
        .cache(octocrab::service::middleware::cache::mem::InMemoryCache::new())
        .build()
        .expect("client");
    let wanted = strings(&["peer-registry"]);
    let issues = gh.issues(OWNER, REPO);
    let list = || issues.list().labels(&wanted).send();
    let first = list().await.expect("first");
    let again = list().await.expect("cached");
    assert_eq!(first.items, again.items);
    assert_eq!(
        fake.rate_limit_remaining(),
        4999,
        "the revalidation was free"
    );
    issues
        .create("Peer: b")
        .labels(wanted.clone())
        .send()
        .await
        .expect("write");
    let fresh = list().await.expect("fresh");
    assert_eq!(fresh.items.len(), 2);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 304, 201, 200]);
}

/// The hostile faults do what they say: a `Link` back to the requested URL, `Link`s to
/// one more page past the last, and a 200 body that goes on past any cap.
#[tokio::test]
async fn hostile_faults_loop_and_never_end() {
    use http_body_util::BodyExt;

    let fake = FakeGitHub::start().await;
    fake.seed_issue(SeedIssue::new("Peer: a", "{}", &["peer-registry"]));
    let gh = client(&fake);
    let route = format!("{ISSUES}?state=open&per_page=100");

    fake.inject(Fault::link_to_self().method("GET"));
    let response = gh._get(route.as_str()).await.expect("answer");
    let link = response.headers()[LINK].to_str().expect("link").to_owned();
    assert_eq!(link, format!("<{}{route}>; rel=\"next\"", fake.base_url()));

    fake.inject(Fault::endless_next_links().method("GET"));
    let page_7 = format!("{route}&page=7");
    let response = gh._get(page_7.as_str()).await.expect("answer");
    let link = response.headers()[LINK].to_str().expect("link").to_owned();
    assert!(
        link.contains("page=8") && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        body.as_ref(),
        b"[]",
        "past the last page the pages are empty"
    );

    fake.inject(Fault::endless_body().method("GET"));
    let response = gh._get(route.as_str()).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut read = 0usize;
    while read <= 16 << 20 {
        let frame = body.frame().await.expect("more").expect("frame");
        read += frame.into_data().map_or(0, |d| d.len());
    }
    assert!(read > 16 << 20);
}
