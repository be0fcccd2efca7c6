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

use super::{Listing, Progress, Source, SourceError, SourceName, Stored};
use crate::peer::{Heartbeat, PeerFilter, PeerRecord, top_ranked};

/// Records in memory, one per peer id.
pub struct MemorySource {
    name: SourceName,
    records: Mutex<BTreeMap<String, PeerRecord>>,
}

impl MemorySource {
    pub fn new(name: SourceName) -> Self {
        MemorySource {
            name,
            records: Mutex::new(BTreeMap::new()),
        }
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

    async fn register(&self, record: PeerRecord) -> Result<Stored, SourceError> {
        let mut records = crate::lock(&self.records);
        let held = records.get(&record.peer_id);
        let created = held.is_none();
        let new = self.stamped(record.stored_over(held));
        records.insert(new.peer_id.clone(), new.clone());
        Ok(Stored {
            record: new,
            created,
            written: true,
            location: None,
        })
    }

    async fn update(
        &self,
        peer_id: &str,
        heartbeat: &Heartbeat,
        now: f64,
    ) -> Result<Option<Stored>, SourceError> {
        let mut records = crate::lock(&self.records);
        let Some(held) = records.get(peer_id) else {
            return Ok(None);
        };
        let new = self.stamped(heartbeat.apply(held, now));
        records.insert(new.peer_id.clone(), new.clone());
        Ok(Some(Stored {
            record: new,
            created: false,
            written: true,
            location: None,
        }))
    }

    async fn list(&self, filter: &PeerFilter, _: &Progress) -> Result<Listing, SourceError> {
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
        })
    }

    async fn unregister(&self, peer_id: &str) -> Result<bool, SourceError> {
        Ok(crate::lock(&self.records).remove(peer_id).is_some())
    }

    async fn cleanup(
        &self,
        now: f64,
        dry_run: bool,
        _: &Progress,
    ) -> Result<Vec<String>, SourceError> {
        let mut records = crate::lock(&self.records);
        let gone: Vec<String> = records
            .values()
            .filter(|r| r.is_removed_by_cleanup(now))
            .map(|r| r.peer_id.clone())
            .collect();
        if !dry_run {
            for id in &gone {
                records.remove(id);
            }
        }
        Ok(gone)
    }
}
