//! Source names, and the one list of the sources built into this crate.
//!
//! A source's name is its own: any `[a-z0-9_]` word a source picks (a test adds one under
//! a name of its choosing). The built-in sources are listed once, in [`BUILT_IN`], with
//! what to tell a caller about each; the tools' `sources` argument, the error text that
//! lists the sources and the order of `outcomes` all come from that list.

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A source built into the crate: its name and what the tools say about it.
pub struct BuiltIn {
    pub name: &'static str,
    /// What the source is, for a reader of the tools' descriptions.
    pub description: &'static str,
    /// How to turn it on, said in its `disabled` outcome when it is not configured.
    pub how_to_enable: &'static str,
}

/// Every built-in source, whatever the build: a source compiled out still has its name
/// here, so the tools' schemas do not depend on the feature set.
pub const BUILT_IN: &[BuiltIn] = &[
    BuiltIn {
        name: "local_file",
        description: "this machine's shared JSON file",
        how_to_enable: "not opened by this coordinator (the server always opens it)",
    },
    BuiltIn {
        name: "github",
        description: "one issue per peer in a shared GitHub repository",
        how_to_enable: "not configured: set --github-repo OWNER/NAME (or PEER_REGISTRY_GITHUB_REPO) and GITHUB_TOKEN (or GH_TOKEN)",
    },
    BuiltIn {
        name: "etcd",
        description: "one key per peer on a lease in an etcd cluster",
        how_to_enable: if cfg!(feature = "etcd") {
            "not configured: set --etcd-endpoints URL[,URL...] (or PEER_REGISTRY_ETCD_ENDPOINTS)"
        } else {
            super::etcd::NOT_BUILT_IN
        },
    },
];

/// The name of a source, as tools accept and report it (`local_file`, `github`, ...).
///
/// Ordered as [`BUILT_IN`] lists the built-in sources, then any other name
/// alphabetically, so that summaries and status reports read the same way every time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SourceName(Cow<'static, str>);

impl SourceName {
    pub const LOCAL_FILE: SourceName = SourceName(Cow::Borrowed("local_file"));
    pub const GITHUB: SourceName = SourceName(Cow::Borrowed("github"));
    pub const ETCD: SourceName = SourceName(Cow::Borrowed("etcd"));

    /// A name of the source's choosing: 1 to 32 of `a-z 0-9 _`, starting with a letter.
    pub fn new(name: &str) -> Result<SourceName, String> {
        let fits = (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !fits {
            return Err(format!(
                "`{name}` is not a source name: 1 to 32 of a-z 0-9 _, starting with a letter"
            ));
        }
        Ok(match BUILT_IN.iter().find(|b| b.name == name) {
            Some(built_in) => SourceName(Cow::Borrowed(built_in.name)),
            None => SourceName(Cow::Owned(name.to_owned())),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The built-in sources' names, in their order.
    pub fn built_in() -> impl Iterator<Item = SourceName> {
        BUILT_IN.iter().map(|b| SourceName(Cow::Borrowed(b.name)))
    }

    fn rank(&self) -> usize {
        BUILT_IN
            .iter()
            .position(|b| b.name == self.as_str())
            .unwrap_or(BUILT_IN.len())
    }
}

impl Ord for SourceName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| self.as_str().cmp(other.as_str()))
    }
}

impl PartialOrd for SourceName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SourceName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        SourceName::new(&text).map_err(serde::de::Error::custom)
    }
}

/// In a tool's schema, the names of the built-in sources. A name outside the list is
/// still read (a source added by an embedding program has its own) and answered by the
/// coordinator with the list of sources it knows.
impl JsonSchema for SourceName {
    fn schema_name() -> Cow<'static, str> {
        "SourceName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = BUILT_IN.iter().map(|b| b.name).collect();
        let described: Vec<String> = BUILT_IN
            .iter()
            .map(|b| format!("{} ({})", b.name, b.description))
            .collect();
        schemars::json_schema!({
            "type": "string",
            "enum": names,
            "description": format!("A source: {}.", described.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built-in sources come first in their listed order, then other names alphabetically.
    #[test]
    fn names_order_as_the_built_in_list() {
        let mut names: Vec<SourceName> = ["zeta", "etcd", "github", "alpha", "local_file"]
            .iter()
            .map(|n| SourceName::new(n).expect("valid"))
            .collect();
        names.sort();
        let order: Vec<&str> = names.iter().map(SourceName::as_str).collect();
        assert_eq!(order, ["local_file", "github", "etcd", "alpha", "zeta"]);
    }

    /// Names are checked: a typo'd or hostile name never becomes a source name.
    #[test]
    fn names_are_checked() {
        assert!(SourceName::new("in_memory2").is_ok());
        for bad in ["", "Local", "1st", "a-b", "a b", &"x".repeat(33)] {
            assert!(SourceName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            SourceName::new("github").expect("valid"),
            SourceName::GITHUB
        );
    }
}
