//! Which calls wait for which: every `tools/call` is a read or a write of one peer or of
//! the whole registry, and a call waits for the earlier writes it depends on.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

pub(crate) use crate::serve::jsonrpc::IdKey;

/// The id of a response or error line written by rmcp (not of a request it sends).
pub(super) fn response_id(line: &[u8]) -> Option<IdKey> {
    #[derive(Deserialize)]
    struct Envelope {
        id: Option<Value>,
        method: Option<IgnoredAny>,
    }
    let envelope: Envelope = serde_json::from_slice(line).ok()?;
    if envelope.method.is_some() {
        return None;
    }
    IdKey::from_value(&envelope.id?)
}

/// What a request does to the registry, for ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Access {
    /// Changes nothing: every request but the writes below.
    Read,
    /// Changes one peer: `register_peer`, `update_peer`, `unregister_peer`.
    Peer(String),
    /// May change any peer: `cleanup_expired_peers` (unless `dry_run`), or a write whose
    /// `peer_id` cannot be read.
    Everything,
}

impl Access {
    pub(super) fn of(message: &Value) -> Access {
        if message.get("method").and_then(Value::as_str) != Some("tools/call") {
            return Access::Read;
        }
        let tool = message.pointer("/params/name").and_then(Value::as_str);
        let arguments = message.pointer("/params/arguments");
        let argument = |name: &str| arguments.and_then(|a| a.get(name));
        match tool {
            Some("register_peer" | "update_peer" | "unregister_peer") => {
                match argument("peer_id").and_then(Value::as_str) {
                    Some(peer) => Access::Peer(peer.to_owned()),
                    None => Access::Everything,
                }
            }
            Some("cleanup_expired_peers") => match argument("dry_run") {
                Some(Value::Bool(true)) => Access::Read,
                _ => Access::Everything,
            },
            _ => Access::Read,
        }
    }

    pub(super) fn is_write(&self) -> bool {
        !matches!(self, Access::Read)
    }

    /// Whether a request with this access must wait for an `earlier` one still pending.
    pub(super) fn waits_for(&self, earlier: &Access) -> bool {
        match (self, earlier) {
            (_, Access::Read) => false,
            (Access::Peer(mine), Access::Peer(theirs)) => mine == theirs,
            _ => true,
        }
    }
}

/// A request read and not answered yet.
pub(super) struct Pending {
    /// Arrival order.
    seq: u64,
    access: Access,
    held_open: bool,
    /// The line, while it is held back; `None` once passed to rmcp.
    held: Option<Vec<u8>>,
}

/// The requests read and not answered, and which of them are held back.
#[derive(Default)]
pub(super) struct Order {
    pub(super) next_seq: u64,
    pub(super) pending: HashMap<IdKey, Pending>,
    /// Ids of the held requests, in arrival order.
    pub(super) held: VecDeque<IdKey>,
    /// Pending requests that count against `max_in_flight`.
    pub(super) counted: usize,
    /// Pending requests in held-open slots.
    pub(super) held_open: usize,
}

impl Order {
    /// Whether a request with `access` arriving at `seq` must wait for a pending one.
    pub(super) fn blocked(&self, seq: u64, access: &Access) -> bool {
        self.pending
            .values()
            .any(|p| p.seq < seq && p.access.is_write() && access.waits_for(&p.access))
    }

    /// Admits a request; returns its line when it can go to rmcp now.
    pub(super) fn admit(
        &mut self,
        id: IdKey,
        access: Access,
        held_open: bool,
        max_held_open: usize,
        line: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let held_open = held_open && self.held_open < max_held_open;
        if held_open {
            self.held_open += 1;
        } else {
            self.counted += 1;
        }
        let blocked = self.blocked(seq, &access);
        let (held, now) = if blocked {
            self.held.push_back(id.clone());
            (Some(line), None)
        } else {
            (None, Some(line))
        };
        self.pending.insert(
            id,
            Pending {
                seq,
                access,
                held_open,
                held,
            },
        );
        now
    }

    /// Ends a request (answered or cancelled); returns whether it had been passed to rmcp,
    /// or None when it was not pending.
    pub(super) fn end(&mut self, id: &IdKey) -> Option<bool> {
        let pending = self.pending.remove(id)?;
        if pending.held_open {
            self.held_open -= 1;
        } else {
            self.counted -= 1;
        }
        if pending.held.is_some() {
            self.held.retain(|h| h != id);
        }
        Some(pending.held.is_none())
    }

    /// The held lines that nothing blocks any more, in arrival order, marked as passed on.
    pub(super) fn release(&mut self) -> Vec<Vec<u8>> {
        let mut ready = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            let id = &self.held[i];
            let Some(p) = self.pending.get(id) else {
                self.held.remove(i);
                continue;
            };
            if self.blocked(p.seq, &p.access) {
                i += 1;
                continue;
            }
            let id = self.held.remove(i).expect("index in range");
            if let Some(line) = self.pending.get_mut(&id).and_then(|p| p.held.take()) {
                ready.push(line);
            }
        }
        ready
    }
}
