//! `MemorySource`: records in this process's memory, under a name of the caller's choosing.
//!
//! Not offered by the tools (nothing is shared and nothing survives the process); it is the
//! smallest complete [`Source`], for the coordinator's tests, the contract tests of the
//! [`Source`] trait, and programs that embed the crate and want a source without disk or
//! network. Like every source it applies no rule of its own: what a register keeps, what a
//! heartbeat changes and which records a discover wants all come from [`crate::peer`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Abilities, Decide, Decision, Listing, Modified, Progress, Source, SourceError, SourceName,
};
use crate::peer::{PeerFilter, PeerRecord, top_ranked};

/// Records in memory, one per peer id.
pub struct MemorySource {
    name: SourceName,
    abilities: Abilities,
    records: Mutex<BTreeMap<String, PeerRecord>>,
}

impl MemorySource {
    pub fn new(name: SourceName) -> Self {
        MemorySource {
            name,
            abilities: Abilities::default(),
            records: Mutex::new(BTreeMap::new()),
        }
    }

    /// The same source, saying it can do what `abilities` says (to test how the
    /// coordinator treats, say, a source whose writes are costly).
    pub fn with_abilities(mut self, abilities: Abilities) -> Self {
        self.abilities = abilities;
        self
    }

    /// How many records it holds, expired ones included.
    pub fn len(&self) -> usize {
        crate::lock(&self.records).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `record` in as it is, with no rule applied (for tests that need a record a
    /// register could not make, such as one stamped in the future).
    pub fn insert_raw(&self, record: PeerRecord) {
        crate::lock(&self.records).insert(record.peer_id.clone(), record);
    }

    fn stamped(&self, mut record: PeerRecord) -> PeerRecord {
        record.source = self.name.as_str().to_owned();
        record
    }
}

#[async_trait]
impl Source for MemorySource {
    fn name(&self) -> SourceName {
        self.name.clone()
    }

    fn abilities(&self) -> Abilities {
        self.abilities
    }

    async fn modify(&self, peer_id: &str, decide: Decide) -> Result<Modified, SourceError> {
        let mut records = crate::lock(&self.records);
        let before = records.get(peer_id).cloned();
        let (after, written) = match decide(before.as_ref()) {
            Decision::Write(record) => {
                let record = self.stamped(record);
                records.insert(peer_id.to_owned(), record.clone());
                (Some(record), true)
            }
            Decision::Keep => (before.clone(), false),
            Decision::Remove => (None, records.remove(peer_id).is_some()),
        };
        Ok(Modified {
            before,
            after,
            written,
            location: None,
        })
    }

    async fn scan(&self, filter: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
        let records = crate::lock(&self.records);
        let matching: Vec<&PeerRecord> = records.values().filter(|r| filter.matches(r)).collect();
        let rejected = records
            .values()
            .filter(|r| r.is_ahead_of_clock(filter.now))
            .count();
        Ok(Listing {
            matched: matching.len(),
            peers: top_ranked(matching.into_iter(), filter.limit),
            rejected,
            detail: None,
        })
    }

    async fn remove_stale(&self, now: f64, _: &Progress) -> Result<Vec<String>, SourceError> {
        let mut records = crate::lock(&self.records);
        let mut removed = Vec::new();
        records.retain(|id, r| {
            let stale = r.is_removed_by_cleanup(now);
            if stale {
                removed.push(id.clone());
            }
            !stale
        });
        Ok(removed)
    }
}
