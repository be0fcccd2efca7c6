use super::*;
use serde_json::json;

const LIBP2P_ID: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

fn announce(peer_id: &str, multiaddr: &str) -> Result<Announcement, InvalidPeer> {
    Announcement::new(
        peer_id.into(),
        multiaddr,
        &[],
        None,
        None,
        DEFAULT_TTL_SECONDS,
    )
}

/// Opaque ids and libp2p ids are both accepted; bad characters and lengths are not.
#[test]
fn peer_id_rules() {
    assert!(validate_peer_id("agent-7").is_ok());
    assert!(validate_peer_id(LIBP2P_ID).is_ok());
    assert!(validate_peer_id(&"a".repeat(128)).is_ok());
    assert_eq!(validate_peer_id(""), Err(InvalidPeer::EmptyPeerId));
    assert_eq!(
        validate_peer_id(&"a".repeat(129)),
        Err(InvalidPeer::PeerIdTooLong(129))
    );
    assert!(matches!(
        validate_peer_id("a b"),
        Err(InvalidPeer::PeerIdCharacter(_, ' '))
    ));
    assert!(matches!(
        validate_peer_id("é"),
        Err(InvalidPeer::PeerIdCharacter(_, 'é'))
    ));
}

/// `/ipfs/` is stored as `/p2p/`, and the `/p2p/` part must name the registering peer.
#[test]
fn multiaddr_is_canonicalised_and_checked_against_peer_id() {
    let addr = format!("/ip4/192.0.2.7/tcp/4001/ipfs/{LIBP2P_ID}");
    let a = announce(LIBP2P_ID, &addr).expect("valid");
    assert_eq!(
        a.multiaddr,
        format!("/ip4/192.0.2.7/tcp/4001/p2p/{LIBP2P_ID}")
    );

    let err = announce("agent-7", &addr).expect_err("mismatch");
    assert!(matches!(err, InvalidPeer::MultiaddrPeerMismatch { .. }));
    assert!(err.to_string().contains("must be equal"), "{err}");

    let err = announce("agent-7", "not-a-multiaddr").expect_err("garbage");
    assert!(
        err.to_string()
            .starts_with("multiaddr `not-a-multiaddr` does not parse"),
        "{err}"
    );
    assert_eq!(
        announce("agent-7", "").expect_err("empty"),
        InvalidPeer::EmptyMultiaddr
    );
}

/// A relayed address names the relay first; only the last `/p2p/` is the peer itself.
#[test]
fn relay_address_checks_the_target_peer_only() {
    let relay = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN";
    let addr = format!("/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{LIBP2P_ID}");
    assert!(announce(LIBP2P_ID, &addr).is_ok());
    assert!(announce(relay, &addr).is_err());
}

#[test]
fn multiaddr_length_is_limited() {
    let long = format!("/dns4/{}.example/tcp/1", "a".repeat(1100));
    assert!(matches!(
        announce("p", &long),
        Err(InvalidPeer::MultiaddrTooLong(_))
    ));
}

/// Capabilities are de-duplicated in order; upper case, bad names and counts fail.
#[test]
fn capability_rules() {
    let caps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        normalize_capabilities(&caps(&["storage", "compute", "storage"])),
        Ok(caps(&["storage", "compute"]))
    );
    assert_eq!(
        normalize_capabilities(&caps(&["Storage"])),
        Err(InvalidPeer::UpperCaseCapability(
            "Storage".into(),
            "storage".into()
        ))
    );
    assert!(normalize_capabilities(&caps(&["a".repeat(39).as_str()])).is_ok());
    assert!(normalize_capabilities(&caps(&["a".repeat(40).as_str()])).is_err());
    assert!(normalize_capabilities(&caps(&["-x"])).is_err());
    assert!(normalize_capabilities(&caps(&["has space"])).is_err());
    assert!(normalize_capabilities(&caps(&[""])).is_err());
    let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
    assert_eq!(
        normalize_capabilities(&many),
        Err(InvalidPeer::TooManyCapabilities(33))
    );
    assert!(normalize_capabilities(&many[..32]).is_ok());
}

