//! `GitHubIssuesSource`: one GitHub issue per peer in a shared repository, so peers on
//! different machines see each other with no infrastructure beyond GitHub.
//!
//! Format: title `Peer: <peer_id>`; body the record as JSON (a ```` ```json ```` fenced
//! block is accepted on read); labels `peer-registry`, `peer-active` / `peer-inactive`
//! and `capability-<name>` per capability ([`format`]).
//!
//! Trust: only open issues labelled `peer-registry` count (on GitHub only people with
//! push or triage access can set labels), the title's id must equal the body's, the body
//! must keep every rule of the format, and with a trusted-author list the issue must be
//! opened by one of those logins. A record more than 300 s ahead of the server's clock is
//! rejected too, and closed by cleanup. Anything else is skipped and counted as rejected.
//! A register closes the other open issues it knows for its peer as duplicates.
//!
//! Quota: listings are conditional (`If-None-Match`; a 304 costs no quota), one listing
//! fetch runs at a time for all callers and is kept for a short while ([`listing`]),
//! heartbeats write only when the remote lease is more than half used or a field
//! changed, writes are serialized and kept within GitHub's content-creation limits
//! ([`budget`]), and a rate-limit answer stops all requests until GitHub's retry time
//! (at most an hour) instead of retrying ([`client`]).
//!
//! Hostile or broken APIs: answers are read up to 8 MiB, listings up to 100 pages and
//! never the same page twice, every request under the request timeout.
//!
//! Layout: `client` (HTTP through octocrab, body cap, rate limits), `listing` (paging,
//! ETag page cache, single flight), `budget` (the write budget), `format` (issue format
//! and trust rules); this file holds the source and its operations.

mod budget;
mod client;
mod format;
mod listing;
mod options;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

pub use budget::WriteBudget;
pub use format::{
    CAPABILITY_LABEL_PREFIX, LABEL_ACTIVE, LABEL_INACTIVE, LABEL_REGISTRY, RepoName, TITLE_PREFIX,
    parse_body,
};
pub use options::{GitHubOptions, github_token_from_env};

use super::{
    Abilities, Decide, Decision, Listing, Modified, Progress, Source, SourceError, SourceName,
};
use crate::peer::{PeerFilter, PeerRecord};
use budget::WriteLog;
use client::Client;
use format::{RemoteIssue, Trust, body_for, inactive_labels, labels_for};
use listing::{FetchedListing, Listings, Reader};

const SOURCE: SourceName = SourceName::GITHUB;
/// Most duplicate issues one register closes.
const MAX_DUPLICATES_CLOSED: usize = 10;

/// Everything the source needs. The token is handed to octocrab and not kept.
pub struct GitHubSettings {
    pub repo: RepoName,
    pub api_url: String,
    pub request_timeout: Duration,
    pub trusted_authors: Vec<String>,
    pub listing_ttl: Duration,
    pub write_budget: WriteBudget,
}

pub struct GitHubIssuesSource {
    repo: RepoName,
    listings: Listings,
    /// The open issue that holds each peer, as last seen.
    issue_numbers: Mutex<HashMap<String, u64>>,
    /// When the listing `issue_numbers` was last rebuilt from was read.
    numbers_from: Mutex<Option<std::time::Instant>>,
    writes: WriteLog,
    /// Writes go one at a time (GitHub asks for serial mutations), which also keeps two
    /// registers of one peer in this process from creating two issues.
    write_lock: tokio::sync::Mutex<()>,
    notices: Mutex<Vec<String>>,
}

use crate::lock;

