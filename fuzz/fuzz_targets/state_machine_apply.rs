//! Arbitrary command sequences applied to fresh ledgers, with conservation, balances,
//! exactly-once, replica agreement and restart from persisted items checked after every
//! batch; see `tally_fuzz::apply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::apply::apply_all(data));
