//! Arbitrary bytes through every decoder a node applies to untrusted or stored bytes; see
//! `tally_fuzz::decode`. Must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::decode::decode_all(data));
