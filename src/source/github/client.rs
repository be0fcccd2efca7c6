//! HTTP to GitHub through octocrab: one request at a time under the request timeout, the
//! answer's body read up to a cap, the answer classified (rate limits, refusals), and the
//! rate-limit state that stops every request until GitHub's retry time.
//!
//! Every number read from a header is distrusted: waits are computed with saturating
//! arithmetic and capped at [`MAX_WAIT_SECONDS`], so no header can panic the server or
//! block it for longer than an hour.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use serde_json::Value;

use super::format::RepoName;
use super::lock;
use crate::source::SourceError;

/// The most bytes read from one answer; a longer body is an error, read no further.
pub(crate) const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// The longest wait a rate-limit answer can impose, whatever its headers say.
pub(crate) const MAX_WAIT_SECONDS: u64 = 3600;
/// The wait when GitHub says "rate limited" without saying for how long.
const DEFAULT_WAIT_SECONDS: u64 = 60;

/// One HTTP answer, read whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// The HTTP side of the source. The token is handed to octocrab and not kept.
pub(crate) struct Client {
    octocrab: Octocrab,
    api_url: String,
    repo: RepoName,
    request_timeout: Duration,
    /// Set by a rate-limit answer: no request is sent before this instant.
    blocked_until: Mutex<Option<Instant>>,
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `rel="next"` target of a `Link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
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

/// What the rate-limit headers of one answer say, at Unix time `now`: the quota left,
/// and the seconds to wait by `retry-after` and by `x-ratelimit-reset`, each capped at
/// [`MAX_WAIT_SECONDS`]. Values that are not whole non-negative numbers are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateHeaders {
    pub(crate) remaining: Option<u64>,
    pub(crate) retry_after: Option<u64>,
    pub(crate) reset_in: Option<u64>,
}

impl RateHeaders {
    pub(crate) fn read(headers: &HeaderMap, now: u64) -> Self {
        let number =
            |name: &str| header_str(headers, name).and_then(|v| v.trim().parse::<u64>().ok());
        RateHeaders {
            remaining: number("x-ratelimit-remaining"),
            retry_after: number("retry-after").map(|s| s.min(MAX_WAIT_SECONDS)),
            reset_in: number("x-ratelimit-reset")
                .map(|reset| reset.saturating_sub(now).clamp(1, MAX_WAIT_SECONDS)),
        }
    }

    /// The wait a rate-limit refusal imposes: `retry-after`; else the reset when the
    /// quota is spent; else a minute. Never more than [`MAX_WAIT_SECONDS`].
    pub(crate) fn refusal_wait(&self) -> u64 {
        self.retry_after
            .or(if self.remaining == Some(0) {
                self.reset_in
            } else {
                None
            })
            .unwrap_or(DEFAULT_WAIT_SECONDS)
            .min(MAX_WAIT_SECONDS)
    }
}

impl Client {
    /// Builds the client. Needs a tokio runtime (octocrab spawns its service worker).
    pub(crate) fn new(
        api_url: &str,
        repo: RepoName,
        request_timeout: Duration,
        token: String,
    ) -> Result<Self, SourceError> {
        let octocrab = Octocrab::builder()
            .personal_token(token)
            .base_uri(api_url)
            .map_err(|e| SourceError::Remote(format!("bad GitHub API URL `{api_url}`: {e}")))?
            .add_retry_config(RetryConfig::None)
            // The whole exchange runs under `request_timeout` in `send`, which reports it as
            // a timeout; octocrab's own read timeout would surface as an opaque service error.
            .set_connect_timeout(Some(request_timeout))
            .build()
            .map_err(|e| SourceError::Remote(format!("cannot build the GitHub client: {e}")))?;
        Ok(Client {
            octocrab,
            api_url: api_url.to_owned(),
            repo,
            request_timeout,
            blocked_until: Mutex::new(None),
        })
    }

    pub(crate) fn api_url(&self) -> &str {
        &self.api_url
    }

    pub(crate) fn check_not_blocked(&self) -> Result<(), SourceError> {
        let mut blocked = lock(&self.blocked_until);
        if let Some(until) = *blocked {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(SourceError::RateLimited {
                    retry_after_seconds: left.as_secs().clamp(1, MAX_WAIT_SECONDS),
                });
            }
            *blocked = None;
        }
        Ok(())
    }

    fn block_for(&self, seconds: u64) {
        let wait = Duration::from_secs(seconds.min(MAX_WAIT_SECONDS));
        let Some(until) = Instant::now().checked_add(wait) else {
            return;
        };
        let mut blocked = lock(&self.blocked_until);
        if blocked.is_none_or(|b| b < until) {
            *blocked = Some(until);
        }
    }

    /// Sends one request under the request timeout and classifies the answer. 2xx and 304
    /// come back as answers; everything else as the matching error.
    pub(crate) async fn send(
        &self,
        method: http::Method,
        uri: &str,
        body: Option<&Value>,
        if_none_match: Option<&str>,
    ) -> Result<Answer, SourceError> {
        self.check_not_blocked()?;
        let timeout = self.request_timeout;
        let exchange = async {
            let response = match method {
                http::Method::POST => self.octocrab._post(uri, body).await,
                http::Method::PATCH => self.octocrab._patch(uri, body).await,
                _ => {
                    let mut headers = HeaderMap::new();
                    if let Some(etag) = if_none_match
                        && let Ok(value) = etag.parse()
                    {
                        headers.insert(header::IF_NONE_MATCH, value);
                    }
                    self.octocrab._get_with_headers(uri, Some(headers)).await
                }
            }
            .map_err(|e| {
                SourceError::Remote(format!("cannot reach GitHub at {}: {e}", self.api_url))
            })?;
            let (parts, body) = response.into_parts();
            // Read up to the cap; past it, the rest is never read, so an endless body
            // costs at most the cap in memory.
            let body = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                Ok(collected) => collected.to_bytes().to_vec(),
                Err(e) => return Err(body_error(e.as_ref())),
            };
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
        let rate = RateHeaders::read(&answer.headers, unix_now());
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            if rate.remaining == Some(0) {
                // The quota is spent: stop before GitHub has to refuse us.
                self.block_for(rate.reset_in.unwrap_or(DEFAULT_WAIT_SECONDS));
            }
            return Ok(answer);
        }
        let message = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (rate.retry_after.is_some()
                    || rate.remaining == Some(0)
                    || message.to_ascii_lowercase().contains("rate limit")));
        if limited {
            let wait = rate.refusal_wait();
            self.block_for(wait);
            return Err(SourceError::RateLimited {
                retry_after_seconds: wait,
            });
        }
        let repo = &self.repo;
        Err(match status {
            StatusCode::UNAUTHORIZED => SourceError::Auth(
                "GitHub refused the token (401 Bad credentials); set GITHUB_TOKEN to a valid token"
                    .to_owned(),
            ),
            StatusCode::FORBIDDEN => SourceError::Auth(format!(
                "GitHub refused the request (403 {message}); the token needs write access to issues of {repo}"
            )),
            StatusCode::NOT_FOUND => SourceError::NotFound(format!(
                "repository {repo} was not found, or the token cannot see it (404)"
            )),
            StatusCode::GONE => {
                SourceError::NotFound(format!("issues are disabled in {repo} (410)"))
            }
            _ => SourceError::Remote(format!("GitHub answered {status}: {message}")),
        })
    }
}

/// Why a body could not be read: the cap (named), or the connection broke off.
fn body_error(e: &(dyn std::error::Error + 'static)) -> SourceError {
    if e.is::<LengthLimitError>() {
        SourceError::Remote(format!(
            "GitHub's answer was larger than {} MiB; stopped reading it",
            MAX_RESPONSE_BYTES >> 20
        ))
    } else {
        SourceError::Remote(format!("GitHub's answer broke off: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    /// `Link` headers yield the next page's absolute URL.
    #[test]
    fn next_link_is_read_from_the_link_header() {
        let mut map = headers(&[(
            "link",
            r#"<http://127.0.0.1:1/repos/a/b/issues?page=2>; rel="next", <http://127.0.0.1:1/repos/a/b/issues?page=3>; rel="last""#,
        )]);
        assert_eq!(
            next_link(&map).as_deref(),
            Some("http://127.0.0.1:1/repos/a/b/issues?page=2")
        );
        map.insert(
            "link",
            r#"<http://x/?page=1>; rel="prev""#.parse().expect("header"),
        );
        assert_eq!(next_link(&map), None);
    }

    /// Absurd rate-limit headers (2^64-1, far-future or past resets, negative or
    /// non-numeric values) give a wait between 1 s and an hour, never a panic.
    #[test]
    fn absurd_rate_limit_headers_give_bounded_waits() {
        let now = 1_700_000_000;
        let max = u64::MAX.to_string();
        let rate = RateHeaders::read(&headers(&[("retry-after", &max)]), now);
        assert_eq!(rate.refusal_wait(), MAX_WAIT_SECONDS);
        let rate = RateHeaders::read(
            &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &max)]),
            now,
        );
        assert_eq!(rate.refusal_wait(), MAX_WAIT_SECONDS);
        let rate = RateHeaders::read(
            &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]),
            now,
        );
        assert_eq!(rate.refusal_wait(), 1, "a reset in the past waits a second");
        for junk in ["-5", "soon", "1e9", "", "18446744073709551616"] {
            let rate = RateHeaders::read(
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", junk),
                    ("retry-after", junk),
                ]),
                now,
            );
            assert_eq!(rate.refusal_wait(), DEFAULT_WAIT_SECONDS, "{junk:?}");
        }
        let rate = RateHeaders::read(&headers(&[("retry-after", "37")]), now);
        assert_eq!(rate.refusal_wait(), 37);
    }

    /// A block of any length, even 2^64-1 s, neither panics nor lasts more than an hour.
    #[tokio::test]
    async fn blocks_are_capped_at_an_hour() {
        let client = Client::new(
            "http://127.0.0.1:9",
            "a/b".parse().expect("repo"),
            Duration::from_secs(1),
            "t".to_owned(),
        )
        .expect("client");
        client.block_for(u64::MAX);
        match client.check_not_blocked() {
            Err(SourceError::RateLimited {
                retry_after_seconds,
            }) => assert!((3599..=MAX_WAIT_SECONDS).contains(&retry_after_seconds)),
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }
}
