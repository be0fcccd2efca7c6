//! A stateful fake of the GitHub REST issues API, served in-process on 127.0.0.1.
//!
//! It follows GitHub's documented behaviour (docs.github.com/rest/issues), not any client's
//! assumptions, and returns objects complete enough for octocrab's models:
//!
//! - routes under `/repos/{owner}/{repo}/`: `GET/POST issues`, `GET/PATCH issues/{number}`,
//!   `GET/POST/PUT/DELETE issues/{number}/labels`, `DELETE issues/{number}/labels/{name}`;
//!   plus `GET /rate_limit` and `GET /user`. Anything else is 404 `Not Found`;
//! - auth by `authorization: Bearer <token>` (or `token <token>`), 401 `Bad credentials`
//!   otherwise; the issue's author is the token's login;
//! - pull requests are issues with a `pull_request` object and show up in issue listings;
//! - listings filter by `state`, `labels` (all of them, case-insensitive) and `creator`, sort by
//!   `created`/`updated`, page with `per_page` (default 30, at most 100) and `page`, and link
//!   pages with an absolute `Link` header on the fake's own origin;
//! - unknown labels are created on first use (colour `ededed`), `PATCH` labels replace the set;
//! - every response carries `x-ratelimit-*`; every request but a 304 (and `GET /rate_limit`)
//!   uses one unit of the primary quota; at 0 every request gets 403;
//! - `GET` answers carry a weak ETag of their content; a matching `If-None-Match` gets a 304
//!   with an empty body that costs no quota;
//! - faults (status, headers, body, delay, optionally after performing the operation) are
//!   queued and consumed by the next matching requests; every request is logged.
//!
//! Each request is handled in its own task, so a client that gives up (a timeout) does not
//! cancel it: the operation and its log entry complete either way.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get};
use http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH, LINK, LOCATION};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The repository the fake serves.
pub const OWNER: &str = "acme";
pub const REPO: &str = "peers";
/// The token accepted from the start; its user is [`LOGIN`].
pub const TOKEN: &str = "test-token";
/// The login of [`TOKEN`].
pub const LOGIN: &str = "peer-bot";
/// GitHub's primary quota for a personal token, per hour.
pub const RATE_LIMIT: u64 = 5000;
/// GitHub's limits on an issue's text.
pub const MAX_BODY_CHARS: usize = 65_536;
pub const MAX_TITLE_CHARS: usize = 256;
pub const MAX_LABEL_CHARS: usize = 50;
/// The login that authors seeded pull requests.
pub const PR_AUTHOR: &str = "octocat";

const DOCS: &str = "https://docs.github.com/rest";
const DOC_LIST: &str = "https://docs.github.com/rest/issues/issues#list-repository-issues";
const DOC_CREATE: &str = "https://docs.github.com/rest/issues/issues#create-an-issue";
const DOC_GET: &str = "https://docs.github.com/rest/issues/issues#get-an-issue";
const DOC_UPDATE: &str = "https://docs.github.com/rest/issues/issues#update-an-issue";
const DOC_LABELS: &str = "https://docs.github.com/rest/issues/labels";
const DOC_RATE: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-the-primary-rate-limit";

/// An issue to put in the repository before a test, as if made on github.com.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedIssue {
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    /// The login shown as `user.login`.
    pub author: String,
    /// false: closed as completed.
    pub open: bool,
}

impl Default for SeedIssue {
    /// An open issue by [`LOGIN`] with an empty title, body and no labels.
    fn default() -> SeedIssue {
        SeedIssue::new("", "", &[])
    }
}

impl SeedIssue {
    /// An open issue by [`LOGIN`].
    pub fn new(title: &str, body: &str, labels: &[&str]) -> SeedIssue {
        SeedIssue {
            title: title.to_owned(),
            body: body.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            author: LOGIN.to_owned(),
            open: true,
        }
    }
}

/// What the fake holds for one issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueSnapshot {
    pub number: u64,
    pub title: String,
    pub body: Option<String>,
    pub labels: Vec<String>,
    /// "open" or "closed".
    pub state: String,
    pub state_reason: Option<String>,
    pub author: String,
    pub is_pull_request: bool,
}

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case names, in the order received.
    pub headers: Vec<(String, String)>,
    /// The final status sent back; 0 while the request is still being answered.
    pub status: u16,
    /// The request body as text (empty when none).
    pub body: String,
}

