//! Fuzzes the GitHub issue-body parser and the record rules: nothing panics, and a body
//! that yields a valid record survives being written back and read again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peer_discovery_mcp::registry::github::parse_body;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = parse_body(body) else {
        return;
    };
    if record.check().is_err() {
        return;
    }
    let written = serde_json::to_string_pretty(&record).expect("a valid record serializes");
    let again = parse_body(&written).expect("a written record parses");
    assert!(again.check().is_ok(), "a written record keeps the rules");
    assert_eq!(
        serde_json::to_value(&again).expect("json"),
        serde_json::to_value(&record).expect("json"),
        "the record changed on a round trip"
    );
});
