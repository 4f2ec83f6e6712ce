//! Any bytes into the journal decoder: records it accepts re-encode to the same bytes, damage is
//! a torn tail or a reported corruption, never a panic.
#![no_main]
use imagestore::journal::{encode_commit, scan_records};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(scan) = scan_records(data) {
        let encoded: Vec<u8> = scan.records.iter().flat_map(|(txid, shards)| encode_commit(*txid, shards)).collect();
        assert_eq!(&encoded[..], &data[..scan.valid_bytes]);
    }
});
