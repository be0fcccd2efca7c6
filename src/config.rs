//! The command line: every flag has an environment variable and a default shown in
//! `--help`. The flags work with or without the `serve` subcommand, because MCP client
//! configurations call `peer-discovery-mcp --registry-path FILE` directly.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::peer::{MAX_TTL_SECONDS, MIN_TTL_SECONDS};
use crate::source::github::RepoName;

#[derive(Debug, Parser)]
#[command(
    name = "peer-discovery-mcp",
    version,
    about = "An MCP server (stdio, JSON-RPC) that lets LLM agents and libp2p-style nodes register \
             and discover each other",
    long_about = "An MCP server (stdio, JSON-RPC) that lets LLM agents and libp2p-style nodes \
register themselves as peers, find peers by capability, heartbeat, and clean up.\n\n\
It is started by an MCP client (Claude Desktop, an IDE, an agent framework) and speaks JSON-RPC \
on stdin/stdout; logs go to stderr (set RUST_LOG, e.g. RUST_LOG=info). Records live in a local \
JSON file shared by every server process on this machine.",
    after_help = "Run with no command to serve MCP on stdio (same as `serve`).\n\n\
The GitHub source is on when --github-repo is set and a token is in GITHUB_TOKEN (or GH_TOKEN); \
the token is read only from the environment, never from a flag, and never printed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP on stdin/stdout (the default)
    Serve,
}

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// The local registry file, shared by every server process on this machine (and by the
    /// Python ipfs_datasets_py module). Missing folders are created.
    #[arg(
        long,
        env = "PEER_REGISTRY_PATH",
        value_name = "FILE",
        global = true,
        default_value_os_t = default_registry_path()
    )]
    pub registry_path: PathBuf,

    /// Lease, in seconds, of a peer that registers without ttl_seconds (1..=604800).
    #[arg(
        long,
        env = "PEER_REGISTRY_DEFAULT_TTL",
        value_name = "SECONDS",
        global = true,
        default_value_t = crate::peer::DEFAULT_TTL_SECONDS,
        value_parser = clap::value_parser!(u64).range(MIN_TTL_SECONDS..=MAX_TTL_SECONDS)
    )]
    pub default_ttl: u64,

    /// Seconds between background cleanups of expired peers; 0 turns them off.
    #[arg(
        long,
        env = "PEER_REGISTRY_CLEANUP_INTERVAL",
        value_name = "SECONDS",
        global = true,
        default_value_t = 300
    )]
    pub cleanup_interval: u64,

    /// Longest time one source may take to answer before it is reported as `timeout` and
    /// the call goes on with the other sources (seconds, fractions allowed).
    #[arg(
        long,
        env = "PEER_REGISTRY_SOURCE_TIMEOUT",
        value_name = "SECONDS",
        global = true,
        default_value_t = 10.0,
        value_parser = parse_timeout
    )]
    pub source_timeout: f64,

    /// GitHub repository (OWNER/NAME) that holds one issue per peer. With a token in
    /// GITHUB_TOKEN or GH_TOKEN, this turns the GitHub source on.
    #[arg(
        long,
        env = "PEER_REGISTRY_GITHUB_REPO",
        value_name = "OWNER/NAME",
        global = true
    )]
    pub github_repo: Option<RepoName>,

    /// GitHub REST API base URL: change it for GitHub Enterprise
    /// (https://HOST/api/v3) or a test server.
    #[arg(
        long,
        env = "GITHUB_API_URL",
        value_name = "URL",
        global = true,
        default_value = "https://api.github.com",
        value_parser = ApiUrlParser
    )]
    pub github_api_url: String,

    /// Timeout of one GitHub request (seconds, fractions allowed).
    #[arg(
        long,
        env = "PEER_REGISTRY_GITHUB_TIMEOUT",
        value_name = "SECONDS",
        global = true,
        default_value_t = 5.0,
        value_parser = parse_timeout
    )]
    pub github_timeout: f64,

    /// Only trust peer issues opened by these GitHub logins (comma-separated). Empty: any
    /// issue carrying the peer-registry label (which only collaborators can set).
    #[arg(
        long,
        env = "PEER_REGISTRY_GITHUB_TRUSTED_AUTHORS",
        value_name = "LOGIN,...",
        global = true,
        value_delimiter = ','
    )]
    pub github_trusted_authors: Vec<String>,

    /// How long a GitHub listing is reused before discover asks GitHub again (seconds;
    /// 0 = ask every time, still with free conditional requests).
    #[arg(
        long,
        env = "PEER_REGISTRY_GITHUB_CACHE_SECONDS",
        value_name = "SECONDS",
        global = true,
        default_value_t = 15
    )]
    pub github_cache_seconds: u64,
}