#[test]
fn ttl_and_metadata_limits() {
    assert_eq!(
        validate_ttl(0).expect_err("0").to_string(),
        "ttl_seconds must be within 1..=604800 (got 0)"
    );
    assert!(validate_ttl(1_000_000_000).is_err());
    assert_eq!(validate_ttl(604_800), Ok(604_800));
    let mut big = JsonObject::new();
    big.insert("blob".into(), json!("x".repeat(5000)));
    assert!(matches!(
        validate_metadata(&big),
        Err(InvalidPeer::MetadataTooLarge(_))
    ));
}

/// The lease ends exactly at `last_seen + ttl_seconds`.
#[test]
fn expiry_boundary() {
    let r = announce("p", "/ip4/127.0.0.1/tcp/1")
        .expect("valid")
        .into_record(100.0);
    assert!(!r.is_expired(100.0 + 3599.9));
    assert!(r.is_expired(100.0 + 3600.0));
    assert_eq!(r.lease(200.0).expires_in_seconds, 3500.0);
    assert_eq!(r.lease(1e9).expires_in_seconds, 0.0);
}

/// Re-registering keeps the first `first_seen` and unknown fields of the old copy.
#[test]
fn stored_over_keeps_first_seen_and_unknown_fields() {
    let mut old = announce("p", "/ip4/127.0.0.1/tcp/1")
        .expect("valid")
        .into_record(10.0);
    old.unknown_fields.insert("signature".into(), json!("abc"));
    let new = announce("p", "/ip4/127.0.0.1/tcp/2")
        .expect("valid")
        .into_record(50.0);
    let stored = new.stored_over(Some(&old));
    assert_eq!(stored.first_seen, 10.0);
    assert_eq!(stored.last_seen, 50.0);
    assert_eq!(stored.multiaddr, "/ip4/127.0.0.1/tcp/2");
    assert_eq!(stored.unknown_fields["signature"], "abc");
}

/// A heartbeat moves `last_seen` and replaces only the given fields.
#[test]
fn heartbeat_replaces_given_fields_only() {
    let old = Announcement::new(
        "p".into(),
        "/ip4/127.0.0.1/tcp/1",
        &["storage".into()],
        Some(60),
        None,
        DEFAULT_TTL_SECONDS,
    )
    .expect("valid")
    .into_record(10.0);
    let beat = Heartbeat::new("p", None, Some(&["compute".into()]), None, None).expect("valid");
    assert!(beat.changes_fields_of(&old));
    let new = beat.apply(&old, 20.0);
    assert_eq!((new.first_seen, new.last_seen), (10.0, 20.0));
    assert_eq!(new.capabilities, vec!["compute"]);
    assert_eq!(new.ttl_seconds, 60);
    assert!(!Heartbeat::default().changes_fields_of(&old));
}

/// The top of the ranking is the same whether it is cut before or after sorting.
#[test]
fn top_ranked_keeps_the_best_in_order() {
    let records: Vec<PeerRecord> = [("c", 5.0), ("a", 9.0), ("b", 9.0), ("d", 1.0), ("e", 7.0)]
        .iter()
        .map(|(id, t)| {
            announce(id, "/ip4/127.0.0.1/tcp/1")
                .expect("valid")
                .into_record(*t)
        })
        .collect();
    let ids = |v: Vec<PeerRecord>| v.into_iter().map(|r| r.peer_id).collect::<Vec<_>>();
    assert_eq!(
        ids(top_ranked(records.iter(), None)),
        ["a", "b", "e", "c", "d"]
    );
    assert_eq!(ids(top_ranked(records.iter(), Some(3))), ["a", "b", "e"]);
    assert_eq!(ids(top_ranked(records.iter(), Some(10))).len(), 5);
    assert!(top_ranked(records.iter(), Some(0)).is_empty());
}

