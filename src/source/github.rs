//! `GitHubIssuesSource`: one GitHub issue per peer in a shared repository, so peers on
//! different machines see each other with no infrastructure beyond GitHub.
//!
//! Format: title `Peer: <peer_id>`; body the record as JSON (a ```` ```json ```` fenced
//! block is accepted on read); labels `peer-registry`, `peer-active` / `peer-inactive`
//! and `capability-<name>` per capability.
//!
//! Trust: only open issues labelled `peer-registry` count (on GitHub only people with
//! push or triage access can set labels), the title's id must equal the body's, the body
//! must keep every rule of the format, and with a trusted-author list the issue must be
//! opened by one of those logins. Anything else is skipped and counted as rejected.
//!
//! Quota: listings are conditional (`If-None-Match`; a 304 costs no quota), the last full
//! listing is kept for a short while, heartbeats write only when the remote lease is more
//! than half used or a field changed, writes are serialized and kept within GitHub's
//! content-creation limits (80 a minute, 500 an hour), and a rate-limit answer stops all
//! requests until GitHub's retry time instead of retrying.
//!
//! octocrab is used as the HTTP client (token, base URL, rustls, timeouts, no retries);
//! responses are parsed here, leniently, because one odd issue must never fail a listing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Abilities, Decide, Decision, Listing, Modified, Progress, Source, SourceError, SourceName,
};
use crate::peer::{PeerFilter, PeerRecord};

pub const LABEL_REGISTRY: &str = "peer-registry";
pub const LABEL_ACTIVE: &str = "peer-active";
pub const LABEL_INACTIVE: &str = "peer-inactive";
pub const CAPABILITY_LABEL_PREFIX: &str = "capability-";
pub const TITLE_PREFIX: &str = "Peer: ";
/// GitHub refuses longer issue bodies.
const MAX_BODY_CHARS: usize = 65_536;
/// Most ETag-cached pages kept; past it the cache starts over.
const MAX_CACHED_PAGES: usize = 512;

const SOURCE: SourceName = SourceName::GITHUB;

/// `OWNER/NAME` of a GitHub repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

impl std::str::FromStr for RepoName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (owner, name) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not OWNER/NAME (e.g. acme/peers)"))?;
        let owner_ok = !owner.is_empty()
            && owner.len() <= 39
            && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if owner_ok && name_ok {
            Ok(RepoName {
                owner: owner.to_owned(),
                name: name.to_owned(),
            })
        } else {
            Err(format!(
                "`{text}` is not OWNER/NAME: the owner is 1-39 of A-Z a-z 0-9 -, the name 1-100 of A-Z a-z 0-9 - _ ."
            ))
        }
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// GitHub's limits on content-creating requests, which issue edits may count against.
#[derive(Debug, Clone, Copy)]
pub struct WriteBudget {
    pub per_minute: usize,
    pub per_hour: usize,
}

impl Default for WriteBudget {
    fn default() -> Self {
        WriteBudget {
            per_minute: 80,
            per_hour: 500,
        }
    }
}

/// Everything the source needs. The token is handed to octocrab and not kept.
pub struct GitHubSettings {
    pub repo: RepoName,
    pub api_url: String,
    pub request_timeout: Duration,
    pub trusted_authors: Vec<String>,
    pub listing_ttl: Duration,
    pub write_budget: WriteBudget,
}

/// An issue as listed by the REST API; only the fields this source reads, all lenient.
#[derive(Debug, Clone, Deserialize)]
struct RemoteIssue {
    number: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    labels: Vec<RemoteLabel>,
    #[serde(default)]
    user: Option<RemoteUser>,
    #[serde(default)]
    pull_request: Option<Value>,
    #[serde(default)]
    state: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RemoteLabel {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RemoteUser {
    #[serde(default)]
    login: String,
}

impl RemoteIssue {
    fn has_label(&self, label: &str) -> bool {
        self.labels
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(label))
    }

    fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }

    fn title_peer_id(&self) -> Option<&str> {
        self.title.strip_prefix(TITLE_PREFIX).map(str::trim)
    }
}

/// One HTTP answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A listing page remembered with its ETag, for conditional requests.
#[derive(Clone)]
struct CachedPage {
    etag: String,
    body: Arc<Vec<u8>>,
    next: Option<String>,
}