impl GitHubIssuesSource {
    /// Builds the client. Needs a tokio runtime (octocrab spawns its service worker).
    pub fn new(settings: GitHubSettings, token: String) -> Result<Self, SourceError> {
        let client = Client::new(
            &settings.api_url,
            settings.repo.clone(),
            settings.request_timeout,
            token,
        )?;
        let issues_path = format!(
            "/repos/{}/{}/issues",
            settings.repo.owner, settings.repo.name
        );
        let trust = Trust {
            authors: settings.trusted_authors,
        };
        let reader = Arc::new(Reader::new(client, issues_path, trust));
        Ok(GitHubIssuesSource {
            repo: settings.repo,
            listings: Listings::new(reader, settings.listing_ttl),
            issue_numbers: Mutex::new(HashMap::new()),
            numbers_from: Mutex::new(None),
            writes: WriteLog::new(settings.write_budget),
            write_lock: tokio::sync::Mutex::new(()),
            notices: Mutex::new(Vec::new()),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "issues in {} through {}",
            self.repo,
            self.reader().client.api_url()
        )
    }

    fn reader(&self) -> &Reader {
        self.listings.reader()
    }

    fn issues_path(&self) -> &str {
        &self.reader().issues_path
    }

    fn notice(&self, message: String) {
        tracing::warn!("{message}");
        lock(&self.notices).push(message);
    }

    /// Remembers which open issue holds each peer (the lowest-numbered is canonical),
    /// from a full listing read after the last write.
    fn remember_numbers(&self, listing: &FetchedListing) {
        if listing.generation != self.listings.generation() {
            return;
        }
        // A listing served again from the cache: nothing new to learn from it.
        if lock(&self.numbers_from).replace(listing.fetched) == Some(listing.fetched) {
            return;
        }
        let mut numbers = lock(&self.issue_numbers);
        numbers.clear();
        for (number, record) in &listing.peers {
            numbers
                .entry(record.peer_id.clone())
                .and_modify(|n| *n = (*n).min(*number))
                .or_insert(*number);
        }
    }

    /// The full listing, read after the last write (conditional requests).
    async fn full_listing(&self, progress: &Progress) -> Result<Arc<FetchedListing>, SourceError> {
        let listing = self
            .listings
            .current(&[LABEL_REGISTRY.to_owned()], progress)
            .await?;
        self.remember_numbers(&listing);
        Ok(listing)
    }

    /// The open issue that holds `peer_id` (the lowest-numbered if several), found by its
    /// number when known (one request), else through the listing. Never the search API,
    /// whose index lags behind writes.
    async fn find_issue(&self, peer_id: &str) -> Result<Option<RemoteIssue>, SourceError> {
        let known = lock(&self.issue_numbers).get(peer_id).copied();
        if let Some(number) = known {
            let answer = self
                .reader()
                .get_cached(&format!("{}/{number}", self.issues_path()))
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
                Err(SourceError::NotFound(_)) => {} // deleted or moved: look it up again
                Err(e) => return Err(e),
            }
            lock(&self.issue_numbers).remove(peer_id);
        }
        let listing = self.full_listing(&Progress::default()).await?;
        // The listing keeps records, not bodies: give the issue its record back.
        Ok(self
            .lowest_open_issue(&listing.issues, peer_id)
            .map(|mut issue| {
                issue.body = listing
                    .peers
                    .iter()
                    .find(|(n, _)| *n == issue.number)
                    .and_then(|(_, r)| serde_json::to_string(r).ok());
                issue
            }))
    }

    fn lowest_open_issue(&self, issues: &[RemoteIssue], peer_id: &str) -> Option<RemoteIssue> {
        issues
            .iter()
            .filter(|i| self.reader().trust.is_peer_issue_for(i, peer_id))
            .min_by_key(|i| i.number)
            .cloned()
    }