/// Parses `--github-api-url`. Its errors are built by hand (`clap::Error::raw`) because
/// clap's own would quote the value, and a URL with userinfo holds a secret.
#[derive(Debug, Clone, Copy)]
struct ApiUrlParser;

impl clap::builder::TypedValueParser for ApiUrlParser {
    type Value = String;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidUtf8,
                "--github-api-url is not valid UTF-8\n",
            )
        })?;
        parse_api_url(text).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })
    }
}

/// An http(s) URL with a host and no userinfo. A URL with `user:password@` is refused
/// without being echoed: the token belongs in GITHUB_TOKEN, and a URL is shown in
/// errors, `registry_status` and logs.
fn parse_api_url(text: &str) -> Result<String, String> {
    let authority_end = text
        .find("://")
        .map(|scheme| {
            let rest = &text[scheme + 3..];
            scheme + 3 + rest.find(['/', '?', '#']).unwrap_or(rest.len())
        })
        .unwrap_or(text.len());
    if text[..authority_end].contains('@') {
        return Err(
            "--github-api-url must not hold a user name or password (`user:secret@host`); \
put the token in GITHUB_TOKEN instead (the URL was not echoed)"
                .to_owned(),
        );
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("--github-api-url `{text}` is not a URL ({e})"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(text.trim_end_matches('/').to_owned()),
        _ => Err(format!(
            "--github-api-url `{text}` is not an http(s) URL with a host"
        )),
    }
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0 {
        Ok(seconds)
    } else {
        Err(format!("must be more than 0 and at most 3600 (got {text})"))
    }
}

/// The Python module's path: `$XDG_CACHE_HOME/ipfs_datasets_py/peer_registry.json`, or
/// `~/.cache/...` when XDG_CACHE_HOME is unset or not absolute.
pub fn default_registry_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("ipfs_datasets_py").join("peer_registry.json")
}

impl Options {
    pub fn source_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.source_timeout)
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs(self.cleanup_interval)
    }

    pub fn github_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.github_timeout)
    }
}

/// The GitHub token from the environment: GITHUB_TOKEN, else GH_TOKEN (empty = unset).
pub fn github_token_from_env() -> Option<String> {
    ["GITHUB_TOKEN", "GH_TOKEN"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|token| token.trim().to_owned())
        .find(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// API URLs with userinfo are refused without echoing any of it; plain ones pass.
    #[test]
    fn api_urls_with_userinfo_are_refused_unechoed() {
        for url in [
            "https://user:s3cr3t@github.example/api/v3",
            "https://s3cr3t@github.example",
            "http://x:s3cr3t@127.0.0.1:8080/",
        ] {
            let error = parse_api_url(url).expect_err(url);
            assert!(!error.contains("s3cr3t"), "{error}");
            assert!(error.contains("GITHUB_TOKEN"), "{error}");
        }
        assert_eq!(
            parse_api_url("https://github.example/api/v3/").as_deref(),
            Ok("https://github.example/api/v3")
        );
        assert!(parse_api_url("https://github.example/a@b").is_ok());
        assert!(parse_api_url("ftp://x").is_err());
    }
}
