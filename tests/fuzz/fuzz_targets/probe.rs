//! Any bytes into the image probe, at every verify level: an error or an answer, never a panic,
//! and never an answer beyond the pixel limit.
#![no_main]
use imagestore::images::probe::{probe, Verify};
use libfuzzer_sys::fuzz_target;

const MAX_PIXELS: u64 = 1 << 22;

fuzz_target!(|data: &[u8]| {
    for verify in [Verify::Header, Verify::Structure, Verify::Decode] {
        if let Ok(info) = probe(data, MAX_PIXELS, verify) {
            assert!(u64::from(info.width) * u64::from(info.height) <= MAX_PIXELS);
        }
    }
});
