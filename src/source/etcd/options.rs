//! The etcd source's command-line options and its opener. The options exist in every
//! build, so `--help` and the tools' schemas do not depend on the feature set; a build
//! without the `etcd` feature that is given endpoints refuses to start, saying how to
//! build it in.

use clap::Args;

use crate::config::parse_timeout;
use crate::source::{Opened, SourceName};

/// What a build without the feature says (its `disabled` outcome, and the start-up error
/// when endpoints are given anyway).
pub const NOT_BUILT_IN: &str = "not built in: build with `--features etcd` (in a checkout: `cargo install --path . --locked --features etcd`) (needs protoc: apt-get install protobuf-compiler libprotobuf-dev)";

/// The etcd source: one key per peer on a lease in an etcd cluster.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "etcd source")]
pub struct EtcdOptions {
    /// etcd endpoints (comma-separated URLs: http://HOST:PORT, or https:// checked against
    /// the system's trust store; every member of the cluster is best). Turns the etcd
    /// source on. User and password, when the cluster has auth on, come from
    /// PEER_REGISTRY_ETCD_USER and PEER_REGISTRY_ETCD_PASSWORD.
    #[arg(
        long,
        env = "PEER_REGISTRY_ETCD_ENDPOINTS",
        value_name = "URL,...",
        global = true,
        value_delimiter = ',',
        value_parser = crate::source::quiet_url::QuietUrlParser { flag: "--etcd-endpoints", parse: parse_endpoint }
    )]
    pub etcd_endpoints: Vec<String>,

    /// Prefix of every key this registry keeps in etcd (records under
    /// <PREFIX>peers/<peer_id>, the capability index under <PREFIX>caps/).
    #[arg(
        long,
        env = "PEER_REGISTRY_ETCD_PREFIX",
        value_name = "PREFIX",
        global = true,
        default_value = "/peer-discovery/"
    )]
    pub etcd_prefix: String,

    /// Timeout of one etcd request, and of connecting to one member (seconds, fractions
    /// allowed). A call tries the other members within --source-timeout.
    #[arg(
        long,
        env = "PEER_REGISTRY_ETCD_TIMEOUT",
        value_name = "SECONDS",
        global = true,
        default_value_t = 2.0,
        value_parser = parse_timeout
    )]
    pub etcd_timeout: f64,
}

/// The user name and password for a cluster with auth on, from the environment only.
#[derive(Default, Clone)]
pub struct EtcdCredentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl EtcdCredentials {
    pub fn from_env() -> Self {
        let read = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        EtcdCredentials {
            user: read("PEER_REGISTRY_ETCD_USER"),
            password: read("PEER_REGISTRY_ETCD_PASSWORD"),
        }
    }
}

/// Never shows the password.
impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl EtcdOptions {
    /// Opens the source when endpoints are given. Built without the feature, endpoints
    /// are an error (the server does not start) that says how to build it in. Needs a
    /// tokio runtime; connects lazily (the first call reaches the cluster).
    pub fn open(&self, credentials: EtcdCredentials) -> Result<Opened, String> {
        if self.etcd_endpoints.is_empty() {
            return Ok(Opened::NotConfigured(SourceName::ETCD));
        }
        self.open_configured(credentials)
    }

    #[cfg(not(feature = "etcd"))]
    fn open_configured(&self, _: EtcdCredentials) -> Result<Opened, String> {
        Err(format!(
            "--etcd-endpoints is set, but the etcd source is {NOT_BUILT_IN}"
        ))
    }

    #[cfg(feature = "etcd")]
    fn open_configured(&self, credentials: EtcdCredentials) -> Result<Opened, String> {
        let credentials = match (credentials.user, credentials.password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("PEER_REGISTRY_ETCD_USER is set without PEER_REGISTRY_ETCD_PASSWORD; set both, or neither".into());
            }
            (None, Some(_)) => {
                return Err("PEER_REGISTRY_ETCD_PASSWORD is set without PEER_REGISTRY_ETCD_USER; set both, or neither".into());
            }
        };
        let settings = super::EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            request_timeout: std::time::Duration::from_secs_f64(self.etcd_timeout),
        };
        let source = super::EtcdSource::new(settings, credentials);
        Ok(Opened::On {
            description: source.describe(),
            source: std::sync::Arc::new(source),
        })
    }
}

/// An `http://` or `https://` URL with a host and a port, no userinfo and no path; a bare
/// `HOST:PORT` is taken as `http://HOST:PORT` (as etcdctl does). A URL with
/// `user:password@` is refused without being echoed: the password belongs in
/// PEER_REGISTRY_ETCD_PASSWORD, and endpoints are shown in `registry_status` and logs.
pub(crate) fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let authority = with_scheme
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(rest))
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "--etcd-endpoints must not hold a user name or password (`user:secret@host`); \
put them in PEER_REGISTRY_ETCD_USER and PEER_REGISTRY_ETCD_PASSWORD instead (the endpoint was not echoed)"
                .to_owned(),
        );
    }
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| format!("--etcd-endpoints: `{text}` is not a URL ({e})"))?;
    let path_is_empty = matches!(uri.path(), "" | "/") && uri.query().is_none();
    match (uri.scheme_str(), uri.host(), uri.port_u16()) {
        (Some("http" | "https"), Some(host), Some(_)) if path_is_empty && !host.is_empty() => {
            Ok(with_scheme.trim_end_matches('/').to_owned())
        }
        _ => Err(format!(
            "--etcd-endpoints: `{text}` is not an endpoint; give http://HOST:PORT or https://HOST:PORT (etcd listens on 2379 by default)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoints are URLs with a port; a bare HOST:PORT is http; userinfo is refused
    /// without being echoed.
    #[test]
    fn endpoints_are_checked() {
        assert_eq!(
            parse_endpoint("127.0.0.1:2379").as_deref(),
            Ok("http://127.0.0.1:2379")
        );
        assert_eq!(
            parse_endpoint("https://etcd-1.example:2379/").as_deref(),
            Ok("https://etcd-1.example:2379")
        );
        for bad in ["ftp://x:1", "http://x", "http://x:1/path", "", "http://:1"] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} accepted");
        }
        let error = parse_endpoint("http://root:s3cr3t@10.0.0.1:2379").expect_err("userinfo");
        assert!(!error.contains("s3cr3t"), "{error}");
        assert!(error.contains("PEER_REGISTRY_ETCD_PASSWORD"), "{error}");
    }
}
