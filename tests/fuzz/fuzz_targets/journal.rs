//! Any bytes into the journal decoder: records it accepts re-encode to the same bytes, damage is
//! a torn tail or a reported corruption, never a panic.
#![no_main]
use imagestore::journal::{encode_record, scan_records, RecordKey};
use libfuzzer_sys::fuzz_target;

const KEY: RecordKey = Some([5; 32]);

fuzz_target!(|data: &[u8]| {
    if let Ok(scan) = scan_records(&KEY, data) {
        let encoded: Vec<u8> = scan.records.iter().flat_map(|(_, record)| encode_record(&KEY, record)).collect();
        assert_eq!(&encoded[..], &data[..scan.valid_bytes]);
    }
});
