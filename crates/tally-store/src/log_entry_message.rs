//! The rust-protobuf 2 message raft-engine stores (generated from `proto/log_entry.proto` by
//! `build.rs`): a log entry's index and its framed openraft entry.

#![allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications, trivial_casts, unused_parens)]
#![allow(mismatched_lifetime_syntaxes)]
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, unused_imports)]

include!(concat!(env!("OUT_DIR"), "/log_entry.rs"));
