//! `EtcdSource` (feature `etcd`): one key per peer in an etcd cluster, on a lease that
//! is the peer's TTL, so records leave by themselves when their peer stops heartbeating.
//!
//! - Layout (`keys`): `<prefix>peers/<peer_id>` holds the record as JSON;
//!   `<prefix>caps/<capability>/<peer_id>` is an empty index key per capability, on the
//!   same lease, so the record and its index keys leave together.
//! - Writes ([`crate::source::Source::modify`], in `store`): take the held copy and its `mod_revision`
//!   (from the view, or read from etcd), ask `decide`, then one transaction guarded by
//!   that `mod_revision`. A plain heartbeat renews the peer's lease and rewrites the
//!   record on it; any other write puts the record and its index keys on a fresh lease
//!   of the record's TTL, deletes the index keys of dropped capabilities, then revokes
//!   the old lease; a removal deletes the keys, then revokes the lease. A lost compare
//!   (someone wrote in between, or the view trailed) reads etcd and decides again.
//! - Reads ([`crate::source::Source::scan`]): from the watch-kept view (`view`), once it has applied
//!   this source's own last write; while its watch is down, from etcd directly.
//! - Connection (`client`): every endpoint, request timeouts, retries of calls that
//!   never left, error mapping.
//! - Options and opener (`options`): compiled in every build.
//!
//! docs/etcd.md says what each fault does to each operation.

#[cfg(feature = "etcd")]
mod client;
#[cfg(feature = "etcd")]
mod keys;
mod options;
#[cfg(feature = "etcd")]
mod view;

pub use options::{EtcdCredentials, EtcdOptions, NOT_BUILT_IN};

#[cfg(feature = "etcd")]
pub use store::{EtcdSettings, EtcdSource};

#[cfg(feature = "etcd")]
mod store;
