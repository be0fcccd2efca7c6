//! The limits on each field of a record, checked on input and on every record read
//! back; each error says what is allowed.

use std::str::FromStr;

use multiaddr::{Multiaddr, Protocol};

use super::*;

/// A peer id that keeps the rules ([`validate_peer_id`]): what the coordinator takes,
/// whatever the transport, so nothing unchecked reaches a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    pub fn new(text: &str) -> Result<Self, InvalidPeer> {
        validate_peer_id(text)?;
        Ok(PeerId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PeerId {
    type Err = InvalidPeer;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PeerId::new(text)
    }
}

pub fn validate_peer_id(peer_id: &str) -> Result<(), InvalidPeer> {
    if peer_id.is_empty() {
        return Err(InvalidPeer::EmptyPeerId);
    }
    let len = peer_id.chars().count();
    if len > MAX_PEER_ID_LEN {
        return Err(InvalidPeer::PeerIdTooLong(len));
    }
    if let Some(bad) = peer_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(InvalidPeer::PeerIdCharacter(peer_id.to_owned(), bad));
    }
    Ok(())
}

/// Parses `text` as a multiaddr and returns its canonical form (`/ipfs/` becomes `/p2p/`).
///
/// The last `/p2p/` part names the peer reached at this address and must equal `peer_id`;
/// earlier ones, before a `/p2p-circuit`, name relays and may differ.
pub fn canonical_multiaddr(peer_id: &str, text: &str) -> Result<String, InvalidPeer> {
    if text.len() > MAX_MULTIADDR_BYTES {
        return Err(InvalidPeer::MultiaddrTooLong(text.len()));
    }
    if text.trim().is_empty() {
        return Err(InvalidPeer::EmptyMultiaddr);
    }
    let addr = Multiaddr::from_str(text)
        .map_err(|e| InvalidPeer::MultiaddrSyntax(text.to_owned(), e.to_string()))?;
    for part in addr.iter() {
        if let Protocol::Dns(name)
        | Protocol::Dns4(name)
        | Protocol::Dns6(name)
        | Protocol::Dnsaddr(name) = part
        {
            check_dns_name(&name)?;
        }
    }
    let target = addr
        .iter()
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id.to_base58()),
            _ => None,
        })
        .last();
    if let Some(found) = target
        && found != peer_id
    {
        return Err(InvalidPeer::MultiaddrPeerMismatch {
            peer_id: peer_id.to_owned(),
            found,
        });
    }
    let canonical = addr.to_string();
    if canonical.len() > MAX_MULTIADDR_BYTES {
        return Err(InvalidPeer::MultiaddrTooLong(canonical.len()));
    }
    Ok(canonical)
}

/// Longest DNS name accepted in a multiaddr (RFC 1035's limit on a name's text form).
pub const MAX_DNS_NAME_BYTES: usize = 253;

/// Checks a host name of a `/dns/`, `/dns4/`, `/dns6/` or `/dnsaddr/` part against
/// RFC 1123: labels of 1 to 63 ASCII letters, digits and hyphens, no hyphen at either
/// end, at most 253 bytes (one trailing dot, the root, is allowed). Anything else
/// (spaces, control characters, other scripts) is refused: the name reaches people and
/// models, and resolvers would refuse it anyway (internationalized names are written
/// in their `xn--` form).
fn check_dns_name(name: &str) -> Result<(), InvalidPeer> {
    let refuse = |reason| {
        Err(InvalidPeer::BadDnsName {
            name: name.to_owned(),
            reason,
        })
    };
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return refuse("is empty");
    }
    if bare.len() > MAX_DNS_NAME_BYTES {
        return refuse("is too long");
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return refuse("has an empty label");
        }
        if label.len() > 63 {
            return refuse("has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return refuse("has a character other than a letter, digit, hyphen or dot");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse("has a label that starts or ends with a hyphen");
        }
    }
    Ok(())
}

/// Checks and de-duplicates capability names, keeping their order.
///
/// Upper-case names are refused rather than folded (the contract's issue asks for an
/// error), with the lower-case spelling in the message so the caller can fix the call.
pub fn normalize_capabilities(capabilities: &[String]) -> Result<Vec<String>, InvalidPeer> {
    let mut normalized: Vec<String> = Vec::with_capacity(capabilities.len().min(MAX_CAPABILITIES));
    for raw in capabilities {
        let name = raw.to_ascii_lowercase();
        if !is_capability_name(&name) {
            return Err(InvalidPeer::BadCapability(raw.clone()));
        }
        if name != *raw {
            return Err(InvalidPeer::UpperCaseCapability(raw.clone(), name));
        }
        if !normalized.contains(&name) {
            normalized.push(name);
        }
        if normalized.len() > MAX_CAPABILITIES {
            return Err(InvalidPeer::TooManyCapabilities(capabilities.len()));
        }
    }
    Ok(normalized)
}

/// `[a-z0-9][a-z0-9._-]{0,38}`
fn is_capability_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_CAPABILITY_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

pub fn validate_ttl(ttl: i128) -> Result<u64, InvalidPeer> {
    if (i128::from(MIN_TTL_SECONDS)..=i128::from(MAX_TTL_SECONDS)).contains(&ttl) {
        Ok(ttl as u64)
    } else {
        Err(InvalidPeer::TtlOutOfRange(ttl))
    }
}

pub fn validate_metadata(metadata: &JsonObject) -> Result<(), InvalidPeer> {
    let size = serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len());
    if size > MAX_METADATA_BYTES {
        return Err(InvalidPeer::MetadataTooLarge(size));
    }
    Ok(())
}
