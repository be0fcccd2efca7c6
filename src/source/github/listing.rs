//! Reading the issue listing: pages followed through `Link` (at most [`MAX_PAGES`], never
//! the same page twice), each conditional on the ETag of its last answer (a page cache
//! bounded in entries and bytes), and the single flight that shares one listing fetch
//! among every caller.
//!
//! A listing fetch runs in its own task: a caller that gives up (the source timeout) does
//! not cancel it, so a listing too slow for one call completes for the next one, and
//! fills the cache. While a refresh that another call started runs, discover is served
//! the previous listing, with a detail that says how old it is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::StatusCode;

use super::client::{Client, header_str, next_link};
use super::format::{LABEL_REGISTRY, RemoteIssue, Trust, percent_encode_labels};
use super::lock;
use crate::peer::PeerRecord;
use crate::source::{Progress, SourceError};

/// Most pages read for one listing (100 issues a page: 10,000 issues); past it the
/// listing is an error rather than a partial answer.
pub(crate) const MAX_PAGES: u64 = 100;
/// Most ETag-cached pages kept.
const MAX_CACHED_PAGES: usize = 512;
/// Most bytes of page bodies kept in the ETag cache.
pub(crate) const MAX_CACHED_BYTES: usize = 64 << 20;

/// A page remembered with its ETag, for conditional requests.
#[derive(Clone)]
pub(crate) struct CachedPage {
    pub(crate) etag: String,
    pub(crate) body: Arc<Vec<u8>>,
    pub(crate) next: Option<String>,
}

/// Pages by URI, bounded in entries and in bytes; past a bound it starts over.
#[derive(Default)]
struct PageCache {
    pages: HashMap<String, CachedPage>,
    bytes: usize,
}

impl PageCache {
    fn insert(&mut self, uri: String, page: CachedPage) {
        if let Some(old) = self.pages.remove(&uri) {
            self.bytes -= old.body.len();
        }
        let size = page.body.len();
        if self.pages.len() >= MAX_CACHED_PAGES
            || self.bytes.saturating_add(size) > MAX_CACHED_BYTES
        {
            self.pages.clear();
            self.bytes = 0;
        }
        if size <= MAX_CACHED_BYTES {
            self.bytes += size;
            self.pages.insert(uri, page);
        }
    }
}

/// Everything a listing fetch needs; shared with the tasks that run fetches.
pub(crate) struct Reader {
    pub(crate) client: Client,
    pub(crate) issues_path: String,
    pub(crate) trust: Trust,
    pages: Mutex<PageCache>,
}

/// The same page whatever the form of its URI (a path, or an absolute `Link` target).
fn page_key(uri: &str) -> String {
    uri.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_owned()))
        .unwrap_or_else(|| uri.to_owned())
}

impl Reader {
    pub(crate) fn new(client: Client, issues_path: String, trust: Trust) -> Self {
        Reader {
            client,
            issues_path,
            trust,
            pages: Mutex::new(PageCache::default()),
        }
    }

    /// GET `uri`, conditional on the ETag of the last answer for it: a 304 (which costs no
    /// quota) returns the remembered body.
    pub(crate) async fn get_cached(&self, uri: &str) -> Result<CachedPage, SourceError> {
        let cached = lock(&self.pages).pages.get(uri).cloned();
        let answer = self
            .client
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
            lock(&self.pages).insert(uri.to_owned(), page.clone());
        }
        Ok(page)
    }

    /// Every open issue carrying all of `labels`, oldest first, 100 a page, following
    /// `Link`, each page conditional on its ETag. Oldest first keeps pages stable: a new
    /// issue changes only the last page, an edit only its own page. Stops with an error
    /// on a `Link` back to a page already read, or past [`MAX_PAGES`].
    pub(crate) async fn fetch_issues(
        &self,
        labels: &[String],
        progress: &(dyn Fn(u64, usize) + Sync),
    ) -> Result<Vec<RemoteIssue>, SourceError> {
        let mut uri = Some(format!(
            "{}?state=open&labels={}&sort=created&direction=asc&per_page=100",
            self.issues_path,
            percent_encode_labels(labels)
        ));
        let mut issues = Vec::new();
        let mut seen = HashSet::new();
        let mut pages = 0u64;
        while let Some(current) = uri.take() {
            if !seen.insert(page_key(&current)) {
                return Err(SourceError::Remote(format!(
                    "GitHub's issue listing links back to a page already read after {pages} pages; stopped reading it"
                )));
            }
            if pages >= MAX_PAGES {
                return Err(SourceError::Remote(format!(
                    "GitHub's issue listing has more than {MAX_PAGES} pages ({} issues); stopped reading it",
                    MAX_PAGES * 100
                )));
            }
            let page = self.get_cached(&current).await?;
            let parsed: Vec<RemoteIssue> = serde_json::from_slice(&page.body).map_err(|e| {
                SourceError::Remote(format!("GitHub's issue listing did not parse: {e}"))
            })?;
            issues.extend(parsed);
            pages += 1;
            progress(pages, issues.len());
            uri = page.next;
        }
        Ok(issues)
    }

    /// The newest open peer issues (one page): where a create that raced with ours is.
    pub(crate) async fn newest_issues(&self) -> Result<Vec<RemoteIssue>, SourceError> {
        let uri = format!(
            "{}?state=open&labels={LABEL_REGISTRY}&sort=created&direction=desc&per_page=100",
            self.issues_path
        );
        let page = self.get_cached(&uri).await?;
        serde_json::from_slice(&page.body)
            .map_err(|e| SourceError::Remote(format!("GitHub's issue listing did not parse: {e}")))
    }
}

