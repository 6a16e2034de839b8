//! Shared code of Tally's fuzz targets, so that the targets stay one line each and the
//! corpus replay test (`tests/corpus.rs`, plain `cargo test`, no nightly) runs the very same
//! checks.
//!
//! - [`decode`]: every decoder a node applies to bytes it did not produce itself (Raft wire
//!   messages and replies from peers, node API calls and answers, protobuf requests) or that
//!   it reads back from disk (the store's value framing). None may panic.
//! - [`apply`]: sequences of ledger commands built from raw bytes, applied to fresh ledgers,
//!   with the ledger's promises checked after every batch.

pub mod apply;
pub mod decode;
