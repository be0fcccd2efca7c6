//! The GitHub source's command-line options and its opener: on when a repository and a
//! token are given, else disabled with what is missing.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{GitHubIssuesSource, GitHubSettings, RepoName, WriteBudget};
use crate::config::parse_timeout;
use crate::source::{Opened, SourceName};

/// The GitHub source: one issue per peer in a shared repository.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "GitHub source")]
pub struct GitHubOptions {
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
        value_parser = crate::source::quiet_url::QuietUrlParser { flag: "--github-api-url", parse: parse_api_url }
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

impl GitHubOptions {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.github_timeout)
    }

    /// Opens the source when a repository and a token are given; else says which is
    /// missing. `token` comes from the environment ([`github_token_from_env`]), never a
    /// flag. Needs a tokio runtime.
    pub fn open(&self, token: Option<String>) -> Result<Opened, String> {
        let why = match (&self.github_repo, token) {
            (Some(repo), Some(token)) => {
                let settings = GitHubSettings {
                    repo: repo.clone(),
                    api_url: self.github_api_url.clone(),
                    request_timeout: self.timeout(),
                    trusted_authors: self.github_trusted_authors.clone(),
                    listing_ttl: Duration::from_secs(self.github_cache_seconds),
                    write_budget: WriteBudget::default(),
                };
                let github = GitHubIssuesSource::new(settings, token)
                    .map_err(|e| format!("cannot use the GitHub source: {e}"))?;
                return Ok(Opened::On {
                    description: github.describe(),
                    source: Arc::new(github),
                });
            }
            (Some(repo), None) => format!(
                "no token: set GITHUB_TOKEN (or GH_TOKEN) to a token that can write issues in {repo}"
            ),
            (None, Some(_)) => {
                "no repository: set --github-repo OWNER/NAME (or PEER_REGISTRY_GITHUB_REPO)"
                    .to_owned()
            }
            (None, None) => return Ok(Opened::NotConfigured(SourceName::GITHUB)),
        };
        Ok(Opened::Off(SourceName::GITHUB, why))
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