/// One listing as read, parsed and checked.
#[derive(Clone)]
pub(crate) struct FetchedListing {
    pub(crate) fetched: Instant,
    /// The write generation when the fetch started: a later write makes it stale.
    pub(crate) generation: u64,
    /// Every issue listed, bodies dropped (the valid records are in `peers`).
    pub(crate) issues: Vec<RemoteIssue>,
    /// (issue number, record) for every valid issue; duplicates of one peer included.
    pub(crate) peers: Vec<(u64, PeerRecord)>,
    pub(crate) rejected: usize,
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<FetchedListing>, SourceError>>>;

struct Inflight {
    id: u64,
    generation: u64,
    fetch: Fetch,
}

#[derive(Default)]
struct State {
    /// The last full listing (all peer issues).
    last: Option<Arc<FetchedListing>>,
    /// Bumped by every write: listings fetched before it are stale.
    generation: u64,
    /// Fetches under way, by their `labels` query.
    inflight: HashMap<String, Inflight>,
    next_id: u64,
}

/// The single flight: one fetch per label set at a time, shared by every caller.
pub(crate) struct Listings {
    reader: Arc<Reader>,
    state: Arc<Mutex<State>>,
    ttl: Duration,
}

/// Clears the progress slot of a fetch when the caller that started it stops waiting.
struct ProgressGuard(Arc<Mutex<Option<Progress>>>);

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        *lock(&self.0) = None;
    }
}

impl Listings {
    pub(crate) fn new(reader: Arc<Reader>, ttl: Duration) -> Self {
        Listings {
            reader,
            state: Arc::new(Mutex::new(State::default())),
            ttl,
        }
    }

    pub(crate) fn reader(&self) -> &Reader {
        &self.reader
    }

    /// A write happened: every listing read so far, or being read, is stale.
    pub(crate) fn invalidate(&self) {
        lock(&self.state).generation += 1;
    }

    pub(crate) fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    /// The last full listing, however old.
    pub(crate) fn last(&self) -> Option<Arc<FetchedListing>> {
        lock(&self.state).last.clone()
    }

    /// The last full listing if it is fresh: read after the last write, within the TTL.
    pub(crate) fn fresh(&self) -> Option<Arc<FetchedListing>> {
        let state = lock(&self.state);
        state
            .last
            .as_ref()
            .filter(|l| l.generation == state.generation && l.fetched.elapsed() < self.ttl)
            .cloned()
    }

    /// Drops records cleanup at `now` removes from the kept listing; says how many went.
    pub(crate) fn evict_stale(&self, now: f64) -> usize {
        let mut state = lock(&self.state);
        let Some(last) = state.last.as_mut() else {
            return 0;
        };
        let before = last.peers.len();
        if !last.peers.iter().any(|(_, r)| r.is_removed_by_cleanup(now)) {
            return 0;
        }
        let listing = Arc::make_mut(last);
        listing.peers.retain(|(_, r)| !r.is_removed_by_cleanup(now));
        before - listing.peers.len()
    }

    /// Drops issues this process closed from the kept listing, so that nothing acts on
    /// them again before the next refresh.
    pub(crate) fn forget_issues(&self, numbers: &[u64]) {
        let mut state = lock(&self.state);
        if let Some(last) = state.last.as_mut() {
            let listing = Arc::make_mut(last);
            listing.issues.retain(|i| !numbers.contains(&i.number));
            listing.peers.retain(|(n, _)| !numbers.contains(n));
        }
    }

    /// A listing of every open issue carrying `labels`, read after the last write: joins
    /// the fetch under way, or starts one (after an outdated one finished: one at a time).
    pub(crate) async fn current(
        &self,
        labels: &[String],
        progress: &Progress,
    ) -> Result<Arc<FetchedListing>, SourceError> {
        let (fetch, _guard) = self.join_or_start(labels, progress).await;
        fetch.await
    }

