//! What the `peers` subcommands print for people: aligned tables, a summary line, and
//! one line per source. Pure functions of a coordinator result and `now`, so they are
//! tested without a terminal. Every value that a peer or a source wrote passes through
//! [`cell`] or [`json_cell`] before it is placed: nothing raw reaches the terminal.

use crate::coordinator::{
    DiscoverQuery, DiscoverResult, Outcomes, PeerView, RegisterResult, StatusResult,
    UnregisterResult,
};
use crate::feed::{ChangeEvent, ChangeKind, RemovalReason};
use crate::mcp::text;
use crate::peer::JsonObject;

/// Text from a peer or a source, as it may be shown: control, format (bidi, zero-width)
/// and line-separator characters written as `\u{...}`.
fn cell(value: &str) -> String {
    text::escape_prose(value).into_owned()
}

/// A metadata object as compact JSON: serde_json escapes C0 controls, and
/// [`text::escape_json`] the rest (bidi overrides, DEL, C1 controls such as U+009B).
fn json_cell(metadata: &JsonObject) -> String {
    if metadata.is_empty() {
        return "-".to_owned();
    }
    let json = serde_json::to_string(metadata).unwrap_or_else(|_| "{…}".to_owned());
    text::escape_json(&json).into_owned()
}

fn list_cell(items: &[impl std::fmt::Display]) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    cell(
        &items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// A span of time for people: `42s`, `12m 5s`, `3h 20m`, `2d 4h`.
pub(crate) fn span(seconds: f64) -> String {
    let total = seconds.max(0.0).floor() as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// How long ago `then` was: `12s ago`. A stamp ahead of this machine's clock (another
/// machine's clock runs ahead; up to 300 s is accepted) says so instead of a negative age.
pub(crate) fn age(then: f64, now: f64) -> String {
    let ago = now - then;
    if ago > -1.0 {
        format!("{} ago", span(ago))
    } else {
        format!("{} ahead", span(-ago))
    }
}

fn expires_in(peer: &PeerView) -> String {
    if peer.expires_in_seconds <= 0.0 {
        "expired".to_owned()
    } else {
        span(peer.expires_in_seconds)
    }
}

/// Rows under a header, each column as wide as its widest cell (in characters: escaped
/// cells are ASCII apart from printable text), two spaces apart, no trailing spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (value, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(value);
            let pad = width.saturating_sub(value.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn peer_table(peers: &[PeerView], now: f64) -> String {
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                cell(&p.peer_id),
                cell(&p.multiaddr),
                list_cell(&p.capabilities),
                age(p.last_seen, now),
                expires_in(p),
                list_cell(&p.sources),
                json_cell(&p.metadata),
            ]
        })
        .collect();
    table(
        &[
            "PEER ID",
            "MULTIADDR",
            "CAPABILITIES",
            "LAST SEEN",
            "EXPIRES IN",
            "SOURCES",
            "METADATA",
        ],
        &rows,
    )
}

