//! The connection to the cluster: one `etcd_client::Client` over every endpoint,
//! connected on first use, each request under the request timeout, calls that never
//! left retried on another member, and etcd's errors mapped to [`SourceError`]s that name
//! what went wrong without any secret.
//!
//! etcd-client balances requests over every endpoint it was given, and keeps a member
//! that went down in that set: about a third of the calls then fail at once with
//! "tcp connect error" until the member is back (verified against etcd 3.4). Such a
//! call never reached etcd, so it is safe to send again whatever it was; the balancer
//! picks a member at random, so a few retries reach a live one.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, TlsOptions};

use crate::source::SourceError;

/// Largest message this source decodes from etcd. Listings are paged well below etcd's
/// default 4 MiB, but a record written by another client may be as large as etcd's
/// request limit (1.5 MiB), and a watch that catches up sends many events at once.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Whether a failed request may have been applied: decides whether it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads: send again on any transient failure.
    Reads,
    /// Writes: send again only when the request never left this process.
    UnsentOnly,
}

pub(crate) struct Connection {
    endpoints: Vec<String>,
    /// Holds the password when the cluster has auth on: never logged (its `Debug` would
    /// show it).
    options: ConnectOptions,
    request_timeout: Duration,
    client: tokio::sync::OnceCell<Client>,
}

/// What one failed request said, before it becomes a [`SourceError`].
pub(crate) struct Failure {
    pub error: SourceError,
    /// The request never reached etcd (a connect error): safe to send again.
    pub unsent: bool,
    /// The request may have been applied (a timeout or a broken connection mid-call).
    pub ambiguous: bool,
}

impl Connection {
    pub(crate) fn new(
        endpoints: Vec<String>,
        request_timeout: Duration,
        credentials: Option<(String, String)>,
    ) -> Self {
        let mut options = ConnectOptions::new()
            .with_timeout(request_timeout)
            .with_connect_timeout(request_timeout)
            // etcd drops connections that ping more often than every 5 s.
            .with_keep_alive(
                Duration::from_secs(10),
                request_timeout.max(Duration::from_secs(3)),
            )
            // A member cut off from the leader refuses requests (and ends watches) instead
            // of serving what it last knew.
            .with_require_leader(true);
        if endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(TlsOptions::new().with_native_roots());
        }
        if let Some((user, password)) = credentials {
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        Connection {
            endpoints,
            options,
            request_timeout,
            client: tokio::sync::OnceCell::new(),
        }
    }

    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The client, connecting on first use (with auth on, connecting authenticates, so
    /// a failure is retried by the next call).
    async fn client(&self) -> Result<Client, Failure> {
        self.client
            .get_or_try_init(|| async {
                let connecting = Client::connect(&self.endpoints, Some(self.options.clone()));
                match tokio::time::timeout(self.request_timeout, connecting).await {
                    Ok(connected) => connected.map_err(|e| classify(e, self.request_timeout)),
                    Err(_) => Err(Failure {
                        error: SourceError::Timeout(self.request_timeout),
                        unsent: true,
                        ambiguous: false,
                    }),
                }
            })
            .await
            .cloned()
    }

    /// Runs `request` on the client, sending it again on another member while that is
    /// safe (see [`Retry`]) and time is left (a few request timeouts at most).
    pub(crate) async fn call<T, F, Fut>(&self, retry: Retry, request: F) -> Result<T, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.request_timeout * 2;
        let mut pause = Duration::from_millis(10);
        loop {
            let failure = match self.client().await {
                Ok(client) => match request(client).await {
                    Ok(answer) => return Ok(answer),
                    Err(e) => classify(e, self.request_timeout),
                },
                Err(failure) => failure,
            };
            let again = match retry {
                Retry::Reads => failure.unsent || failure.ambiguous,
                Retry::UnsentOnly => failure.unsent,
            };
            if !again || Instant::now() + pause >= deadline {
                return Err(failure);
            }
            tracing::debug!("etcd request failed, sending it again: {}", failure.error);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// A client for long-lived streams (the watch): connected, with the larger message
    /// limit.
    pub(crate) async fn watch_client(&self) -> Result<etcd_client::WatchClient, SourceError> {
        let client = self.client().await.map_err(|f| f.error)?;
        Ok(client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// What an etcd error means for the caller. Messages come from etcd and tonic, which
/// never include the password (it is sent only in the authenticate request).
pub(crate) fn classify(error: etcd_client::Error, timeout: Duration) -> Failure {
    use etcd_client::Error;
    use tonic::Code;
    let failure = |error, unsent, ambiguous| Failure {
        error,
        unsent,
        ambiguous,
    };
    match error {
        Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            // Never reached etcd, or refused before any apply: a member without a leader
            // (asked with `require_leader`) answers "no leader". Safe to send again.
            let never_sent = message.contains("tcp connect error")
                || message.contains("error trying to connect")
                || message.contains("Connection refused")
                || message.contains("no leader");
            // etcd answers a wrong password with InvalidArgument ("authentication failed").
            let refused = message.contains("authentication failed")
                || message.contains("invalid auth token")
                || message.contains("permission denied");
            match status.code() {
                _ if refused => failure(
                    SourceError::Auth(format!(
                        "etcd refused the credentials in PEER_REGISTRY_ETCD_USER / PEER_REGISTRY_ETCD_PASSWORD: {message}"
                    )),
                    false,
                    false,
                ),
                Code::Unauthenticated | Code::PermissionDenied => failure(
                    SourceError::Auth(format!(
                        "etcd refused the credentials in PEER_REGISTRY_ETCD_USER / PEER_REGISTRY_ETCD_PASSWORD: {message}"
                    )),
                    false,
                    false,
                ),
                Code::DeadlineExceeded => failure(SourceError::Timeout(timeout), false, true),
                Code::Cancelled if message.contains("Timeout") => {
                    failure(SourceError::Timeout(timeout), false, true)
                }
                Code::Unavailable => failure(
                    SourceError::Remote(format!("etcd is unavailable: {message}")),
                    never_sent,
                    !never_sent,
                ),
                Code::Unknown | Code::Cancelled | Code::Aborted => failure(
                    SourceError::Remote(format!("etcd request failed: {message}")),
                    never_sent,
                    !never_sent,
                ),
                Code::NotFound => failure(SourceError::NotFound(message), false, false),
                code => failure(
                    SourceError::Remote(format!("etcd answered {code:?}: {message}")),
                    false,
                    false,
                ),
            }
        }
        Error::TransportError(e) => failure(
            SourceError::Remote(format!("cannot reach etcd: {e}")),
            true,
            false,
        ),
        Error::InvalidArgs(e) | Error::EndpointError(e) => failure(
            SourceError::Remote(format!("etcd client: {e}")),
            false,
            false,
        ),
        other => failure(
            SourceError::Remote(format!("etcd request failed: {other}")),
            false,
            true,
        ),
    }
}
