//! The issue format (title, body, labels) and the trust rules that decide which issues
//! count. Pure functions: no requests are sent from here.

use serde::Deserialize;
use serde_json::Value;

use super::SOURCE;
use crate::peer::PeerRecord;
use crate::source::SourceError;

pub const LABEL_REGISTRY: &str = "peer-registry";
pub const LABEL_ACTIVE: &str = "peer-active";
pub const LABEL_INACTIVE: &str = "peer-inactive";
pub const CAPABILITY_LABEL_PREFIX: &str = "capability-";
pub const TITLE_PREFIX: &str = "Peer: ";
/// GitHub refuses longer issue bodies.
const MAX_BODY_CHARS: usize = 65_536;

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

/// An issue as listed by the REST API; only the fields this source reads, all lenient.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RemoteIssue {
    pub(crate) number: u64,
    #[serde(default)]
    pub(crate) title: String,
    #[serde(default)]
    pub(crate) body: Option<String>,
    #[serde(default)]
    labels: Vec<RemoteLabel>,
    #[serde(default)]
    user: Option<RemoteUser>,
    #[serde(default)]
    pub(crate) pull_request: Option<Value>,
    #[serde(default)]
    pub(crate) state: String,
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
    pub(crate) fn has_label(&self, label: &str) -> bool {
        self.labels
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(label))
    }

    pub(crate) fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }

    pub(crate) fn title_peer_id(&self) -> Option<&str> {
        self.title.strip_prefix(TITLE_PREFIX).map(str::trim)
    }

    pub(crate) fn author(&self) -> &str {
        self.user.as_ref().map_or("", |u| u.login.as_str())
    }
}

/// Who may write peer issues: empty = anyone who can set the `peer-registry` label.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    pub(crate) authors: Vec<String>,
}

impl Trust {
    pub(crate) fn trusts(&self, issue: &RemoteIssue) -> bool {
        self.authors.is_empty()
            || self
                .authors
                .iter()
                .any(|a| a.eq_ignore_ascii_case(issue.author()))
    }

    /// An open, labelled, trusted peer issue (not a pull request) for `peer_id`.
    pub(crate) fn is_peer_issue_for(&self, issue: &RemoteIssue, peer_id: &str) -> bool {
        issue.pull_request.is_none()
            && issue.title_peer_id() == Some(peer_id)
            && issue.has_label(LABEL_REGISTRY)
            && self.trusts(issue)
    }

    /// Checks one issue against the trust rules and parses its record.
    /// `Ok(None)`: not a peer issue at all (a pull request); `Err`: a peer issue that
    /// breaks a rule, with the reason.
    pub(crate) fn parse_issue(&self, issue: &RemoteIssue) -> Result<Option<PeerRecord>, String> {
        if issue.pull_request.is_some() {
            return Ok(None);
        }
        if !issue.has_label(LABEL_REGISTRY) {
            return Err(format!("it lacks the `{LABEL_REGISTRY}` label"));
        }
        if !self.trusts(issue) {
            return Err(format!(
                "its author `{}` is not a trusted author",
                issue.author()
            ));
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

    /// Every valid record among `issues` with its issue number, and how many peer issues
    /// broke a rule (each logged at `warn` with its number).
    pub(crate) fn parse_all(&self, issues: &[RemoteIssue]) -> (Vec<(u64, PeerRecord)>, usize) {
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
        (peers, rejected)
    }
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

pub(crate) fn body_for(record: &PeerRecord) -> Result<String, SourceError> {
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

pub(crate) fn labels_for(record: &PeerRecord) -> Vec<String> {
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
pub(crate) fn inactive_labels(issue: &RemoteIssue) -> Vec<String> {
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

/// The listing query's `labels` value. Label names here are [a-z0-9._-] (checked before);
/// only the separator needs encoding.
pub(crate) fn percent_encode_labels(labels: &[String]) -> String {
    labels.join("%2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