impl LoggedRequest {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, `Value::Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A canned failure, queued with [`FakeGitHub::inject`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// None = any method.
    pub method: Option<&'static str>,
    /// None = any path; otherwise a substring of the path (the query is not looked at).
    pub path_contains: Option<&'static str>,
    pub status: u16,
    /// Set after the usual headers, so they override them (e.g. `x-ratelimit-remaining`).
    pub headers: Vec<(&'static str, String)>,
    /// Sent as JSON; `Value::Null` sends an empty body.
    pub body: serde_json::Value,
    /// Sleep before answering.
    pub delay: Duration,
    /// true: perform the real operation first, then answer with this fault.
    pub after_commit: bool,
    /// How many matching requests it applies to.
    pub times: usize,
    /// What the fault does; [`FaultKind::Replace`] unless made by one of the hostile
    /// constructors.
    pub kind: FaultKind,
}

/// How a fault changes the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The answer is replaced by the fault's status, headers and body.
    Replace,
    /// A 200 whose body never ends (64 KiB chunks, as fast as the client reads).
    EndlessBody,
    /// The real answer, with `Link: <the requested URL>; rel="next"`.
    LinkToSelf,
    /// The real answer, with a `Link` to the next page number, always (past the last
    /// page the pages are empty): a listing that never ends.
    EndlessNextLinks,
}

impl Fault {
    /// Any method and path, once, no extra headers, body `{"message": <reason phrase>}`, no delay.
    pub fn status(status: u16) -> Fault {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Fault {
            method: None,
            path_contains: None,
            status,
            headers: Vec::new(),
            body: json!({ "message": reason }),
            delay: Duration::ZERO,
            after_commit: false,
            times: 1,
            kind: FaultKind::Replace,
        }
    }

    /// A 200 whose body streams forever, for any method and path, once.
    pub fn endless_body() -> Fault {
        Fault {
            kind: FaultKind::EndlessBody,
            body: Value::Null,
            ..Fault::status(200)
        }
    }

    /// The real answer with a `Link` `rel="next"` pointing back at the request's own URL.
    pub fn link_to_self() -> Fault {
        Fault {
            kind: FaultKind::LinkToSelf,
            ..Fault::status(200)
        }
    }

    /// The real answer with a `Link` `rel="next"` to page N+1, however many pages exist.
    pub fn endless_next_links() -> Fault {
        Fault {
            kind: FaultKind::EndlessNextLinks,
            ..Fault::status(200)
        }
    }

    /// Only requests with this method.
    pub fn method(mut self, method: &'static str) -> Fault {
        self.method = Some(method);
        self
    }

    /// Only requests whose path contains this.
    pub fn path(mut self, path_contains: &'static str) -> Fault {
        self.path_contains = Some(path_contains);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Fault {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Value) -> Fault {
        self.body = body;
        self
    }

    pub fn message(self, message: &str) -> Fault {
        self.body(json!({ "message": message, "documentation_url": DOCS }))
    }

    pub fn delay(mut self, delay: Duration) -> Fault {
        self.delay = delay;
        self
    }

    pub fn after_commit(mut self) -> Fault {
        self.after_commit = true;
        self
    }

    pub fn times(mut self, times: usize) -> Fault {
        self.times = times;
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0
            && self.method.is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path_contains.is_none_or(|p| path.contains(p))
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeGitHub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGitHub {
    /// Starts a fake on a free port of 127.0.0.1.
    pub async fn start() -> FakeGitHub {
        FakeGitHub::start_on(0)
            .await
            .expect("bind the fake GitHub on 127.0.0.1")
    }

    /// Starts a fake on 127.0.0.1:`port` (0 = any free port).
    pub async fn start_on(port: u16) -> std::io::Result<FakeGitHub> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            state: Mutex::new(Repo::new()),
        });
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeGitHub {
            shared,
            addr,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, for `base_uri` / `GITHUB_API_URL`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts `token` as `login`, a user with push access (labels are kept).
    pub fn add_token(&self, token: &str, login: &str) {
        self.shared.lock().add_token(token, login, true);
    }

    /// Accepts `token` as `login`, a user with read access only: as on GitHub, the labels it
    /// sets when creating or editing an issue are silently dropped, it may edit only its own
    /// issues, and the label endpoints answer it 403.
    pub fn add_reader_token(&self, token: &str, login: &str) {
        self.shared.lock().add_token(token, login, false);
    }

    /// Adds many issues at once (one lock, no request, no quota); returns their numbers.
    pub fn seed_many(&self, seeds: impl IntoIterator<Item = SeedIssue>) -> Vec<u64> {
        let mut repo = self.shared.lock();
        seeds
            .into_iter()
            .map(|seed| {
                let labels = seed.labels.iter().map(|l| repo.ensure_label(l)).collect();
                repo.insert(
                    seed.title,
                    Some(seed.body),
                    labels,
                    seed.author,
                    seed.open,
                    false,
                )
            })
            .collect()
    }

    /// Adds an issue as if made on github.com (no request, no quota); returns its number.
    pub fn seed_issue(&self, seed: SeedIssue) -> u64 {
        let mut repo = self.shared.lock();
        let labels = seed.labels.iter().map(|l| repo.ensure_label(l)).collect();
        repo.insert(
            seed.title,
            Some(seed.body),
            labels,
            seed.author,
            seed.open,
            false,
        )
    }

    /// Adds an open pull request by [`PR_AUTHOR`]; returns its number.
    pub fn seed_pull_request(&self, title: &str, body: &str, labels: &[&str]) -> u64 {
        let mut repo = self.shared.lock();
        let labels = labels.iter().map(|l| repo.ensure_label(l)).collect();
        repo.insert(
            title.to_owned(),
            Some(body.to_owned()),
            labels,
            PR_AUTHOR.to_owned(),
            true,
            true,
        )
    }

    /// Every issue and pull request, by number.
    pub fn issues(&self) -> Vec<IssueSnapshot> {
        self.shared
            .lock()
            .issues
            .iter()
            .map(Issue::snapshot)
            .collect()
    }

    pub fn issue(&self, number: u64) -> Option<IssueSnapshot> {
        self.shared
            .lock()
            .issues
            .iter()
            .find(|i| i.number == number)
            .map(Issue::snapshot)
    }

    /// The repository's label names, in creation order (GitHub's defaults first).
    pub fn labels(&self) -> Vec<String> {
        self.shared
            .lock()
            .labels
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }

    /// Queues a fault; it is consumed by the next `fault.times` matching requests.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Delay before every response (0 = none). The operation itself happens first.
    pub fn set_latency(&self, delay: Duration) {
        self.shared.lock().latency = delay;
    }

    /// Sets what is left of the primary quota; at 0 every request gets 403.
    pub fn set_rate_limit_remaining(&self, remaining: u64) {
        self.shared.lock().remaining = remaining;
    }

    pub fn rate_limit_remaining(&self) -> u64 {
        self.shared.lock().remaining
    }

    /// The request log, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().log.clone()
    }

    /// Requests whose method matches (any case) and whose path starts with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.starts_with(path_prefix))
            .count()
    }

    pub fn clear_log(&self) {
        self.shared.lock().log.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// State

struct Shared {
    base_url: String,
    state: Mutex<Repo>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Repo> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Fake = Arc<Shared>;

struct Token {
    token: String,
    login: String,
    can_push: bool,
}

/// Who made a request, put in the request's extensions by the gate.
#[derive(Clone)]
struct Caller {
    login: String,
    can_push: bool,
}

struct LabelDef {
    id: u64,
    name: String,
    color: String,
    description: Option<String>,
    default: bool,
}

struct Issue {
    number: u64,
    title: String,
    body: Option<String>,
    /// Canonical label names, in the order they were set.
    labels: Vec<String>,
    open: bool,
    state_reason: Option<String>,
    author: String,
    is_pr: bool,
    created_at: u64,
    updated_at: u64,
    /// Order of the last change, for `sort=updated` within one second.
    updated_seq: u64,
    closed_at: Option<u64>,
    closed_by: Option<String>,
}

impl Issue {
    fn snapshot(&self) -> IssueSnapshot {
        IssueSnapshot {
            number: self.number,
            title: self.title.clone(),
            body: self.body.clone(),
            labels: self.labels.clone(),
            state: if self.open { "open" } else { "closed" }.to_owned(),
            state_reason: self.state_reason.clone(),
            author: self.author.clone(),
            is_pull_request: self.is_pr,
        }
    }

    fn has_label(&self, name: &str) -> bool {
        self.labels.iter().any(|l| l.eq_ignore_ascii_case(name))
    }
}

struct Repo {
    tokens: Vec<Token>,
    /// Logins; a user's id is 1000 + its index.
    users: Vec<String>,
    labels: Vec<LabelDef>,
    issues: Vec<Issue>,
    faults: VecDeque<Fault>,
    latency: Duration,
    remaining: u64,
    reset: u64,
    log: Vec<LoggedRequest>,
    seq: u64,
    request_id: u64,
}

/// GitHub's default labels of a new repository.
const DEFAULT_LABELS: [(&str, &str, &str); 9] = [
    ("bug", "d73a4a", "Something isn't working"),
    (
        "documentation",
        "0075ca",
        "Improvements or additions to documentation",
    ),
    (
        "duplicate",
        "cfd3d7",
        "This issue or pull request already exists",
    ),
    ("enhancement", "a2eeef", "New feature or request"),
    ("good first issue", "7057ff", "Good for newcomers"),
    ("help wanted", "008672", "Extra attention is needed"),
    ("invalid", "e4e669", "This doesn't seem right"),
    ("question", "d876e3", "Further information is requested"),
    ("wontfix", "ffffff", "This will not be worked on"),
];

impl Repo {
    fn new() -> Repo {
        let mut repo = Repo {
            tokens: Vec::new(),
            users: Vec::new(),
            labels: Vec::new(),
            issues: Vec::new(),
            faults: VecDeque::new(),
            latency: Duration::ZERO,
            remaining: RATE_LIMIT,
            reset: now() + 3600,
            log: Vec::new(),
            seq: 0,
            request_id: 0,
        };
        repo.add_token(TOKEN, LOGIN, true);
        for (name, color, description) in DEFAULT_LABELS {
            let id = 9000 + repo.labels.len() as u64;
            repo.labels.push(LabelDef {
                id,
                name: name.to_owned(),
                color: color.to_owned(),
                description: Some(description.to_owned()),
                default: true,
            });
        }
        repo
    }

    fn add_token(&mut self, token: &str, login: &str, can_push: bool) {
        self.tokens.retain(|t| t.token != token);
        self.tokens.push(Token {
            token: token.to_owned(),
            login: login.to_owned(),
            can_push,
        });
        self.user_id(login);
    }

    fn user_id(&mut self, login: &str) -> u64 {
        let index = match self
            .users
            .iter()
            .position(|u| u.eq_ignore_ascii_case(login))
        {
            Some(index) => index,
            None => {
                self.users.push(login.to_owned());
                self.users.len() - 1
            }
        };
        1000 + index as u64
    }

    fn is_collaborator(&self, login: &str) -> bool {
        self.tokens
            .iter()
            .any(|t| t.can_push && t.login.eq_ignore_ascii_case(login))
    }

    /// The repository's label of that name (any case), created with colour `ededed` if missing;
    /// returns its canonical name.
    fn ensure_label(&mut self, name: &str) -> String {
        if let Some(label) = self
            .labels
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
        {
            return label.name.clone();
        }
        let id = 9000 + self.labels.len() as u64;
        self.labels.push(LabelDef {
            id,
            name: name.to_owned(),
            color: "ededed".to_owned(),
            description: None,
            default: false,
        });
        name.to_owned()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn insert(
        &mut self,
        title: String,
        body: Option<String>,
        labels: Vec<String>,
        author: String,
        open: bool,
        is_pr: bool,
    ) -> u64 {
        self.user_id(&author);
        let number = self.issues.last().map_or(1, |i| i.number + 1);
        let at = now();
        let updated_seq = self.next_seq();
        let mut unique: Vec<String> = Vec::new();
        for label in labels {
            if !unique.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
                unique.push(label);
            }
        }
        self.issues.push(Issue {
            number,
            title,
            body,
            labels: unique,
            open,
            state_reason: (!open).then(|| "completed".to_owned()),
            author: author.clone(),
            is_pr,
            created_at: at,
            updated_at: at,
            updated_seq,
            closed_at: (!open).then_some(at),
            closed_by: (!open).then_some(author),
        });
        number
    }

    fn find(&self, number: u64) -> Option<usize> {
        self.issues.iter().position(|i| i.number == number)
    }

    fn touch(&mut self, index: usize) {
        let seq = self.next_seq();
        let issue = &mut self.issues[index];
        issue.updated_at = now();
        issue.updated_seq = seq;
    }

    fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        self.faults.retain(|f| f.times > 0);
        let index = self.faults.iter().position(|f| f.matches(method, path))?;
        let fault = self.faults[index].clone();
        self.faults[index].times -= 1;
        if self.faults[index].times == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }

    fn authenticate(&self, headers: &HeaderMap) -> Option<Caller> {
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")) {
            return None;
        }
        let token = token.trim();
        self.tokens
            .iter()
            .find(|t| t.token == token)
            .map(|t| Caller {
                login: t.login.clone(),
                can_push: t.can_push,
            })
    }

    /// Starts a new quota window when the old one is over.
    fn roll_rate_window(&mut self) {
        let now = now();
        if now >= self.reset {
            self.remaining = RATE_LIMIT;
            self.reset = now + 3600;
        }
    }

    fn spend_quota(&mut self) {
        self.remaining = self.remaining.saturating_sub(1);
    }

    fn rate_headers(&mut self, headers: &mut HeaderMap) {
        self.request_id += 1;
        let used = RATE_LIMIT.saturating_sub(self.remaining);
        let pairs = [
            ("x-ratelimit-limit", RATE_LIMIT.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-used", used.to_string()),
            ("x-ratelimit-reset", self.reset.to_string()),
            ("x-ratelimit-resource", "core".to_owned()),
            ("x-github-api-version-selected", "2022-11-28".to_owned()),
            ("x-github-media-type", "github.v3; format=json".to_owned()),
            (
                "x-github-request-id",
                format!("FAKE:{:08X}", self.request_id),
            ),
        ];
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }

    // --- JSON --------------------------------------------------------------------------------

    fn user_json(&mut self, base: &str, login: &str) -> Value {
        let id = self.user_id(login);
        let api = format!("{base}/users/{}", encode(login));
        json!({
            "login": login,
            "id": id,
            "node_id": format!("U_kgDOFAKE{id}"),
            "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
            "gravatar_id": "",
            "url": api,
            "html_url": format!("{base}/{}", encode(login)),
            "followers_url": format!("{api}/followers"),
            "following_url": format!("{api}/following{{/other_user}}"),
            "gists_url": format!("{api}/gists{{/gist_id}}"),
            "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("{api}/subscriptions"),
            "organizations_url": format!("{api}/orgs"),
            "repos_url": format!("{api}/repos"),
            "events_url": format!("{api}/events{{/privacy}}"),
            "received_events_url": format!("{api}/received_events"),
            "type": if login.ends_with("[bot]") { "Bot" } else { "User" },
            "user_view_type": "public",
            "site_admin": false,
        })
    }

    fn label_json(&self, base: &str, name: &str) -> Value {
        let Some(label) = self
            .labels
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
        else {
            return Value::Null;
        };
        json!({
            "id": label.id,
            "node_id": format!("LA_kwDOFAKE{}", label.id),
            "url": format!("{base}/repos/{OWNER}/{REPO}/labels/{}", encode(&label.name)),
            "name": label.name,
            "color": label.color,
            "default": label.default,
            "description": label.description,
        })
    }

    fn labels_json(&self, base: &str, index: usize) -> Value {
        Value::Array(
            self.issues[index]
                .labels
                .iter()
                .map(|l| self.label_json(base, l))
                .collect(),
        )
    }

    /// An issue as GitHub shows it; `full` adds what only single-issue answers carry.
    fn issue_json(&mut self, base: &str, index: usize, full: bool) -> Value {
        let (author, closed_by, is_pr, number) = {
            let issue = &self.issues[index];
            (
                issue.author.clone(),
                issue.closed_by.clone(),
                issue.is_pr,
                issue.number,
            )
        };
        let user = self.user_json(base, &author);
        let closed_by = match (&closed_by, full) {
            (Some(login), true) => Some(self.user_json(base, login)),
            _ => None,
        };
        let association = if author.eq_ignore_ascii_case(OWNER) {
            "OWNER"
        } else if self.is_collaborator(&author) {
            "COLLABORATOR"
        } else {
            "NONE"
        };
        let labels = self.labels_json(base, index);
        let issue = &self.issues[index];
        let repo_url = format!("{base}/repos/{OWNER}/{REPO}");
        let url = format!("{repo_url}/issues/{number}");
        let html = format!(
            "{base}/{OWNER}/{REPO}/{}/{number}",
            if is_pr { "pull" } else { "issues" }
        );
        let mut value = json!({
            "url": url,
            "repository_url": repo_url,
            "labels_url": format!("{url}/labels{{/name}}"),
            "comments_url": format!("{url}/comments"),
            "events_url": format!("{url}/events"),
            "html_url": html,
            "id": 500_000 + number,
            "node_id": format!("{}_kwDOFAKE{number}", if is_pr { "PR" } else { "I" }),
            "number": number,
            "title": issue.title,
            "user": user,
            "labels": labels,
            "state": if issue.open { "open" } else { "closed" },
            "locked": false,
            "assignee": null,
            "assignees": [],
            "milestone": null,
            "comments": 0,
            "created_at": iso8601(issue.created_at),
            "updated_at": iso8601(issue.updated_at),
            "closed_at": issue.closed_at.map(iso8601),
            "author_association": association,
            "type": null,
            "active_lock_reason": null,
            "sub_issues_summary": {"total": 0, "completed": 0, "percent_completed": 0},
            "body": issue.body,
            "reactions": {
                "url": format!("{url}/reactions"),
                "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0,
                "confused": 0, "heart": 0, "rocket": 0, "eyes": 0,
            },
            "timeline_url": format!("{url}/timeline"),
            "performed_via_github_app": null,
            "state_reason": issue.state_reason,
        });
        if let Value::Object(map) = &mut value {
            if is_pr {
                let pulls = format!("{repo_url}/pulls/{number}");
                map.insert("draft".to_owned(), Value::Bool(false));
                map.insert(
                    "pull_request".to_owned(),
                    json!({
                        "url": pulls,
                        "html_url": html,
                        "diff_url": format!("{html}.diff"),
                        "patch_url": format!("{html}.patch"),
                        "merged_at": null,
                    }),
                );
            }
            if full {
                map.insert("closed_by".to_owned(), closed_by.unwrap_or(Value::Null));
            }
        }
        value
    }
}

// ---------------------------------------------------------------------------------------------
// Server

fn router(fake: Fake) -> Router {
    let repo = "/repos/{owner}/{repo}";
    Router::new()
        .route("/rate_limit", get(rate_limit))
        .route("/user", get(current_user))
        .route(
            &format!("{repo}/issues"),
            get(list_issues).post(create_issue),
        )
        .route(
            &format!("{repo}/issues/{{number}}"),
            get(get_issue).patch(update_issue),
        )
        .route(
            &format!("{repo}/issues/{{number}}/labels"),
            get(list_labels)
                .post(add_labels)
                .put(set_labels)
                .delete(remove_all_labels),
        )
        .route(
            &format!("{repo}/issues/{{number}}/labels/{{name}}"),
            delete(remove_label),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(fake.clone(), gate))
        .with_state(fake)
}

/// Runs every request in its own task, so a client that hangs up does not cancel it.
async fn gate(State(fake): State<Fake>, request: Request, next: Next) -> Response {
    match tokio::spawn(process(fake, request, next)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "fake GitHub panicked",
            DOCS,
        ),
    }
}

/// Log, faults, auth, quota, ETag and latency around the route handlers.
async fn process(fake: Fake, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let quota_free = path == "/rate_limit";

    let (index, fault, caller, latency, exhausted) = {
        let mut repo = fake.lock();
        repo.roll_rate_window();
        let index = repo.log.len();
        repo.log.push(LoggedRequest {
            method: method.clone(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            status: 0,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
        let fault = repo.take_fault(&method, &path);
        let caller = repo.authenticate(&parts.headers);
        let exhausted = repo.remaining == 0 && !quota_free;
        (index, fault, caller, repo.latency, exhausted)
    };

    let replaces = |f: &Fault| !f.after_commit && f.kind == FaultKind::Replace;
    let mut response = match (&fault, caller) {
        (Some(fault), _) if fault.kind == FaultKind::EndlessBody => {
            tokio::time::sleep(fault.delay).await;
            let chunk = Bytes::from(vec![b' '; 64 << 10]);
            let endless =
                futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            let mut response = Response::new(Body::from_stream(endless));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let mut repo = fake.lock();
            repo.spend_quota();
            finish_headers(&mut repo, &mut response, fault);
            response
        }
        (Some(fault), _) if replaces(fault) => {
            tokio::time::sleep(fault.delay).await;
            let mut response = fault_response(fault);
            let mut repo = fake.lock();
            repo.spend_quota();
            finish_headers(&mut repo, &mut response, fault);
            response
        }
        (_, None) => {
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}),
            );
            fake.lock().rate_headers(response.headers_mut());
            response
        }
        (_, Some(caller)) if exhausted => {
            let mut repo = fake.lock();
            let id = repo.user_id(&caller.login);
            let mut response = json_response(
                StatusCode::FORBIDDEN,
                &json!({
                    "message": format!("API rate limit exceeded for user ID {id}. If you reach out to GitHub Support for help, please include the request ID."),
                    "documentation_url": DOC_RATE,
                    "status": "403",
                }),
            );
            repo.rate_headers(response.headers_mut());
            response
        }
        (_, Some(caller)) => {
            let if_none_match = parts.headers.get(IF_NONE_MATCH).cloned();
            let is_get = parts.method == http::Method::GET;
            let mut request = Request::from_parts(parts, Body::from(bytes));
            request.extensions_mut().insert(caller);
            let response = next.run(request).await;
            let mut response = if is_get && response.status() == StatusCode::OK {
                with_etag(response, if_none_match.as_ref()).await
            } else {
                response
            };
            let mut repo = fake.lock();
            if response.status() != StatusCode::NOT_MODIFIED && !quota_free {
                repo.spend_quota();
            }
            repo.rate_headers(response.headers_mut());
            response
        }
    };

    if let Some(fault) = fault.as_ref().filter(|f| f.after_commit) {
        tokio::time::sleep(fault.delay).await;
        response = fault_response(fault);
        finish_headers(&mut fake.lock(), &mut response, fault);
    }
    if let Some(fault) = fault.as_ref() {
        let url = format!("{}{path}", fake.base_url);
        let link = match fault.kind {
            FaultKind::LinkToSelf => Some(if query.is_empty() {
                url
            } else {
                format!("{url}?{query}")
            }),
            FaultKind::EndlessNextLinks => {
                let params = parse_query(&query);
                let page = params
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "page")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or(1);
                link_header(&url, &params, page, u64::MAX)
                    .and_then(|l| {
                        l.split(", ")
                            .find(|p| p.ends_with("rel=\"next\""))
                            .map(str::to_owned)
                    })
                    .map(|next| {
                        next.trim_start_matches('<')
                            .split('>')
                            .next()
                            .unwrap_or("")
                            .to_owned()
                    })
            }
            _ => None,
        };
        if let Some(value) =
            link.and_then(|l| HeaderValue::from_str(&format!("<{l}>; rel=\"next\"")).ok())
        {
            response.headers_mut().insert(LINK, value);
        }
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(entry) = fake.lock().log.get_mut(index) {
        entry.status = response.status().as_u16();
    }
    response
}

fn fault_response(fault: &Fault) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if fault.body.is_null() {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        response
    } else {
        json_response(status, &fault.body)
    }
}

/// The usual headers, then the fault's own on top.
fn finish_headers(repo: &mut Repo, response: &mut Response, fault: &Fault) {
    repo.rate_headers(response.headers_mut());
    for (name, value) in &fault.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// Adds a weak ETag of the content (body and `Link`), or answers 304 when the client has it.
async fn with_etag(response: Response, if_none_match: Option<&HeaderValue>) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    parts
        .headers
        .get(LINK)
        .map(HeaderValue::as_bytes)
        .hash(&mut hasher);
    let digest = hasher.finish();
    let etag = format!(
        "W/\"{digest:016x}{:016x}\"",
        digest.rotate_left(29) ^ 0x5bd1_e995
    );
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("W/\"0\""));
    let matched = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag));
    if matched {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response.headers_mut().insert(ETAG, etag_value);
        return response;
    }
    parts.headers.insert(ETAG, etag_value);
    Response::from_parts(parts, Body::from(bytes))
}

/// Weak comparison (RFC 9110 §8.8.3.2) against an `If-None-Match` list.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || opaque(t) == ours)
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not Found", DOCS)
}

async fn rate_limit(State(fake): State<Fake>) -> Response {
    let repo = fake.lock();
    let core = json!({
        "limit": RATE_LIMIT,
        "used": RATE_LIMIT.saturating_sub(repo.remaining),
        "remaining": repo.remaining,
        "reset": repo.reset,
    });
    let search = json!({"limit": 30, "used": 0, "remaining": 30, "reset": now() + 60});
    let graphql = json!({"limit": 5000, "used": 0, "remaining": 5000, "reset": repo.reset});
    json_response(
        StatusCode::OK,
        &json!({
            "resources": {"core": core, "search": search, "graphql": graphql},
            "rate": core,
        }),
    )
}

async fn current_user(State(fake): State<Fake>, Extension(caller): Extension<Caller>) -> Response {
    let base = fake.base_url.clone();
    let user = fake.lock().user_json(&base, &caller.login);
    json_response(StatusCode::OK, &user)
}

fn repo_matches(owner: &str, repo: &str) -> bool {
    owner.eq_ignore_ascii_case(OWNER) && repo.eq_ignore_ascii_case(REPO)
}

async fn list_issues(
    State(fake): State<Fake>,
    Path((owner, repo_name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !repo_matches(&owner, &repo_name) {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_LIST);
    }
    let params = parse_query(raw.as_deref().unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let state = param("state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return invalid("Issue", "state", DOC_LIST);
    }
    let sort = param("sort").unwrap_or("created");
    if !matches!(sort, "created" | "updated" | "comments") {
        return invalid("Issue", "sort", DOC_LIST);
    }
    let direction = param("direction").unwrap_or("desc");
    if !matches!(direction, "asc" | "desc") {
        return invalid("Issue", "direction", DOC_LIST);
    }
    let wanted: Vec<String> = param("labels")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let creator = param("creator");
    let per_page = param("per_page")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(30)
        .min(100);
    let page = param("page")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);

    let base = fake.base_url.clone();
    let mut repo = fake.lock();
    let mut matching: Vec<usize> = repo
        .issues
        .iter()
        .enumerate()
        .filter(|(_, i)| match state {
            "open" => i.open,
            "closed" => !i.open,
            _ => true,
        })
        .filter(|(_, i)| wanted.iter().all(|w| i.has_label(w)))
        .filter(|(_, i)| creator.is_none_or(|c| i.author.eq_ignore_ascii_case(c)))
        .map(|(index, _)| index)
        .collect();
    if sort == "updated" {
        matching.sort_by_key(|&i| (repo.issues[i].updated_seq, repo.issues[i].number));
    } else {
        matching.sort_by_key(|&i| repo.issues[i].number);
    }
    if direction == "desc" {
        matching.reverse();
    }

    let total = matching.len() as u64;
    let last = total.div_ceil(per_page).max(1);
    let start = usize::try_from((page - 1).saturating_mul(per_page)).unwrap_or(usize::MAX);
    let items: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(per_page as usize)
        .map(|&i| repo.issue_json(&base, i, false))
        .collect();
    drop(repo);

    let mut response = json_response(StatusCode::OK, &Value::Array(items));
    let link = link_header(
        &format!("{base}/repos/{OWNER}/{REPO}/issues"),
        &params,
        page,
        last,
    );
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(LINK, link);
    }
    response
}

/// GitHub's `Link` header: prev, next, last, first, as they apply; None for a single page.
fn link_header(url: &str, params: &[(String, String)], page: u64, last: u64) -> Option<String> {
    let at = |n: u64| {
        let mut query: Vec<String> = params
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        query.push(format!("page={n}"));
        format!("{url}?{}", query.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("<{}>; rel=\"prev\"", at(page - 1)));
    }
    if page < last {
        links.push(format!("<{}>; rel=\"next\"", at(page + 1)));
        links.push(format!("<{}>; rel=\"last\"", at(last)));
    }
    if page > 1 {
        links.push(format!("<{}>; rel=\"first\"", at(1)));
    }
    (!links.is_empty()).then(|| links.join(", "))
}

async fn create_issue(
    State(fake): State<Fake>,
    Extension(caller): Extension<Caller>,
    Path((owner, repo_name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if !repo_matches(&owner, &repo_name) {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_CREATE);
    }
    let input = match parse_object(&body, DOC_CREATE) {
        Ok(input) => input,
        Err(response) => return *response,
    };
    let title = match input.get("title") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(_) | Value::Null) | None => {
            return validation_failed(
                vec![json!({"resource": "Issue", "code": "missing_field", "field": "title"})],
                DOC_CREATE,
            );
        }
        Some(_) => return invalid("Issue", "title", DOC_CREATE),
    };
    let body_text = match input.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(_) => return invalid("Issue", "body", DOC_CREATE),
    };
    if let Some(response) = check_lengths(Some(&title), body_text.as_deref(), DOC_CREATE) {
        return response;
    }
    let labels = match input.get("labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => match label_names(value, DOC_CREATE) {
            Ok(labels) => labels,
            Err(response) => return *response,
        },
    };

    let base = fake.base_url.clone();
    let mut repo = fake.lock();
    // "Only users with push access can set labels for new issues. Labels are silently dropped
    // otherwise."
    let labels = if caller.can_push {
        labels.iter().map(|l| repo.ensure_label(l)).collect()
    } else {
        Vec::new()
    };
    let number = repo.insert(title, body_text, labels, caller.login, true, false);
    let index = repo.issues.len() - 1;
    let value = repo.issue_json(&base, index, true);
    drop(repo);
    let mut response = json_response(StatusCode::CREATED, &value);
    if let Ok(location) =
        HeaderValue::from_str(&format!("{base}/repos/{OWNER}/{REPO}/issues/{number}"))
    {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

async fn get_issue(
    State(fake): State<Fake>,
    Path((owner, repo_name, number)): Path<(String, String, String)>,
) -> Response {
    let base = fake.base_url.clone();
    let mut repo = fake.lock();
    let Some(index) = locate(&repo, &owner, &repo_name, &number) else {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_GET);
    };
    let value = repo.issue_json(&base, index, true);
    json_response(StatusCode::OK, &value)
}

async fn update_issue(
    State(fake): State<Fake>,
    Extension(caller): Extension<Caller>,
    Path((owner, repo_name, number)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let input = match parse_object(&body, DOC_UPDATE) {
        Ok(input) => input,
        Err(response) => return *response,
    };
    let title = match input.get("title") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => {
            return validation_failed(
                vec![json!({"resource": "Issue", "code": "missing_field", "field": "title"})],
                DOC_UPDATE,
            );
        }
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return invalid("Issue", "title", DOC_UPDATE),
    };
    let body_text = match input.get("body") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(b)) => Some(Some(b.clone())),
        Some(_) => return invalid("Issue", "body", DOC_UPDATE),
    };
    if let Some(response) = check_lengths(
        title.as_deref(),
        body_text.as_ref().and_then(Option::as_deref),
        DOC_UPDATE,
    ) {
        return response;
    }
    let state = match input.get("state") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "open" => Some(true),
        Some(Value::String(s)) if s == "closed" => Some(false),
        Some(_) => return invalid("Issue", "state", DOC_UPDATE),
    };
    let state_reason = match input.get("state_reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s))
            if matches!(
                s.as_str(),
                "completed" | "not_planned" | "reopened" | "duplicate"
            ) =>
        {
            Some(s.clone())
        }
        Some(_) => return invalid("Issue", "state_reason", DOC_UPDATE),
    };
    let labels = match input.get("labels") {
        None | Some(Value::Null) => None,
        Some(value) => match label_names(value, DOC_UPDATE) {
            Ok(labels) => Some(labels),
            Err(response) => return *response,
        },
    };

    let base = fake.base_url.clone();
    let mut repo = fake.lock();
    let Some(index) = locate(&repo, &owner, &repo_name, &number) else {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_UPDATE);
    };
    // "Issue owners and users with push access or Triage role can edit an issue."
    if !caller.can_push
        && !repo.issues[index]
            .author
            .eq_ignore_ascii_case(&caller.login)
    {
        return error(
            StatusCode::FORBIDDEN,
            "Must have admin rights to Repository.",
            DOC_UPDATE,
        );
    }
    // "Only users with push access can set labels for issues. Without push access to the
    // repository, label changes are silently dropped."
    let labels = labels
        .filter(|_| caller.can_push)
        .map(|ls| ls.iter().map(|l| repo.ensure_label(l)).collect::<Vec<_>>());
    let now = now();
    let mut changed = false;
    {
        let issue = &mut repo.issues[index];
        if let Some(title) = title.filter(|t| *t != issue.title) {
            issue.title = title;
            changed = true;
        }
        if let Some(body) = body_text.filter(|b| *b != issue.body) {
            issue.body = body;
            changed = true;
        }
        if let Some(labels) = labels {
            let mut unique: Vec<String> = Vec::new();
            for label in labels {
                if !unique.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
                    unique.push(label);
                }
            }
            if unique != issue.labels {
                issue.labels = unique;
                changed = true;
            }
        }
        // "state_reason: The reason for the state change. Ignored unless state is changed."
        match state {
            Some(false) if issue.open => {
                issue.open = false;
                issue.state_reason = Some(state_reason.unwrap_or_else(|| "completed".to_owned()));
                issue.closed_at = Some(now);
                issue.closed_by = Some(caller.login.clone());
                changed = true;
            }
            Some(false) => {
                if let Some(reason) =
                    state_reason.filter(|r| Some(r) != issue.state_reason.as_ref())
                {
                    issue.state_reason = Some(reason);
                    changed = true;
                }
            }
            Some(true) if !issue.open => {
                issue.open = true;
                issue.state_reason = Some("reopened".to_owned());
                issue.closed_at = None;
                issue.closed_by = None;
                changed = true;
            }
            _ => {}
        }
    }
    if changed {
        repo.touch(index);
    }
    let value = repo.issue_json(&base, index, true);
    json_response(StatusCode::OK, &value)
}

async fn list_labels(
    State(fake): State<Fake>,
    Path((owner, repo_name, number)): Path<(String, String, String)>,
) -> Response {
    let repo = fake.lock();
    let Some(index) = locate(&repo, &owner, &repo_name, &number) else {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_LABELS);
    };
    json_response(StatusCode::OK, &repo.labels_json(&fake.base_url, index))
}

async fn add_labels(
    State(fake): State<Fake>,
    Extension(caller): Extension<Caller>,
    Path((owner, repo_name, number)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    change_labels(&fake, &caller, (&owner, &repo_name, &number), &body, false)
}

async fn set_labels(
    State(fake): State<Fake>,
    Extension(caller): Extension<Caller>,
    Path((owner, repo_name, number)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    change_labels(&fake, &caller, (&owner, &repo_name, &number), &body, true)
}

/// POST (add) and PUT (replace) on an issue's labels. The body is `{"labels": [...]}` or a bare
/// array; a label is a name or `{"name": ...}`.
fn change_labels(
    fake: &Fake,
    caller: &Caller,
    (owner, repo_name, number): (&str, &str, &str),
    body: &[u8],
    replace: bool,
) -> Response {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({"labels": []})
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => value,
            Err(_) => return error(StatusCode::BAD_REQUEST, "Problems parsing JSON", DOC_LABELS),
        }
    };
    let list = match &value {
        Value::Array(_) => &value,
        Value::Object(map) => map.get("labels").unwrap_or(&Value::Null),
        _ => &Value::Null,
    };
    let names = match list {
        Value::Null => Vec::new(),
        other => match label_names(other, DOC_LABELS) {
            Ok(names) => names,
            Err(response) => return *response,
        },
    };
    let mut repo = fake.lock();
    let Some(index) = locate(&repo, owner, repo_name, number) else {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_LABELS);
    };
    if !caller.can_push {
        return error(
            StatusCode::FORBIDDEN,
            "Must have admin rights to Repository.",
            DOC_LABELS,
        );
    }
    let names: Vec<String> = names.iter().map(|n| repo.ensure_label(n)).collect();
    let before = repo.issues[index].labels.clone();
    let mut labels = if replace { Vec::new() } else { before.clone() };
    for name in names {
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(&name)) {
            labels.push(name);
        }
    }
    if labels != before {
        repo.issues[index].labels = labels;
        repo.touch(index);
    }
    json_response(StatusCode::OK, &repo.labels_json(&fake.base_url, index))
}

async fn remove_all_labels(
    State(fake): State<Fake>,
    Extension(caller): Extension<Caller>,
    Path((owner, repo_name, number)): Path<(String, String, String)>,
) -> Response {
    let mut repo = fake.lock();
    let Some(index) = locate(&repo, &owner, &repo_name, &number) else {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_LABELS);
    };
    if !caller.can_push {
        return error(
            StatusCode::FORBIDDEN,
            "Must have admin rights to Repository.",
            DOC_LABELS,
        );
    }
    if !repo.issues[index].labels.is_empty() {
        repo.issues[index].labels.clear();
        repo.touch(index);
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

async fn remove_label(
    State(fake): State<Fake>,
    Extension(caller): Extension<Caller>,
    Path((owner, repo_name, number, name)): Path<(String, String, String, String)>,
) -> Response {
    let mut repo = fake.lock();
    let Some(index) = locate(&repo, &owner, &repo_name, &number) else {
        return error(StatusCode::NOT_FOUND, "Not Found", DOC_LABELS);
    };
    if !caller.can_push {
        return error(
            StatusCode::FORBIDDEN,
            "Must have admin rights to Repository.",
            DOC_LABELS,
        );
    }
    if !repo.issues[index].has_label(&name) {
        return error(StatusCode::NOT_FOUND, "Label does not exist", DOC_LABELS);
    }
    repo.issues[index]
        .labels
        .retain(|l| !l.eq_ignore_ascii_case(&name));
    repo.touch(index);
    json_response(StatusCode::OK, &repo.labels_json(&fake.base_url, index))
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn locate(repo: &Repo, owner: &str, repo_name: &str, number: &str) -> Option<usize> {
    if !repo_matches(owner, repo_name) {
        return None;
    }
    repo.find(number.parse().ok()?)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// GitHub's error body: message, documentation_url, status.
fn error(status: StatusCode, message: &str, documentation_url: &str) -> Response {
    json_response(
        status,
        &json!({
            "message": message,
            "documentation_url": documentation_url,
            "status": status.as_u16().to_string(),
        }),
    )
}

fn validation_failed(errors: Vec<Value>, documentation_url: &str) -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({
            "message": "Validation Failed",
            "errors": errors,
            "documentation_url": documentation_url,
            "status": "422",
        }),
    )
}

fn invalid(resource: &str, field: &str, documentation_url: &str) -> Response {
    validation_failed(
        vec![json!({"resource": resource, "code": "invalid", "field": field})],
        documentation_url,
    )
}

fn too_long(field: &str, max: usize, resource: &str, documentation_url: &str) -> Response {
    validation_failed(
        vec![json!({
            "resource": resource,
            "code": "custom",
            "field": field,
            "message": format!("{field} is too long (maximum is {max} characters)"),
        })],
        documentation_url,
    )
}

fn check_lengths(title: Option<&str>, body: Option<&str>, doc: &str) -> Option<Response> {
    if title.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Some(too_long("title", MAX_TITLE_CHARS, "Issue", doc));
    }
    if body.is_some_and(|b| b.chars().count() > MAX_BODY_CHARS) {
        return Some(too_long("body", MAX_BODY_CHARS, "Issue", doc));
    }
    None
}

fn parse_object(body: &[u8], doc: &str) -> Result<Map<String, Value>, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\nBody must be a JSON object.",
            doc,
        ))),
        Err(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "Problems parsing JSON",
            doc,
        ))),
    }
}

/// Label names from `["a", {"name": "b"}]`; 422 for anything else or a bad name.
fn label_names(value: &Value, doc: &str) -> Result<Vec<String>, Box<Response>> {
    let Value::Array(items) = value else {
        return Err(Box::new(invalid("Issue", "labels", doc)));
    };
    let mut names = Vec::new();
    for item in items {
        let name = match item {
            Value::String(s) => s.trim(),
            Value::Object(map) => match map.get("name") {
                Some(Value::String(s)) => s.trim(),
                _ => return Err(Box::new(invalid("Label", "name", doc))),
            },
            _ => return Err(Box::new(invalid("Issue", "labels", doc))),
        };
        if name.is_empty() {
            return Err(Box::new(invalid("Label", "name", doc)));
        }
        if name.chars().count() > MAX_LABEL_CHARS {
            return Err(Box::new(too_long("name", MAX_LABEL_CHARS, "Label", doc)));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// `a=1&b=x%2Cy` into decoded pairs, in order.
fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes all but RFC 3986 unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as GitHub's `2011-04-22T13:33:48Z`.
fn iso8601(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
