//! The key layout in etcd, and the record's value: one key per peer holding the record
//! as JSON (the same fields as the file format), and one empty index key per capability,
//! so that any etcd client (`etcdctl get --prefix`) can find peers by capability.
//!
//! ```text
//! <prefix>peers/<peer_id>              the record (JSON), on the peer's lease
//! <prefix>caps/<capability>/<peer_id>  empty, on the same lease
//! ```

use crate::peer::PeerRecord;
use crate::source::{SourceError, SourceName};

/// Where one registry's keys live in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix of every record key (what the view lists and watches).
    pub(crate) fn peers(&self) -> String {
        format!("{}peers/", self.prefix)
    }

    pub(crate) fn peer(&self, peer_id: &str) -> String {
        format!("{}peers/{peer_id}", self.prefix)
    }

    pub(crate) fn capability(&self, capability: &str, peer_id: &str) -> String {
        format!("{}caps/{capability}/{peer_id}", self.prefix)
    }

    /// The peer id a record key names, or `None` for a key outside the records (or one
    /// whose id is not text).
    pub(crate) fn peer_id_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let id = key.strip_prefix(self.peers().as_bytes())?;
        std::str::from_utf8(id).ok().filter(|id| !id.is_empty())
    }
}

/// The value stored under a record key: the record as compact JSON, `source` set to
/// `etcd` (so a reader of the raw key sees where it lives).
pub(crate) fn encode(record: &PeerRecord) -> Result<String, SourceError> {
    serde_json::to_string(record)
        .map_err(|e| SourceError::Internal(format!("a peer record did not serialize: {e}")))
}

/// Why a stored value is not served.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Unusable {
    /// Not JSON, or not a record.
    Unparsable(String),
    /// A record that breaks a rule of the format (peer fields are untrusted data).
    BreaksRule(String),
    /// The record names another peer than its key does.
    WrongPeer { key: String, record: String },
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Unparsable(e) => write!(f, "the value is not a peer record ({e})"),
            Unusable::BreaksRule(e) => write!(f, "the record breaks a rule: {e}"),
            Unusable::WrongPeer { key, record } => {
                write!(
                    f,
                    "the key names peer `{key}` but the record names `{record}`"
                )
            }
        }
    }
}

/// The record stored under the key of `peer_id`, checked like any record read from a
/// shared store (anyone with access to the cluster may have written it), and stamped
/// with `source` = `etcd` whatever the stored copy says.
pub(crate) fn decode(peer_id: &str, value: &[u8]) -> Result<PeerRecord, Unusable> {
    let mut record: PeerRecord =
        serde_json::from_slice(value).map_err(|e| Unusable::Unparsable(e.to_string()))?;
    if record.peer_id != peer_id {
        return Err(Unusable::WrongPeer {
            key: peer_id.to_owned(),
            record: record.peer_id,
        });
    }
    record.source = SourceName::ETCD.as_str().to_owned();
    record
        .check()
        .map_err(|e| Unusable::BreaksRule(e.to_string()))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Announcement;

    fn record(id: &str) -> PeerRecord {
        Announcement::new(
            id.into(),
            "/ip4/192.0.2.1/tcp/4001",
            &["compute".into()],
            Some(60),
            None,
            3600,
        )
        .expect("valid")
        .into_record(1000.0)
    }

    /// The keys are the ones SPEC.md lays out, and a record key gives its peer id back.
    #[test]
    fn keys_follow_the_layout() {
        let layout = Layout::new("/pd/");
        assert_eq!(layout.peer("a.b-c"), "/pd/peers/a.b-c");
        assert_eq!(layout.capability("gpu", "a"), "/pd/caps/gpu/a");
        assert_eq!(layout.peer_id_of(b"/pd/peers/a.b-c"), Some("a.b-c"));
        assert_eq!(layout.peer_id_of(b"/pd/peers/"), None);
        assert_eq!(layout.peer_id_of(b"/pd/caps/gpu/a"), None);
        assert_eq!(layout.peer_id_of(b"/other/peers/a"), None);
    }

    /// A stored record reads back as written, stamped `etcd`; a value that lies about
    /// its peer, breaks a rule or is not JSON is refused with why.
    #[test]
    fn values_are_checked_on_read() {
        let mut stored = record("a");
        stored.source = "somewhere".into();
        let text = encode(&stored).expect("encode");
        let read = decode("a", text.as_bytes()).expect("decode");
        assert_eq!(read.source, "etcd");
        assert_eq!(read.last_seen, stored.last_seen);

        assert!(matches!(
            decode("b", text.as_bytes()),
            Err(Unusable::WrongPeer { .. })
        ));
        assert!(matches!(
            decode("a", b"not json"),
            Err(Unusable::Unparsable(_))
        ));
        let mut bad = stored;
        bad.capabilities = vec!["UPPER".into()];
        let text = encode(&bad).expect("encode");
        assert!(matches!(
            decode("a", text.as_bytes()),
            Err(Unusable::BreaksRule(_))
        ));
    }
}