/// A record in the Python module's shape round-trips with exactly its eight keys.
#[test]
fn python_shape_round_trips() {
    let python = json!({
        "peer_id": "agent-7", "multiaddr": "/ip4/127.0.0.1/tcp/4001",
        "capabilities": ["storage"], "first_seen": 1.5, "last_seen": 2.5,
        "source": "local_file", "ttl_seconds": 3600, "metadata": {"k": 1}
    });
    let record: PeerRecord = serde_json::from_value(python.clone()).expect("parses");
    record.check().expect("valid");
    assert_eq!(serde_json::to_value(&record).expect("serializes"), python);
}

/// Unknown fields survive a read and a write; missing required fields are refused and
/// missing optional ones take their defaults.
#[test]
fn unknown_fields_are_kept_and_defaults_apply() {
    let text = r#"{"peer_id":"p","multiaddr":"/ip4/127.0.0.1/tcp/1","first_seen":1,"last_seen":2,"signature":{"alg":"ed25519"}}"#;
    let record: PeerRecord = serde_json::from_str(text).expect("parses");
    assert_eq!(record.unknown_fields["signature"]["alg"], "ed25519");
    assert_eq!(
        (record.ttl_seconds, record.source.as_str()),
        (DEFAULT_TTL_SECONDS, "unknown")
    );
    let written = serde_json::to_value(&record).expect("serializes");
    assert_eq!(written["signature"]["alg"], "ed25519");
    let err = serde_json::from_str::<PeerRecord>(r#"{"peer_id":"p","first_seen":1,"last_seen":2}"#)
        .expect_err("no multiaddr");
    assert!(
        err.to_string().contains("missing field `multiaddr`"),
        "{err}"
    );
}

/// Records read back are held to every rule: a bad capability is refused.
#[test]
fn check_rejects_records_that_break_a_rule() {
    let mut r = announce("p", "/ip4/127.0.0.1/tcp/1")
        .expect("valid")
        .into_record(1.0);
    r.source = "local_file".into();
    assert!(r.check().is_ok());
    r.capabilities = vec!["UPPER".into()];
    assert!(r.check().is_err());
    r.capabilities = vec![];
    r.last_seen = f64::NAN;
    assert!(r.check().is_err());
}

/// DNS names in multiaddrs follow RFC 1123; anything else is refused, naming why.
#[test]
fn dns_names_are_checked() {
    for good in [
        "/dns4/node.example.org/tcp/443/wss",
        "/dns6/a-1.b2.example/tcp/1",
        "/dns/localhost/tcp/1",
        "/dnsaddr/bootstrap.libp2p.io",
        "/dns4/example.org./tcp/1",
        "/dns4/xn--bcher-kva.example/tcp/1",
    ] {
        assert!(canonical_multiaddr("p", good).is_ok(), "{good}");
    }
    let long_label = format!("/dns4/{}.example/tcp/1", "a".repeat(64));
    let long_name = format!("/dns4/{}a/tcp/1", "abcdefghi.".repeat(26));
    let bad: [(&str, &str); 9] = [
        ("/dns4/bad name.example/tcp/1", "character other than"),
        ("/dns4/bad\nname.example/tcp/1", "character other than"),
        ("/dns6/nul\u{0}.example/tcp/1", "character other than"),
        ("/dns/\u{202e}gro.example/tcp/1", "character other than"),
        ("/dnsaddr/a..b", "empty label"),
        ("/dns4/-a.example/tcp/1", "hyphen"),
        ("/dns4/b\u{fc}cher.example/tcp/1", "character other than"),
        (&long_label, "longer than 63"),
        (&long_name, "too long"),
    ];
    for (text, reason) in bad {
        match canonical_multiaddr("p", text) {
            Err(e @ InvalidPeer::BadDnsName { .. }) => {
                assert!(e.to_string().contains(reason), "{text:?}: {e}");
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}