/// The last full listing, parsed.
#[derive(Clone)]
struct CachedListing {
    fetched: Instant,
    peers: Vec<(u64, PeerRecord)>,
    rejected: usize,
}

/// What a listing found, parsed and checked.
struct Parsed {
    /// (issue number, record) for every valid issue; duplicates of one peer included.
    peers: Vec<(u64, PeerRecord)>,
    rejected: usize,
}

pub struct GitHubIssuesSource {
    client: Octocrab,
    settings: GitHubSettings,
    issues_path: String,
    pages: Mutex<HashMap<String, CachedPage>>,
    listing: Mutex<Option<CachedListing>>,
    /// The open issue that holds each peer, as last seen.
    issue_numbers: Mutex<HashMap<String, u64>>,
    /// Set by a rate-limit answer: no request is sent before this instant.
    blocked_until: Mutex<Option<Instant>>,
    /// When recent writes were sent, for the write budget.
    writes: Mutex<VecDeque<Instant>>,
    /// Writes go one at a time (GitHub asks for serial mutations), which also keeps two
    /// registers of one peer in this process from creating two issues.
    write_lock: tokio::sync::Mutex<()>,
    notices: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `rel="next"` target of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = header_str(headers, "link")?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

/// The record in an issue body: raw JSON, or the first ```` ```json ```` fenced block.
pub fn parse_body(body: &str) -> Result<PeerRecord, String> {
    let trimmed = body.trim();
    let json_text = if trimmed.starts_with('{') {
        trimmed
    } else {
        let start = trimmed
            .find("```json")
            .map(|i| i + "```json".len())
            .or_else(|| trimmed.find("```").map(|i| i + 3))
            .ok_or("the body holds no JSON object")?;
        let rest = &trimmed[start..];
        let end = rest.find("```").ok_or("the ```json block is not closed")?;
        rest[..end].trim()
    };
    serde_json::from_str(json_text).map_err(|e| format!("the body is not a peer record: {e}"))
}

fn body_for(record: &PeerRecord) -> Result<String, SourceError> {
    let body = serde_json::to_string_pretty(record)
        .map_err(|e| SourceError::Remote(format!("cannot encode the record: {e}")))?;
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(SourceError::Remote(format!(
            "the record is {} characters as JSON; GitHub issue bodies stop at {MAX_BODY_CHARS}",
            body.len()
        )));
    }
    Ok(body)
}

fn labels_for(record: &PeerRecord) -> Vec<String> {
    let mut labels = vec![LABEL_REGISTRY.to_owned(), LABEL_ACTIVE.to_owned()];
    labels.extend(
        record
            .capabilities
            .iter()
            .map(|c| format!("{CAPABILITY_LABEL_PREFIX}{c}")),
    );
    labels
}

/// The labels of a closed peer issue: `peer-active` swapped for `peer-inactive`.
fn inactive_labels(issue: &RemoteIssue) -> Vec<String> {
    let mut labels: Vec<String> = issue
        .label_names()
        .into_iter()
        .filter(|l| {
            !l.eq_ignore_ascii_case(LABEL_ACTIVE) && !l.eq_ignore_ascii_case(LABEL_INACTIVE)
        })
        .collect();
    labels.push(LABEL_INACTIVE.to_owned());
    labels
}

fn percent_encode_labels(labels: &[String]) -> String {
    // Label names here are [a-z0-9._-] (checked before); only the separator needs encoding.
    labels.join("%2C")
}

