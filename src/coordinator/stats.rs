//! Per-source counters (calls, failures, last error, mean latency) for `registry_status`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::results::SourceStats;
use crate::source::{SourceError, SourceName};

/// The counters of every source, shared by concurrent calls.
#[derive(Default)]
pub(crate) struct StatsBook {
    by_source: Mutex<BTreeMap<SourceName, SourceStats>>,
}

impl StatsBook {
    /// Counts one call to `source` that took `took` and failed with `error`, if it did.
    pub(crate) fn record(&self, source: &SourceName, took: Duration, error: Option<&SourceError>) {
        if let Some(e) = error {
            tracing::warn!(%source, error = %e, "source call failed");
        }
        let mut by_source = crate::lock(&self.by_source);
        let entry = by_source.entry(source.clone()).or_default();
        entry.calls += 1;
        entry.total_latency += took;
        entry.mean_latency_ms = entry.total_latency.as_secs_f64() * 1000.0 / entry.calls as f64;
        entry.last_call_failed = error.is_some();
        if let Some(e) = error {
            entry.failures += 1;
            entry.last_error = Some(e.to_string());
        }
    }

    pub(crate) fn get(&self, source: &SourceName) -> SourceStats {
        crate::lock(&self.by_source)
            .get(source)
            .cloned()
            .unwrap_or_default()
    }
}