    /// The full listing for discover: the fresh one; else, while a refresh another call
    /// started is under way, the previous listing, with a detail saying how old it is;
    /// else a refresh, waited for as long as the caller waits (it goes on without it).
    pub(crate) async fn for_discover(
        &self,
        progress: &Progress,
    ) -> Result<(Arc<FetchedListing>, Option<String>), SourceError> {
        let full = [LABEL_REGISTRY.to_owned()];
        {
            let state = lock(&self.state);
            if let Some(last) = &state.last {
                if last.generation == state.generation && last.fetched.elapsed() < self.ttl {
                    return Ok((Arc::clone(last), None));
                }
                if state.inflight.contains_key(&percent_encode_labels(&full)) {
                    let age = last.fetched.elapsed().as_secs();
                    return Ok((
                        Arc::clone(last),
                        Some(format!(
                            "served GitHub's listing as read {age} s ago; a refresh is under way"
                        )),
                    ));
                }
            }
        }
        Ok((self.current(&full, progress).await?, None))
    }

    async fn join_or_start(
        &self,
        labels: &[String],
        progress: &Progress,
    ) -> (Fetch, Option<ProgressGuard>) {
        let key = percent_encode_labels(labels);
        loop {
            let outdated = {
                let mut state = lock(&self.state);
                match state.inflight.get(&key) {
                    Some(f) if f.generation == state.generation => return (f.fetch.clone(), None),
                    Some(f) => f.fetch.clone(),
                    None => {
                        let (fetch, slot) = self.start(&mut state, key.clone(), labels, progress);
                        return (fetch, Some(ProgressGuard(slot)));
                    }
                }
            };
            // A fetch that started before the last write: let it finish, then read again.
            let _ = outdated.await;
        }
    }

    fn start(
        &self,
        state: &mut State,
        key: String,
        labels: &[String],
        progress: &Progress,
    ) -> (Fetch, Arc<Mutex<Option<Progress>>>) {
        state.next_id += 1;
        let id = state.next_id;
        let generation = state.generation;
        let slot = Arc::new(Mutex::new(Some(progress.clone())));
        let full = labels == [LABEL_REGISTRY];
        let reader = Arc::clone(&self.reader);
        let shared_state = Arc::clone(&self.state);
        let task_slot = Arc::clone(&slot);
        let task_key = key.clone();
        let labels = labels.to_vec();
        let task = tokio::spawn(async move {
            let report = |pages: u64, issues: usize| {
                if let Some(progress) = lock(&task_slot).as_ref() {
                    progress.report(
                        pages,
                        None,
                        format!("read {issues} GitHub issues ({pages} pages)"),
                    );
                }
            };
            let result = reader.fetch_issues(&labels, &report).await.map(|issues| {
                let (peers, rejected) = reader.trust.parse_all(&issues);
                let issues = issues
                    .into_iter()
                    .map(|mut i| {
                        i.body = None;
                        i
                    })
                    .collect();
                Arc::new(FetchedListing {
                    fetched: Instant::now(),
                    generation,
                    issues,
                    peers,
                    rejected,
                })
            });
            let mut state = lock(&shared_state);
            if state.inflight.get(&task_key).is_some_and(|f| f.id == id) {
                state.inflight.remove(&task_key);
            }
            if full && let Ok(listing) = &result {
                state.last = Some(Arc::clone(listing));
            }
            result
        });
        let wrapper_state = Arc::clone(&self.state);
        let wrapper_key = key.clone();
        let fetch: Fetch = async move {
            task.await.unwrap_or_else(|e| {
                // The task panicked before it could take itself off the list: do it here,
                // so that the next caller starts a new fetch instead of joining this one.
                let mut state = lock(&wrapper_state);
                if state.inflight.get(&wrapper_key).is_some_and(|f| f.id == id) {
                    state.inflight.remove(&wrapper_key);
                }
                Err(SourceError::Remote(format!(
                    "the GitHub listing stopped unexpectedly: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        state.inflight.insert(
            key,
            Inflight {
                id,
                generation,
                fetch: fetch.clone(),
            },
        );
        (fetch, slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(bytes: usize) -> CachedPage {
        CachedPage {
            etag: "W/\"x\"".to_owned(),
            body: Arc::new(vec![b' '; bytes]),
            next: None,
        }
    }

    /// The page cache never holds more than its byte bound.
    #[test]
    fn the_page_cache_is_bounded_in_bytes() {
        let mut cache = PageCache::default();
        for i in 0..40 {
            cache.insert(format!("/p{i}"), page(4 << 20));
            assert!(cache.bytes <= MAX_CACHED_BYTES, "{} bytes", cache.bytes);
            let held: usize = cache.pages.values().map(|p| p.body.len()).sum();
            assert_eq!(held, cache.bytes);
        }
        cache.insert("/p0".to_owned(), page(10));
        cache.insert("/p0".to_owned(), page(20));
        assert_eq!(cache.pages.get("/p0").map(|p| p.body.len()), Some(20));
    }

    /// A path and the absolute `Link` to it are the same page.
    #[test]
    fn page_keys_ignore_the_origin() {
        assert_eq!(
            page_key("http://127.0.0.1:9/repos/a/b/issues?page=1"),
            page_key("/repos/a/b/issues?page=1")
        );
        assert_ne!(
            page_key("/repos/a/b/issues?page=1"),
            page_key("/repos/a/b/issues?page=2")
        );
    }
}
