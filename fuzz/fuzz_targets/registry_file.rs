//! Fuzzes the registry file loader and writer: nothing panics, and whatever loads is
//! written as a file that loads again and is written identically (nothing lost or changed
//! by a load and a save).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peer_discovery_mcp::registry::local_file::reencode_registry_bytes;

fuzz_target!(|data: &[u8]| {
    let Some(once) = reencode_registry_bytes(data) else {
        return;
    };
    let twice = reencode_registry_bytes(&once).expect("a written registry file loads again");
    assert_eq!(once, twice, "a load and a save changed the file");
});
