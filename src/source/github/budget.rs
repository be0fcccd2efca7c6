//! The write budget: GitHub's limits on content-creating requests (80 a minute, 500 an
//! hour), which issue edits may count against, kept by this process before it sends.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;
use crate::source::SourceError;

/// GitHub's limits on content-creating requests, which issue edits may count against.
#[derive(Debug, Clone, Copy)]
pub struct WriteBudget {
    pub per_minute: usize,
    pub per_hour: usize,
}

impl Default for WriteBudget {
    fn default() -> Self {
        WriteBudget {
            per_minute: 80,
            per_hour: 500,
        }
    }
}

/// The times of this process's recent writes, checked against a [`WriteBudget`].
pub(crate) struct WriteLog {
    budget: WriteBudget,
    writes: Mutex<VecDeque<Instant>>,
}

impl WriteLog {
    pub(crate) fn new(budget: WriteBudget) -> Self {
        WriteLog {
            budget,
            writes: Mutex::new(VecDeque::new()),
        }
    }

    /// Reserves one write in the budget, or says when one will be free.
    pub(crate) fn reserve(&self) -> Result<(), SourceError> {
        let now = Instant::now();
        let mut writes = lock(&self.writes);
        self.check(&mut writes, now)?;
        writes.push_back(now);
        Ok(())
    }

    /// Fails, before any request is sent, when the budget has no write left: a register
    /// always writes, so looking its issue up first would only spend requests and time.
    pub(crate) fn ensure_left(&self) -> Result<(), SourceError> {
        self.check(&mut lock(&self.writes), Instant::now())
    }

    /// `RateLimited` with the wait until the budget has room again, if it has none now.
    /// Writes older than an hour go.
    fn check(&self, writes: &mut VecDeque<Instant>, now: Instant) -> Result<(), SourceError> {
        let budget = self.budget;
        let age = |t: &Instant| now.saturating_duration_since(*t);
        while writes
            .front()
            .is_some_and(|t| age(t) >= Duration::from_secs(3600))
        {
            writes.pop_front();
        }
        let last_minute = writes
            .iter()
            .filter(|t| age(t) < Duration::from_secs(60))
            .count();
        let wait = if writes.len() >= budget.per_hour {
            writes
                .front()
                .map(|t| 3600u64.saturating_sub(age(t).as_secs()))
        } else if last_minute >= budget.per_minute {
            writes
                .iter()
                .find(|t| age(t) < Duration::from_secs(60))
                .map(|t| 60u64.saturating_sub(age(t).as_secs()))
        } else {
            None
        };
        match wait {
            Some(wait) => Err(SourceError::RateLimited {
                retry_after_seconds: wait.max(1),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the per-minute budget a write is refused with a wait of at most a minute.
    #[test]
    fn the_budget_refuses_with_a_wait() {
        let log = WriteLog::new(WriteBudget {
            per_minute: 2,
            per_hour: 10,
        });
        log.reserve().expect("first");
        log.reserve().expect("second");
        match log.ensure_left() {
            Err(SourceError::RateLimited {
                retry_after_seconds,
            }) => assert!((1..=60).contains(&retry_after_seconds)),
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }
}