/// One line per source: `local_file: ok (2 matched)`, `github: disabled (why)`.
/// `count` words what the source's count means in this operation (None: say nothing).
fn outcome_lines(outcomes: &Outcomes, count: impl Fn(u64) -> Option<String>) -> String {
    let mut out = String::new();
    for (name, outcome) in outcomes.iter() {
        let mut notes = Vec::new();
        if let Some(n) = outcome.count.and_then(&count) {
            notes.push(n);
        }
        if let Some(location) = &outcome.location {
            notes.push(cell(location));
        }
        if let Some(rejected) = outcome.rejected {
            notes.push(format!(
                "{rejected} stored {} skipped: {} the format's rules",
                plural(rejected, "record", "records"),
                if rejected == 1 {
                    "it breaks"
                } else {
                    "they break"
                }
            ));
        }
        if let Some(seconds) = outcome.retry_after_seconds {
            notes.push(format!("retry after {seconds}s"));
        }
        if let Some(detail) = &outcome.detail {
            notes.push(cell(detail));
        }
        out.push_str(&cell(name.as_str()));
        out.push_str(": ");
        out.push_str(outcome.status.as_str());
        if !notes.is_empty() {
            out.push_str(&format!(" ({})", notes.join("; ")));
        }
        out.push('\n');
    }
    out
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `peers list`: the table (or `no peers`), how many matched, one line per source.
pub(crate) fn discover(result: &DiscoverResult, query: &DiscoverQuery, now: f64) -> String {
    let mut out = String::new();
    let filter = if query.capabilities.is_empty() {
        String::new()
    } else {
        format!(" with capabilities {}", query.capabilities.join(", "))
    };
    let expired = if query.include_expired {
        " (expired ones included)"
    } else {
        ""
    };
    let shown = result.peers.len() as u64;
    if shown == 0 {
        out.push_str(&format!("no peers{filter}{expired}\n"));
    } else {
        out.push_str(&peer_table(&result.peers, now));
        out.push('\n');
        if shown < result.total_matched {
            out.push_str(&format!(
                "showing {shown} of {} peers{filter}{expired}; raise --max (up to {}) to see more\n",
                result.total_matched,
                crate::coordinator::MAX_DISCOVER_PEERS
            ));
        } else {
            out.push_str(&format!(
                "{shown} {}{filter}{expired}\n",
                plural(shown, "peer", "peers")
            ));
        }
    }
    out.push_str(&outcome_lines(&result.outcomes, |n| {
        Some(format!("{n} matched"))
    }));
    out
}

/// `peers register`: what happened, the stored record with its lease, one line per source.
pub(crate) fn register(result: &RegisterResult, now: f64) -> String {
    let mut out = format!(
        "{} peer `{}`; its lease ends in {}: register it again before then to stay listed\n\n",
        if result.created {
            "registered new"
        } else {
            "refreshed"
        },
        cell(&result.peer.peer_id),
        span(result.peer.expires_in_seconds),
    );
    out.push_str(&peer_table(std::slice::from_ref(&result.peer), now));
    out.push('\n');
    out.push_str(&outcome_lines(&result.outcomes, |_| None));
    out
}

/// `peers unregister`: removed or not there, one line per source.
pub(crate) fn unregister(result: &UnregisterResult) -> String {
    let mut out = if result.removed {
        format!("unregistered `{}`\n", cell(&result.peer_id))
    } else {
        format!(
            "peer `{}` was not registered in any source asked; nothing removed\n",
            cell(&result.peer_id)
        )
    };
    out.push_str(&outcome_lines(&result.outcomes, |n| {
        Some(if n > 0 { "removed" } else { "did not hold it" }.to_owned())
    }));
    out
}

/// `peers status`: one row per source (on or off, the check's result, where it stores or
/// why it is off), then the settings. `check` is the outcome of the check discover when
/// at least one source answered it.
pub(crate) fn status(report: &StatusResult, check: Option<&Outcomes>) -> String {
    let rows: Vec<Vec<String>> = report
        .sources
        .iter()
        .map(|s| {
            let outcome = check.and_then(|c| c.get(s.source.as_str()));
            let checked = if !s.enabled || s.stats.calls == 0 {
                "-".to_owned()
            } else {
                let word = match outcome {
                    Some(o) => o.status.as_str(),
                    None if s.stats.failures > 0 => "error",
                    None => "ok",
                };
                match outcome.and_then(|o| o.count) {
                    Some(n) if s.stats.failures == 0 => format!(
                        "{word}, {n} {}, {:.1} ms",
                        plural(n, "peer", "peers"),
                        s.stats.mean_latency_ms
                    ),
                    _ => format!("{word}, {:.1} ms", s.stats.mean_latency_ms),
                }
            };
            let mut detail = cell(&s.detail);
            if let Some(error) = &s.stats.last_error {
                detail.push_str(&format!("; last error: {}", cell(error)));
            }
            vec![
                cell(s.source.as_str()),
                if s.enabled { "enabled" } else { "disabled" }.to_owned(),
                checked,
                detail,
            ]
        })
        .collect();
    let mut out = table(&["SOURCE", "STATE", "CHECK", "WHERE / WHY"], &rows);
    out.push_str(&format!(
        "\ndefault lease {}s; source timeout {}s; background cleanup (server) {}\n",
        report.default_ttl_seconds,
        report.source_timeout_seconds,
        if report.cleanup_interval_seconds == 0 {
            "off".to_owned()
        } else {
            format!("every {}s", report.cleanup_interval_seconds)
        }
    ));
    out
}

/// One change-feed event as one line: `added agent-7 /ip4/… [compute]`,
/// `removed agent-7 (expired)`.
pub(crate) fn event(event: &ChangeEvent) -> String {
    let peer_id = cell(&event.peer_id);
    match (&event.kind, &event.peer) {
        (ChangeKind::Removed, _) | (_, None) => {
            let reason = match event.reason {
                Some(RemovalReason::Expired) => "expired",
                Some(RemovalReason::NoLongerMatches) => "no longer matches",
                _ => "unregistered",
            };
            format!("removed  {peer_id}  ({reason})\n")
        }
        (kind, Some(peer)) => format!(
            "{:<8} {peer_id}  {}  [{}]  {}\n",
            if *kind == ChangeKind::Added {
                "added"
            } else {
                "updated"
            },
            cell(&peer.multiaddr),
            list_cell(&peer.capabilities),
            json_cell(&peer.metadata),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{SourceOutcome, SourceStatus};
    use crate::source::SourceName;
    use serde_json::json;

    fn view(peer_id: &str, multiaddr: &str, metadata: serde_json::Value) -> PeerView {
        let serde_json::Value::Object(metadata) = metadata else {
            panic!("metadata must be an object")
        };
        PeerView {
            peer_id: peer_id.to_owned(),
            multiaddr: multiaddr.to_owned(),
            capabilities: vec!["compute".to_owned(), "gpu\u{1b}[31m".to_owned()],
            first_seen: 1000.0,
            last_seen: 1000.0,
            source: "local_file".to_owned(),
            ttl_seconds: 3600,
            metadata,
            expires_at: 4600.0,
            expires_in_seconds: 3588.0,
            sources: vec![SourceName::LOCAL_FILE],
        }
    }

    fn outcomes(detail: &str) -> Outcomes {
        let mut outcomes = Outcomes::default();
        let mut ok = SourceOutcome::ok(1);
        ok.detail = Some(detail.to_owned());
        outcomes.set(SourceName::LOCAL_FILE, ok);
        outcomes.set(
            SourceName::GITHUB,
            SourceOutcome::disabled("not configured"),
        );
        outcomes
    }

    /// Spans read as people say them, at each unit boundary.
    #[test]
    fn spans_and_ages() {
        assert_eq!(span(0.4), "0s");
        assert_eq!(span(59.9), "59s");
        assert_eq!(span(60.0), "1m 0s");
        assert_eq!(span(3599.0), "59m 59s");
        assert_eq!(span(3600.0), "1h 0m");
        assert_eq!(span(90_061.0), "1d 1h");
        assert_eq!(age(988.0, 1000.0), "12s ago");
        assert_eq!(age(1000.5, 1000.0), "0s ago");
        assert_eq!(age(1100.0, 1000.0), "1m 40s ahead");
    }

    /// Columns line up, the header names them, and no line ends in spaces.
    #[test]
    fn the_table_is_aligned() {
        let peers = vec![
            view("a", "/ip4/192.0.2.7/tcp/4001", json!({})),
            view("agent-long-name", "/ip4/1.2.3.4/tcp/1", json!({"k": "v"})),
        ];
        let shown = peer_table(&peers, 1012.0);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3, "{shown}");
        let column = |line: &str| line.find("/ip4/").expect("multiaddr column");
        assert_eq!(column(lines[1]), column(lines[2]), "{shown}");
        assert_eq!(
            lines[0].find("MULTIADDR"),
            Some(column(lines[1])),
            "{shown}"
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{shown}");
        assert!(lines[1].contains("12s ago") && lines[1].contains("59m 48s"));
        assert!(lines[2].ends_with(r#"{"k":"v"}"#), "{shown}");
    }

    /// Hostile text in every field, and in an outcome's detail, is printed escaped: no
    /// control, bidi or line-separator character is left, and each escape can be read.
    #[test]
    fn hostile_text_is_escaped_everywhere() {
        let peer = view(
            "id\u{1b}[2J",
            "/unix/\u{1b}]0;title\u{7}\r\u{202e}",
            json!({"k\u{1b}[1A": "v\u{9b}31m\u{2028}\u{202e}"}),
        );
        let result = DiscoverResult {
            peers: vec![peer],
            total_matched: 1,
            outcomes: outcomes("skipped \u{1b}[2K line"),
        };
        let query = DiscoverQuery::new(&[], None, false).expect("query");
        let shown = discover(&result, &query, 1000.0);
        assert!(
            !shown.chars().any(|c| c != '\n' && text::is_hidden(c)),
            "raw character in {shown:?}"
        );
        for escaped in [
            r"id\u{1b}[2J",
            r"/unix/\u{1b}]0;title\u{7}\u{d}\u{202e}",
            r"gpu\u{1b}[31m",
            r#"{"k\u001b[1A":"v\u009b31m\u2028\u202e"}"#,
            r"skipped \u{1b}[2K line",
        ] {
            assert!(shown.contains(escaped), "{escaped} missing from\n{shown}");
        }
    }

    /// Outcome lines: status, count, location, rejected records, detail.
    #[test]
    fn outcome_lines_say_what_each_source_did() {
        let mut outcomes = outcomes("a note");
        let mut limited = SourceOutcome::failed(&crate::source::SourceError::RateLimited {
            retry_after_seconds: 37,
        });
        limited.status = SourceStatus::RateLimited;
        outcomes.set(SourceName::GITHUB, limited);
        let lines = outcome_lines(&outcomes, |n| Some(format!("{n} matched")));
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines[0], "local_file: ok (1 matched; a note)");
        assert!(
            lines[1].starts_with("github: rate_limited (retry after 37s; "),
            "{lines:?}"
        );
    }
}
