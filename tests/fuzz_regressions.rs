//! Inputs the fuzzers (fuzz/) once failed on, replayed with the same properties, so the
//! fixes stay fixed in CI. Each file in tests/fuzz_regressions/ is tried as an issue body
//! and as a registry file.

use peer_discovery_mcp::source::github::parse_body;
use peer_discovery_mcp::source::local_file::reencode_registry_bytes;

fn inputs() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/fuzz_regressions")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    found.sort();
    assert!(!found.is_empty());
    found
}

/// A body that yields a valid record reads back identically after being written
/// (found: large numbers lost precision before serde_json's float_roundtrip was on).
#[test]
fn issue_bodies_round_trip() {
    let mut replayed = 0;
    for (name, bytes) in inputs() {
        let Ok(body) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let Ok(record) = parse_body(body) else {
            continue;
        };
        if record.check().is_err() {
            continue;
        }
        replayed += 1;
        let written = serde_json::to_string_pretty(&record).expect("json");
        let again = parse_body(&written).expect("parses again");
        assert_eq!(
            serde_json::to_value(&again).expect("json"),
            serde_json::to_value(&record).expect("json"),
            "{name}"
        );
    }
    assert!(replayed > 0, "no input reached the round trip");
}

/// A registry file that loads is written back so that a second load and save changes
/// nothing (found: `last_cleanup` drifted by one unit in the last place).
#[test]
fn registry_files_reencode_stably() {
    let mut replayed = 0;
    for (name, bytes) in inputs() {
        let Some(once) = reencode_registry_bytes(&bytes) else {
            continue;
        };
        replayed += 1;
        let twice = reencode_registry_bytes(&once).expect("loads again");
        assert_eq!(once, twice, "{name}");
    }
    assert!(replayed > 0, "no input loaded as a registry file");
}