impl GitHubIssuesSource {
    /// Builds the client. Needs a tokio runtime (octocrab spawns its service worker).
    pub fn new(settings: GitHubSettings, token: String) -> Result<Self, SourceError> {
        let client = Octocrab::builder()
            .personal_token(token)
            .base_uri(settings.api_url.as_str())
            .map_err(|e| {
                SourceError::Remote(format!("bad GitHub API URL `{}`: {e}", settings.api_url))
            })?
            .add_retry_config(RetryConfig::None)
            // The whole exchange runs under `request_timeout` in `send`, which reports it as
            // a timeout; octocrab's own read timeout would surface as an opaque service error.
            .set_connect_timeout(Some(settings.request_timeout))
            .build()
            .map_err(|e| SourceError::Remote(format!("cannot build the GitHub client: {e}")))?;
        let issues_path = format!(
            "/repos/{}/{}/issues",
            settings.repo.owner, settings.repo.name
        );
        Ok(GitHubIssuesSource {
            client,
            settings,
            issues_path,
            pages: Mutex::new(HashMap::new()),
            listing: Mutex::new(None),
            issue_numbers: Mutex::new(HashMap::new()),
            blocked_until: Mutex::new(None),
            writes: Mutex::new(VecDeque::new()),
            write_lock: tokio::sync::Mutex::new(()),
            notices: Mutex::new(Vec::new()),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "issues in {} through {}",
            self.settings.repo, self.settings.api_url
        )
    }

    fn notice(&self, message: String) {
        tracing::warn!("{message}");
        lock(&self.notices).push(message);
    }

    fn check_not_blocked(&self) -> Result<(), SourceError> {
        let mut blocked = lock(&self.blocked_until);
        if let Some(until) = *blocked {
            let now = Instant::now();
            if until > now {
                return Err(SourceError::RateLimited {
                    retry_after_seconds: (until - now).as_secs().max(1),
                });
            }
            *blocked = None;
        }
        Ok(())
    }

    fn block_for(&self, seconds: u64) {
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut blocked = lock(&self.blocked_until);
        if blocked.is_none_or(|b| b < until) {
            *blocked = Some(until);
        }
    }

    /// Reserves one write in the budget, or says when one will be free.
    fn reserve_write(&self) -> Result<(), SourceError> {
        let now = Instant::now();
        let mut writes = lock(&self.writes);
        self.check_budget(&mut writes, now)?;
        writes.push_back(now);
        Ok(())
    }

    /// Fails, before any request is sent, when the budget has no write left: a register
    /// always writes, so looking its issue up first would only spend requests and time.
    fn ensure_write_left(&self) -> Result<(), SourceError> {
        self.check_budget(&mut lock(&self.writes), Instant::now())
    }

    /// `RateLimited` with the wait until the budget has room again, if it has none now.
    /// `writes` are the times of this process's writes; those older than an hour go.
    fn check_budget(
        &self,
        writes: &mut VecDeque<Instant>,
        now: Instant,
    ) -> Result<(), SourceError> {
        let budget = self.settings.write_budget;
        while writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            writes.pop_front();
        }
        let last_minute = writes
            .iter()
            .filter(|t| now.duration_since(**t) < Duration::from_secs(60))
            .count();
        let wait = if writes.len() >= budget.per_hour {
            writes
                .front()
                .map(|t| 3600 - now.duration_since(*t).as_secs())
        } else if last_minute >= budget.per_minute {
            writes
                .iter()
                .find(|t| now.duration_since(**t) < Duration::from_secs(60))
                .map(|t| 60 - now.duration_since(*t).as_secs())
        } else {
            None
        };
        match wait {
            Some(wait) => Err(SourceError::RateLimited {
                retry_after_seconds: wait.max(1),
            }),
            None => Ok(()),
        }
    }