    async fn patch_issue(&self, number: u64, patch: Value) -> Result<RemoteIssue, SourceError> {
        self.writes.reserve()?;
        let answer = self
            .reader()
            .client
            .send(
                http::Method::PATCH,
                &format!("{}/{number}", self.issues_path()),
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

    /// Closes, as `duplicate`, the other open trusted issues for `peer_id` in the last
    /// listing (at most [`MAX_DUPLICATES_CLOSED`]), so that no second issue for a peer
    /// (an attacker's, or another tool's) can outrank the one this register wrote.
    /// Failures are logged, never fatal: the register itself succeeded.
    async fn close_duplicates(&self, peer_id: &str, canonical: u64) {
        let Some(listing) = self.listings.last() else {
            return;
        };
        let duplicates: Vec<&RemoteIssue> = listing
            .issues
            .iter()
            .filter(|i| i.number != canonical && self.reader().trust.is_peer_issue_for(i, peer_id))
            .take(MAX_DUPLICATES_CLOSED)
            .collect();
        let mut closed = Vec::new();
        for issue in duplicates {
            match self.close_issue(issue, "duplicate").await {
                Ok(()) => closed.push(issue.number),
                Err(e) => {
                    self.notice(format!(
                        "could not close issue #{} as a duplicate of #{canonical} for peer `{peer_id}`: {e}",
                        issue.number
                    ));
                    break;
                }
            }
        }
        if !closed.is_empty() {
            tracing::warn!(
                peer_id,
                "closed {} duplicate GitHub issues of #{canonical}: {closed:?}",
                closed.len()
            );
            self.listings.forget_issues(&closed);
        }
    }

    /// Creates the peer's issue holding `record`, then makes sure it is the only open one:
    /// when two processes created one at once, the higher-numbered creator closes its own
    /// as a duplicate and writes to the lower one what `decide` makes of that issue's copy
    /// (issue numbers only grow, so the higher creator always sees the lower issue).
    /// Returns what was done and the number of the issue that holds the peer.
    async fn create(
        &self,
        record: PeerRecord,
        decide: &Decide,
    ) -> Result<(Modified, u64), SourceError> {
        self.writes.reserve()?;
        let payload = json!({
            "title": format!("{TITLE_PREFIX}{}", record.peer_id),
            "body": body_for(&record)?,
            "labels": labels_for(&record),
        });
        let created = match self
            .reader()
            .client
            .send(http::Method::POST, self.issues_path(), Some(&payload), None)
            .await
        {
            Ok(answer) => serde_json::from_slice::<RemoteIssue>(&answer.body).map_err(|e| {
                SourceError::Remote(format!("GitHub's answer to a create did not parse: {e}"))
            })?,
            Err(e @ (SourceError::Timeout(_) | SourceError::Remote(_))) => {
                // The create may have landed before the failure: look before reporting it,
                // never create blindly again.
                let landed = match self.reader().newest_issues().await {
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
        let newest = self.reader().newest_issues().await?;
        let canonical = self
            .lowest_open_issue(&newest, &record.peer_id)
            .filter(|c| c.number < created.number);
        let Some(canonical) = canonical else {
            lock(&self.issue_numbers).insert(record.peer_id.clone(), created.number);
            let modified = Modified {
                before: None,
                after: Some(record),
                written: true,
                location: Some(format!("issue #{}", created.number)),
            };
            return Ok((modified, created.number));
        };
        if let Err(e) = self.close_issue(&created, "duplicate").await {
            // Ours stays open beside the canonical one; the next register of this peer
            // closes it as a duplicate.
            self.notice(format!(
                "could not close issue #{} as a duplicate of #{}: {e}",
                created.number, canonical.number
            ));
        }
        lock(&self.issue_numbers).insert(record.peer_id.clone(), canonical.number);
        let held = self.held_copy(&canonical);
        let after = match decide(held.as_ref()) {
            Decision::Write(mut merged) => {
                merged.source = SOURCE.as_str().to_owned();
                self.write_over(&canonical, &merged).await?;
                Some(merged)
            }
            Decision::Keep | Decision::Remove => held.clone(),
        };
        let modified = Modified {
            before: held,
            after,
            written: true,
            location: Some(format!("issue #{}", canonical.number)),
        };
        Ok((modified, canonical.number))
    }

    /// The record an issue holds, if it keeps every rule of the format and trust. (One
    /// stamped ahead of the clock is returned too: the coordinator's rules decide not to
    /// build on it.)
    fn held_copy(&self, issue: &RemoteIssue) -> Option<PeerRecord> {
        self.reader().trust.parse_issue(issue).ok().flatten()
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
            self.writes.ensure_left()?;
        }
        let issue = self.find_issue(peer_id).await?;
        // A broken body for this peer reads as no copy: a register then rewrites the issue.
        let before = issue.as_ref().and_then(|i| self.held_copy(i));
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
                self.writes.ensure_left()?;
                take_the_change()?;
                let (modified, number) = match issue {
                    Some(issue) => {
                        self.write_over(&issue, &record).await?;
                        lock(&self.issue_numbers).insert(record.peer_id.clone(), issue.number);
                        let modified = Modified {
                            before,
                            after: Some(record),
                            written: true,
                            location,
                        };
                        (modified, issue.number)
                    }
                    None => self.create(record, decide).await?,
                };
                self.close_duplicates(peer_id, number).await;
                Ok(modified)
            }
            (Decision::Remove, Some(issue)) => {
                take_the_change()?;
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

/// Takes the caller's change before the first write request is sent: from here on the
/// coordinator waits for the answer (bounded by the request timeouts) instead of giving
/// up, so no answer says `timeout` for a write that lands. A change the caller has
/// already given up on is never sent.
fn take_the_change() -> Result<(), SourceError> {
    if super::Commitment::current().take() {
        Ok(())
    } else {
        Err(SourceError::Withdrawn {
            after: Duration::ZERO,
            waiting_on: "the caller gave up before the write was sent".into(),
        })
    }
}

#[async_trait]
impl Source for GitHubIssuesSource {
    fn name(&self) -> SourceName {
        SOURCE
    }

    /// Every write spends GitHub's content-creation quota: heartbeats are coalesced.
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
            // A write (or a failed one that may have landed) makes the listing stale.
            self.listings.invalidate();
        }
        result
    }

    async fn scan(&self, hint: &PeerFilter, progress: &Progress) -> Result<Listing, SourceError> {
        let (listing, detail) = if hint.capabilities.is_empty() {
            let (listing, detail) = self.listings.for_discover(progress).await?;
            self.remember_numbers(&listing);
            (listing, detail)
        } else if let Some(fresh) = self.listings.fresh() {
            (fresh, None)
        } else {
            // Push the capability filter into the query: fewer pages to read.
            let mut labels = vec![LABEL_REGISTRY.to_owned()];
            labels.extend(
                hint.capabilities
                    .iter()
                    .map(|c| format!("{CAPABILITY_LABEL_PREFIX}{c}")),
            );
            (self.listings.current(&labels, progress).await?, None)
        };
        let mut rejected = listing.rejected;
        let mut by_peer: HashMap<&str, &PeerRecord> = HashMap::new();
        for (number, record) in &listing.peers {
            // A record from the future is not to be trusted: it would outrank every honest
            // copy and never expire. Rejected before the merge, so it cannot win it; only
            // cleanup's scan asks for it, to close it.
            if record.is_ahead_of_clock(hint.now) && !hint.stale_only {
                rejected += 1;
                tracing::warn!(
                    issue = number,
                    "skipped GitHub issue #{number}: its record claims a time more than {} s ahead of this server's clock",
                    crate::peer::MAX_CLOCK_AHEAD_SECONDS
                );
                continue;
            }
            // Two open issues for one peer (written by someone else): the newest wins.
            by_peer
                .entry(record.peer_id.as_str())
                .and_modify(|kept| *kept = crate::peer::newest(kept, record))
                .or_insert(record);
        }
        let matching: Vec<&PeerRecord> =
            by_peer.into_values().filter(|r| hint.matches(r)).collect();
        Ok(Listing {
            matched: matching.len(),
            peers: crate::peer::top_ranked(matching.into_iter(), hint.limit),
            rejected,
            detail,
        })
    }

    async fn remove_stale(
        &self,
        now: f64,
        progress: &Progress,
    ) -> Result<Vec<String>, SourceError> {
        let _serial = self.write_lock.lock().await;
        let listing = self.full_listing(progress).await?;
        let by_number: HashMap<u64, &RemoteIssue> =
            listing.issues.iter().map(|i| (i.number, i)).collect();
        // Per issue: an expired copy, or one claiming a time ahead of the clock (which
        // would never expire). GitHub has no transactions: a peer that heartbeats through
        // another server between this listing and the close is closed; its next
        // heartbeat registers it again.
        let stale: Vec<(u64, String)> = listing
            .peers
            .iter()
            .filter(|(_, r)| r.is_removed_by_cleanup(now))
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
                    self.listings.invalidate();
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
        self.listings.invalidate();
        removed.sort_unstable();
        removed.dedup();
        Ok(removed)
    }

    fn evict_stale_cache(&self, now: f64) -> usize {
        self.listings.evict_stale(now)
    }

    fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notices))
    }
}
