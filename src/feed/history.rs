//! The numbered history of events, bounded by count and by bytes, and the cursors that
//! name positions in it.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Event;

/// Events kept: a cursor at most this many events old can always be served.
pub const MAX_EVENTS: usize = 10_000;

/// Bytes of records kept in events (as counted by [`Event::bytes`]). 10,000 events of
/// records at every size limit of the format (about 6.6 KiB each) fit; only records
/// larger than the format allows, written by someone else, make the history shorter,
/// and a cursor then older than it gets the "list again" error, never a gap.
pub const MAX_BYTES: usize = 96 * 1024 * 1024;

/// The kept events, oldest first. Sequence numbers start at 1 and have no gaps; a
/// position names the last event a reader has seen (0: none yet).
pub(super) struct History {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    next_seq: u64,
    max_events: usize,
    max_bytes: usize,
}

impl History {
    pub(super) fn new(max_events: usize, max_bytes: usize) -> Self {
        History {
            events: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    /// The number the next event gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends `event` (its `seq` must be [`History::next_seq`]), dropping the oldest
    /// events beyond the bounds.
    pub(super) fn push(&mut self, event: Arc<Event>) {
        debug_assert_eq!(event.seq, self.next_seq);
        self.next_seq += 1;
        self.bytes += event.bytes;
        self.events.push_back(event);
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.bytes;
            }
        }
    }

    /// The position after the newest event.
    pub(super) fn head(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether events after `position` are all still kept (and `position` is not ahead
    /// of the head).
    pub(super) fn serves(&self, position: u64) -> bool {
        let oldest_position = self.events.front().map_or(self.head(), |e| e.seq - 1);
        position >= oldest_position && position <= self.head()
    }

    /// The events after `position`, oldest first (`position` must be served).
    pub(super) fn after(&self, position: u64) -> impl Iterator<Item = &Arc<Event>> {
        let skip = self
            .events
            .front()
            .map_or(0, |e| position.saturating_sub(e.seq - 1) as usize);
        self.events.iter().skip(skip)
    }

    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A cursor: this feed's epoch (a number drawn when the server process started its feed)
/// and a position. A cursor of another epoch is from before a restart.
pub(super) fn cursor(epoch: u64, position: u64) -> String {
    format!("{epoch:016x}-{position}")
}

/// The (epoch, position) of a cursor, or `None` when it is not one.
pub(super) fn parse_cursor(text: &str) -> Option<(u64, u64)> {
    let (epoch, position) = text.split_once('-')?;
    if epoch.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(epoch, 16).ok()?, position.parse().ok()?))
}