    /// Sends one request under the request timeout and classifies the answer. 2xx and 304
    /// come back as answers; everything else as the matching error.
    async fn send(
        &self,
        method: http::Method,
        uri: &str,
        body: Option<&Value>,
        if_none_match: Option<&str>,
    ) -> Result<Answer, SourceError> {
        self.check_not_blocked()?;
        let timeout = self.settings.request_timeout;
        let exchange = async {
            let response = match method {
                http::Method::POST => self.client._post(uri, body).await,
                http::Method::PATCH => self.client._patch(uri, body).await,
                _ => {
                    let mut headers = HeaderMap::new();
                    if let Some(etag) = if_none_match
                        && let Ok(value) = etag.parse()
                    {
                        headers.insert(header::IF_NONE_MATCH, value);
                    }
                    self.client._get_with_headers(uri, Some(headers)).await
                }
            }
            .map_err(|e| {
                SourceError::Remote(format!(
                    "cannot reach GitHub at {}: {e}",
                    self.settings.api_url
                ))
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| SourceError::Remote(format!("GitHub's answer broke off: {e}")))?
                .to_bytes()
                .to_vec();
            Ok::<_, SourceError>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer?,
            Err(_) => return Err(SourceError::Timeout(timeout)),
        };
        tracing::debug!(%method, uri, status = %answer.status, "github request");
        self.classify(answer)
    }

    fn classify(&self, answer: Answer) -> Result<Answer, SourceError> {
        let status = answer.status;
        let headers = &answer.headers;
        let remaining =
            header_str(headers, "x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok());
        let reset_in = header_str(headers, "x-ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|reset| reset.saturating_sub(unix_now()).max(1));
        let retry_after = header_str(headers, "retry-after").and_then(|v| v.parse::<u64>().ok());
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            if remaining == Some(0) {
                // The quota is spent: stop before GitHub has to refuse us.
                self.block_for(reset_in.unwrap_or(60));
            }
            return Ok(answer);
        }
        let message = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (retry_after.is_some()
                    || remaining == Some(0)
                    || message.to_ascii_lowercase().contains("rate limit")));
        if limited {
            // GitHub: honour retry-after; else wait for the reset when the quota is spent;
            // else wait at least a minute.
            let wait = retry_after
                .or(if remaining == Some(0) { reset_in } else { None })
                .unwrap_or(60);
            self.block_for(wait);
            return Err(SourceError::RateLimited {
                retry_after_seconds: wait,
            });
        }
        let repo = &self.settings.repo;
        Err(SourceError::Remote(match status {
            StatusCode::UNAUTHORIZED => {
                "GitHub refused the token (401 Bad credentials); set GITHUB_TOKEN to a valid token"
                    .to_owned()
            }
            StatusCode::FORBIDDEN => format!(
                "GitHub refused the request (403 {message}); the token needs write access to issues of {repo}"
            ),
            StatusCode::NOT_FOUND => {
                format!("repository {repo} was not found, or the token cannot see it (404)")
            }
            StatusCode::GONE => format!("issues are disabled in {repo} (410)"),
            _ => format!("GitHub answered {status}: {message}"),
        }))
    }

    /// GET `uri`, conditional on the ETag of the last answer for it: a 304 (which costs no
    /// quota) returns the remembered body. Returns the body and the `Link` next page.
    async fn get_cached(&self, uri: &str) -> Result<CachedPage, SourceError> {
        let cached = lock(&self.pages).get(uri).cloned();
        let answer = self
            .send(
                http::Method::GET,
                uri,
                None,
                cached.as_ref().map(|c| c.etag.as_str()),
            )
            .await?;
        if let (StatusCode::NOT_MODIFIED, Some(cached)) = (answer.status, cached) {
            return Ok(cached);
        }
        let page = CachedPage {
            etag: header_str(&answer.headers, "etag")
                .unwrap_or_default()
                .to_owned(),
            next: next_link(&answer.headers),
            body: Arc::new(answer.body),
        };
        if !page.etag.is_empty() {
            let mut cache = lock(&self.pages);
            if cache.len() >= MAX_CACHED_PAGES {
                cache.clear();
            }
            cache.insert(uri.to_owned(), page.clone());
        }
        Ok(page)
    }

    /// Every open issue carrying all of `labels`, oldest first, 100 a page, following
    /// `Link`, each page conditional on its ETag. Oldest first keeps pages stable: a new
    /// issue changes only the last page, an edit only its own page.
    async fn fetch_issues(
        &self,
        labels: &[String],
        progress: &Progress,
    ) -> Result<Vec<RemoteIssue>, SourceError> {
        let mut uri = Some(format!(
            "{}?state=open&labels={}&sort=created&direction=asc&per_page=100",
            self.issues_path,
            percent_encode_labels(labels)
        ));
        let mut issues = Vec::new();
        let mut pages = 0u64;
        while let Some(current) = uri.take() {
            let page = self.get_cached(&current).await?;
            let parsed: Vec<RemoteIssue> = serde_json::from_slice(&page.body).map_err(|e| {
                SourceError::Remote(format!("GitHub's issue listing did not parse: {e}"))
            })?;
            issues.extend(parsed);
            pages += 1;
            progress.report(
                pages,
                None,
                format!("read {} GitHub issues ({pages} pages)", issues.len()),
            );
            uri = page.next;
        }
        Ok(issues)
    }

    /// The newest open peer issues (one page): where a create that raced with ours is.
    async fn newest_issues(&self) -> Result<Vec<RemoteIssue>, SourceError> {
        let uri = format!(
            "{}?state=open&labels={LABEL_REGISTRY}&sort=created&direction=desc&per_page=100",
            self.issues_path
        );
        let page = self.get_cached(&uri).await?;
        serde_json::from_slice(&page.body)
            .map_err(|e| SourceError::Remote(format!("GitHub's issue listing did not parse: {e}")))
    }

    /// Checks one issue against the trust rules and parses its record.
    /// `Ok(None)`: not a peer issue at all (a pull request); `Err`: a peer issue that
    /// breaks a rule, with the reason.
    fn parse_issue(&self, issue: &RemoteIssue) -> Result<Option<PeerRecord>, String> {
        if issue.pull_request.is_some() {
            return Ok(None);
        }
        if !issue.has_label(LABEL_REGISTRY) {
            return Err(format!("it lacks the `{LABEL_REGISTRY}` label"));
        }
        if !self.trusted(issue) {
            let author = issue.user.as_ref().map_or("", |u| u.login.as_str());
            return Err(format!("its author `{author}` is not a trusted author"));
        }
        let title_id = issue.title_peer_id().ok_or_else(|| {
            format!(
                "its title `{}` does not start with `{TITLE_PREFIX}`",
                issue.title
            )
        })?;
        let mut record = parse_body(issue.body.as_deref().unwrap_or(""))?;
        if record.peer_id != title_id {
            return Err(format!(
                "its title names `{title_id}` but its body names `{}`",
                record.peer_id
            ));
        }
        record.check().map_err(|e| e.to_string())?;
        record.source = SOURCE.as_str().to_owned();
        Ok(Some(record))
    }

    fn parse_all(&self, issues: &[RemoteIssue]) -> Parsed {
        let mut peers = Vec::new();
        let mut rejected = 0;
        for issue in issues {
            match self.parse_issue(issue) {
                Ok(Some(record)) => peers.push((issue.number, record)),
                Ok(None) => {}
                Err(reason) => {
                    rejected += 1;
                    tracing::warn!(
                        issue = issue.number,
                        "skipped GitHub issue #{}: {reason}",
                        issue.number
                    );
                }
            }
        }
        Parsed { peers, rejected }
    }

    /// Remembers which open issue holds each peer: the lowest-numbered one is canonical.
    fn remember_numbers(&self, peers: &[(u64, PeerRecord)]) {
        let mut numbers = lock(&self.issue_numbers);
        numbers.clear();
        for (number, record) in peers {
            numbers
                .entry(record.peer_id.clone())
                .and_modify(|n| *n = (*n).min(*number))
                .or_insert(*number);
        }
    }

    /// The full listing (every open peer issue), fresh from GitHub (conditional requests).
    async fn full_listing(
        &self,
        progress: &Progress,
    ) -> Result<(Vec<RemoteIssue>, Parsed), SourceError> {
        let issues = self
            .fetch_issues(&[LABEL_REGISTRY.to_owned()], progress)
            .await?;
        let parsed = self.parse_all(&issues);
        self.remember_numbers(&parsed.peers);
        *lock(&self.listing) = Some(CachedListing {
            fetched: Instant::now(),
            peers: parsed.peers.clone(),
            rejected: parsed.rejected,
        });
        Ok((issues, parsed))
    }

    fn fresh_listing(&self) -> Option<CachedListing> {
        lock(&self.listing)
            .as_ref()
            .filter(|l| l.fetched.elapsed() < self.settings.listing_ttl)
            .cloned()
    }

    fn forget_listing(&self) {
        *lock(&self.listing) = None;
    }

    /// The open issue that holds `peer_id` (the lowest-numbered if several), found by its
    /// number when known (one request), else through the listing. Never the search API,
    /// whose index lags behind writes.
    async fn find_issue(&self, peer_id: &str) -> Result<Option<RemoteIssue>, SourceError> {
        let known = lock(&self.issue_numbers).get(peer_id).copied();
        if let Some(number) = known {
            let answer = self
                .get_cached(&format!("{}/{number}", self.issues_path))
                .await;
            match answer {
                Ok(answer) => {
                    if let Ok(issue) = serde_json::from_slice::<RemoteIssue>(&answer.body)
                        && issue.state == "open"
                        && issue.pull_request.is_none()
                        && issue.has_label(LABEL_REGISTRY)
                        && issue.title_peer_id() == Some(peer_id)
                    {
                        return Ok(Some(issue));
                    }
                }
                Err(SourceError::Remote(_)) => {} // deleted or moved: look it up again
                Err(e) => return Err(e),
            }
            lock(&self.issue_numbers).remove(peer_id);
        }
        let (issues, _) = self.full_listing(&Progress::default()).await?;
        Ok(self.lowest_open_issue(&issues, peer_id))
    }

    fn lowest_open_issue(&self, issues: &[RemoteIssue], peer_id: &str) -> Option<RemoteIssue> {
        issues
            .iter()
            .filter(|i| {
                i.pull_request.is_none() && i.title_peer_id() == Some(peer_id) && self.trusted(i)
            })
            .min_by_key(|i| i.number)
            .cloned()
    }

    fn trusted(&self, issue: &RemoteIssue) -> bool {
        let author = issue.user.as_ref().map_or("", |u| u.login.as_str());
        self.settings.trusted_authors.is_empty()
            || self
                .settings
                .trusted_authors
                .iter()
                .any(|a| a.eq_ignore_ascii_case(author))
    }

    async fn patch_issue(&self, number: u64, patch: Value) -> Result<RemoteIssue, SourceError> {
        self.reserve_write()?;
        let answer = self
            .send(
                http::Method::PATCH,
                &format!("{}/{number}", self.issues_path),
                Some(&patch),
                None,
            )
            .await?;
        serde_json::from_slice(&answer.body).map_err(|e| {
            SourceError::Remote(format!("GitHub's answer to an edit did not parse: {e}"))
        })
    }

    async fn close_issue(&self, issue: &RemoteIssue, reason: &str) -> Result<(), SourceError> {
        self.patch_issue(
            issue.number,
            json!({"state": "closed", "state_reason": reason, "labels": inactive_labels(issue)}),
        )
        .await?;
        Ok(())
    }

    /// Writes `record` over an existing issue (body, and labels when they differ).
    async fn write_over(
        &self,
        issue: &RemoteIssue,
        record: &PeerRecord,
    ) -> Result<(), SourceError> {
        let mut patch = json!({"body": body_for(record)?});
        let wanted = labels_for(record);
        let mut have = issue.label_names();
        have.sort_unstable();
        let mut sorted_wanted = wanted.clone();
        sorted_wanted.sort_unstable();
        if have != sorted_wanted {
            patch["labels"] = json!(wanted);
        }
        self.patch_issue(issue.number, patch).await?;
        Ok(())
    }

    /// Creates the peer's issue holding `record`, then makes sure it is the only open one:
    /// when two processes created one at once, the higher-numbered creator closes its own
    /// as a duplicate and writes to the lower one what `decide` makes of that issue's copy
    /// (issue numbers only grow, so the higher creator always sees the lower issue).
    async fn create(&self, record: PeerRecord, decide: &Decide) -> Result<Modified, SourceError> {
        self.reserve_write()?;
        let payload = json!({
            "title": format!("{TITLE_PREFIX}{}", record.peer_id),
            "body": body_for(&record)?,
            "labels": labels_for(&record),
        });
        let created = match self
            .send(http::Method::POST, &self.issues_path, Some(&payload), None)
            .await
        {
            Ok(answer) => serde_json::from_slice::<RemoteIssue>(&answer.body).map_err(|e| {
                SourceError::Remote(format!("GitHub's answer to a create did not parse: {e}"))
            })?,
            Err(e @ (SourceError::Timeout(_) | SourceError::Remote(_))) => {
                // The create may have landed before the failure: look before reporting it,
                // never create blindly again.
                let landed = match self.newest_issues().await {
                    Ok(newest) => self.lowest_open_issue(&newest, &record.peer_id),
                    Err(_) => None,
                };
                match landed {
                    Some(issue) => issue,
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        // A create that raced with ours happened moments ago: it is on the newest page.
        let newest = self.newest_issues().await?;
        let canonical = self
            .lowest_open_issue(&newest, &record.peer_id)
            .filter(|c| c.number < created.number);
        let Some(canonical) = canonical else {
            lock(&self.issue_numbers).insert(record.peer_id.clone(), created.number);
            return Ok(Modified {
                before: None,
                after: Some(record),
                written: true,
                location: Some(format!("issue #{}", created.number)),
            });
        };
        self.close_issue(&created, "duplicate").await?;
        lock(&self.issue_numbers).insert(record.peer_id.clone(), canonical.number);
        let held = self.parse_issue(&canonical).ok().flatten();
        let location = Some(format!("issue #{}", canonical.number));
        match decide(held.as_ref()) {
            Decision::Write(mut merged) => {
                merged.source = SOURCE.as_str().to_owned();
                self.write_over(&canonical, &merged).await?;
                Ok(Modified {
                    before: held,
                    after: Some(merged),
                    written: true,
                    location,
                })
            }
            Decision::Keep | Decision::Remove => Ok(Modified {
                after: held.clone(),
                before: held,
                written: true,
                location,
            }),
        }
    }

    /// [`Source::modify`], for a caller that holds the write lock.
    async fn modify_serialized(
        &self,
        peer_id: &str,
        decide: &Decide,
    ) -> Result<Modified, SourceError> {
        // A change that writes even over nothing (a register) is refused before any
        // request when the write budget is spent, rather than after finding the issue.
        if matches!(decide(None), Decision::Write(_)) {
            self.ensure_write_left()?;
        }
        let issue = self.find_issue(peer_id).await?;
        // A broken body for this peer reads as no copy: a register then rewrites the issue.
        let before = issue
            .as_ref()
            .and_then(|i| self.parse_issue(i).ok().flatten());
        let location = issue.as_ref().map(|i| format!("issue #{}", i.number));
        match (decide(before.as_ref()), issue) {
            (Decision::Keep, _) | (Decision::Remove, None) => Ok(Modified {
                after: before.clone(),
                before,
                written: false,
                location,
            }),
            (Decision::Write(mut record), issue) => {
                record.source = SOURCE.as_str().to_owned();
                self.ensure_write_left()?;
                let Some(issue) = issue else {
                    return self.create(record, decide).await;
                };
                self.write_over(&issue, &record).await?;
                lock(&self.issue_numbers).insert(record.peer_id.clone(), issue.number);
                Ok(Modified {
                    before,
                    after: Some(record),
                    written: true,
                    location,
                })
            }
            (Decision::Remove, Some(issue)) => {
                self.close_issue(&issue, "not_planned").await?;
                lock(&self.issue_numbers).remove(peer_id);
                Ok(Modified {
                    before,
                    after: None,
                    written: true,
                    location,
                })
            }
        }
    }
}

#[async_trait]
impl Source for GitHubIssuesSource {
    fn name(&self) -> SourceName {
        SOURCE
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            costly_writes: true,
            ..Abilities::default()
        }
    }

    async fn modify(&self, peer_id: &str, decide: Decide) -> Result<Modified, SourceError> {
        let _serial = self.write_lock.lock().await;
        let result = self.modify_serialized(peer_id, &decide).await;
        if result.as_ref().map_or(true, |m| m.written) {
            // A write (or a failure midway) makes the cached listing stale.
            self.forget_listing();
        }
        result
    }

    async fn scan(&self, hint: &PeerFilter, progress: &Progress) -> Result<Listing, SourceError> {
        let (peers, rejected) = if let Some(cached) = self.fresh_listing() {
            (cached.peers, cached.rejected)
        } else if hint.capabilities.is_empty() {
            let (_, parsed) = self.full_listing(progress).await?;
            (parsed.peers, parsed.rejected)
        } else {
            // Push the capability filter into the query: fewer pages to read.
            let mut labels = vec![LABEL_REGISTRY.to_owned()];
            labels.extend(
                hint.capabilities
                    .iter()
                    .map(|c| format!("{CAPABILITY_LABEL_PREFIX}{c}")),
            );
            let issues = self.fetch_issues(&labels, progress).await?;
            let parsed = self.parse_all(&issues);
            (parsed.peers, parsed.rejected)
        };
        // Two open issues for one peer (written by someone else): the newest copy wins.
        let mut by_peer: HashMap<String, PeerRecord> = HashMap::new();
        for (_, record) in peers {
            match by_peer.get_mut(&record.peer_id) {
                Some(kept) => {
                    if std::ptr::eq(crate::peer::newest(kept, &record), &record) {
                        *kept = record;
                    }
                }
                None => {
                    by_peer.insert(record.peer_id.clone(), record);
                }
            }
        }
        let matching: Vec<PeerRecord> = by_peer.into_values().filter(|r| hint.matches(r)).collect();
        Ok(Listing {
            matched: matching.len(),
            peers: crate::peer::top_ranked(matching.iter(), hint.limit),
            rejected,
        })
    }

    async fn remove_stale(
        &self,
        peer_ids: &[String],
        now: f64,
        progress: &Progress,
    ) -> Result<Vec<String>, SourceError> {
        let _serial = self.write_lock.lock().await;
        let (issues, parsed) = self.full_listing(progress).await?;
        let by_number: HashMap<u64, &RemoteIssue> = issues.iter().map(|i| (i.number, i)).collect();
        let stale: Vec<(u64, String)> = parsed
            .peers
            .iter()
            .filter(|(_, r)| peer_ids.contains(&r.peer_id) && r.is_removed_by_cleanup(now))
            .map(|(n, r)| (*n, r.peer_id.clone()))
            .collect();
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let total = stale.len() as u64;
        let mut removed = Vec::new();
        for (done, (number, peer_id)) in stale.into_iter().enumerate() {
            let Some(issue) = by_number.get(&number) else {
                continue;
            };
            if let Err(e) = self.close_issue(issue, "not_planned").await {
                if removed.is_empty() {
                    self.forget_listing();
                    return Err(e);
                }
                self.notice(format!(
                    "cleanup stopped after closing {} of {total} expired issues: {e}; the rest are closed by a later cleanup",
                    removed.len()
                ));
                break;
            }
            lock(&self.issue_numbers).remove(&peer_id);
            removed.push(peer_id);
            progress.report(
                done as u64 + 1,
                Some(total),
                format!("closed {} of {total} expired GitHub issues", done + 1),
            );
        }
        self.forget_listing();
        Ok(removed)
    }

    fn evict_stale_cache(&self, now: f64) -> usize {
        let mut listing = lock(&self.listing);
        let Some(cached) = listing.as_mut() else {
            return 0;
        };
        let before = cached.peers.len();
        cached.peers.retain(|(_, r)| !r.is_removed_by_cleanup(now));
        before - cached.peers.len()
    }

    fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw JSON and a fenced ```json block both parse; anything else is refused.
    #[test]
    fn body_parsing_accepts_raw_and_fenced_json() {
        let raw = r#"{"peer_id":"a","multiaddr":"/ip4/127.0.0.1/tcp/1","capabilities":[],"first_seen":1,"last_seen":2,"source":"github","ttl_seconds":60,"metadata":{}}"#;
        assert_eq!(parse_body(raw).expect("raw").peer_id, "a");
        let fenced = format!("Registered by an agent.\n\n```json\n{raw}\n```\n");
        assert_eq!(parse_body(&fenced).expect("fenced").last_seen, 2.0);
        assert!(parse_body("hello").is_err());
        assert!(parse_body("```json\n{\"peer_id\": 1}\n```").is_err());
    }

    /// `Link` headers yield the next page's absolute URL.
    #[test]
    fn next_link_is_read_from_the_link_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "link",
            r#"<http://127.0.0.1:1/repos/a/b/issues?page=2>; rel="next", <http://127.0.0.1:1/repos/a/b/issues?page=3>; rel="last""#
                .parse()
                .expect("header"),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("http://127.0.0.1:1/repos/a/b/issues?page=2")
        );
        headers.insert(
            "link",
            r#"<http://x/?page=1>; rel="prev""#.parse().expect("header"),
        );
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn repo_names_are_checked() {
        assert!("acme/peers".parse::<RepoName>().is_ok());
        assert!("acme/my.repo_1".parse::<RepoName>().is_ok());
        assert!("acme".parse::<RepoName>().is_err());
        assert!("acme/peers/x".parse::<RepoName>().is_err());
        assert!("/peers".parse::<RepoName>().is_err());
    }

    /// Closing swaps `peer-active` for `peer-inactive` and keeps the other labels.
    #[test]
    fn inactive_labels_swap_the_state_label() {
        let issue: RemoteIssue = serde_json::from_value(json!({
            "number": 1, "title": "Peer: a",
            "labels": [{"name": "peer-registry"}, {"name": "peer-active"}, {"name": "capability-gpu"}]
        }))
        .expect("issue");
        assert_eq!(
            inactive_labels(&issue),
            ["peer-registry", "capability-gpu", "peer-inactive"]
        );
    }
}
