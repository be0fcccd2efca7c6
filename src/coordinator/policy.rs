//! What the coordinator tells a source to do with the copy it holds of one peer: one
//! function an operation, each built from [`crate::peer`]'s rules, plus the one policy
//! that depends on what a source can do (coalescing heartbeats to costly sources).
//!
//! A source runs the returned [`Decide`] inside its own atomic section
//! ([`crate::source::Source::modify`]), so the rule sees exactly the copy it replaces.

use crate::peer::{Heartbeat, PeerRecord};
use crate::source::{Abilities, Decide, Decision};

/// The held copy a rule may build on: none when it claims a time ahead of the clock at
/// `now` ([`PeerRecord::is_ahead_of_clock`]), which is not to be trusted (it would keep
/// its future `last_seen` and never expire).
fn trusted(held: Option<&PeerRecord>, now: f64) -> Option<&PeerRecord> {
    held.filter(|h| !h.is_ahead_of_clock(now))
}

/// Register at `now`: store the announcement over any trusted held copy
/// ([`PeerRecord::stored_over`] keeps `first_seen` and unknown fields).
pub(crate) fn register(record: PeerRecord, now: f64) -> Decide {
    Box::new(move |held| Decision::Write(record.clone().stored_over(trusted(held, now))))
}

/// Heartbeat at `now`: refresh the held copy ([`Heartbeat::apply`]); a source that holds
/// none keeps none (the coordinator then registers the refreshed copy there). To a source
/// whose writes are costly, a heartbeat that can wait ([`heartbeat_can_wait`]) is not
/// written.
pub(crate) fn heartbeat(heartbeat: Heartbeat, now: f64, abilities: Abilities) -> Decide {
    Box::new(move |held| match trusted(held, now) {
        None => Decision::Keep,
        Some(held) if abilities.costly_writes && heartbeat_can_wait(held, &heartbeat, now) => {
            Decision::Keep
        }
        Some(held) => Decision::Write(heartbeat.apply(held, now)),
    })
}

/// Unregister: remove whatever the source holds for the peer, a copy it cannot read
/// included (a source that holds nothing removes nothing and says so).
pub(crate) fn unregister() -> Decide {
    Box::new(|_| Decision::Remove)
}

/// Write coalescing, for sources whose writes are costly: a heartbeat that changes no
/// field but `last_seen` waits while the held copy still has more than half its lease.
/// The copy then stays listed (its lease has not ended), and a fleet heartbeating every
/// `ttl/3` writes once a lease rather than three times.
pub fn heartbeat_can_wait(held: &PeerRecord, heartbeat: &Heartbeat, now: f64) -> bool {
    let lease_half_used = now - held.last_seen >= held.ttl_seconds as f64 / 2.0;
    !heartbeat.changes_fields_of(held) && !lease_half_used
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Announcement;

    fn held(last_seen: f64, ttl: i64) -> PeerRecord {
        Announcement::new(
            "p".into(),
            "/ip4/127.0.0.1/tcp/1",
            &["compute".into()],
            Some(ttl),
            None,
            3600,
        )
        .expect("valid")
        .into_record(last_seen)
    }

    /// A plain heartbeat waits until half the lease is used; a changed field never waits.
    #[test]
    fn heartbeats_to_costly_sources_wait_until_half_the_lease() {
        let copy = held(1000.0, 100);
        let plain = Heartbeat::default();
        assert!(heartbeat_can_wait(&copy, &plain, 1049.0));
        assert!(!heartbeat_can_wait(&copy, &plain, 1050.0));
        let moved = Heartbeat {
            multiaddr: Some("/ip4/127.0.0.1/tcp/2".into()),
            ..Heartbeat::default()
        };
        assert!(!heartbeat_can_wait(&copy, &moved, 1001.0));
    }

    /// Only sources that say their writes are costly get coalesced heartbeats.
    #[test]
    fn only_costly_sources_are_coalesced() {
        let copy = held(1000.0, 100);
        let cheap = heartbeat(Heartbeat::default(), 1010.0, Abilities::default())(Some(&copy));
        assert!(matches!(cheap, Decision::Write(r) if r.last_seen == 1010.0));
        let costly = Abilities {
            costly_writes: true,
            ..Abilities::default()
        };
        let kept = heartbeat(Heartbeat::default(), 1010.0, costly)(Some(&copy));
        assert_eq!(kept, Decision::Keep);
        assert_eq!(
            heartbeat(Heartbeat::default(), 1010.0, costly)(None),
            Decision::Keep
        );
    }

    /// A held copy stamped ahead of the clock is no copy to build on: a heartbeat finds
    /// nothing to refresh (the coordinator registers the peer again) and a register
    /// does not inherit its times.
    #[test]
    fn copies_from_the_future_are_not_built_on() {
        let future = held(1e15, 100);
        assert_eq!(
            heartbeat(Heartbeat::default(), 1000.0, Abilities::default())(Some(&future)),
            Decision::Keep
        );
        let fresh = held(1000.0, 100);
        let Decision::Write(stored) = register(fresh, 1000.0)(Some(&future)) else {
            panic!("a register writes");
        };
        assert_eq!((stored.first_seen, stored.last_seen), (1000.0, 1000.0));
    }
}
