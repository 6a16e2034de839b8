//! Tally's storage: every Raft group's log and vote in one raft-engine per node, and the
//! groups' state-machine checkpoints in one sled 0.34 database.
//!
//! One node process opens one [`NodeStore`] for every group it hosts: a raft-engine in
//! `<path>/raft-log` (one region per group; [`LogStore`], openraft's `RaftLogStorage`) with one
//! writer thread that merges every pending write into one batch and one fdatasync, and a sled
//! `Db` at `<path>` with one tree per group (`"g{id:05}/sm"`, [`StateTree`], no openraft types)
//! and one flusher thread.
//!
//! The durability rules, in one place:
//!
//! - A log append is reported durable (`LogFlushed::log_io_completed(Ok)`) and a vote save
//!   returns only after an fdatasync of raft-engine's file that started after the write. Other
//!   log writes (`committed`, truncation marks, purges) are not synced: raft-engine recovers a
//!   prefix of its writes, so the next sync covers them.
//! - State-machine checkpoints are made durable by [`NodeStore::flush`]: sled's `flush()`, then
//!   `fsync` of sled's files (its own flush ends with `sync_file_range`).
//! - The log is purged only up to a durable checkpoint ([`PurgeFloor`]).
//!
//! # Layout
//!
//! - `config`: [`StoreConfig`] and its defaults.
//! - `error`: [`StoreError`].
//! - `codec`: the value framing `[version u8 = 1][crc32 be][bincode 1]`: [`encode_value`],
//!   [`decode_value`].
//! - `log_engine`: the node's raft-engine and its writer thread (group commit), [`LogWriteStats`].
//! - `log_entry_message`: the rust-protobuf 2 entry message raft-engine stores.
//! - `log_store`: [`LogStore`], `RaftLogStorage` + `RaftLogReader` for one group, [`PurgeFloor`].
//! - `power_cut`: [`PowerCutFileSystem`], a raft-engine file system for power-loss tests.
//! - `flusher`: sled's flusher thread (group commit), its watchdog against flushes that never
//!   return, and [`FlushStats`].
//! - `node`: [`NodeStore`] and the per-group constructors.
//! - `state_tree`: [`StateTree`], a group's state-machine tree.
//! - `flush_mark`: the count of completed sled flushes kept outside sled, so that a database
//!   that lost checkpoints it had made durable refuses to open.

mod codec;
mod config;
mod error;
mod files;
mod flush_mark;
mod flusher;
mod log_engine;
mod log_entry_message;
mod log_store;
mod node;
mod power_cut;
mod state_tree;
mod value_log;

pub use codec::{
    check_frame, decode_value, encode_framed, encode_value, framed_payload, FRAME_HEADER_BYTES,
    VALUE_FORMAT_VERSION,
};
pub use config::{
    StoreConfig, FLUSH_STALL_ABORT_MS_DEFAULT, FLUSH_STALL_ABORT_MS_MIN, SLED_CACHE_BYTES_DEFAULT,
};
pub use error::StoreError;
pub use flush_mark::MARK_SYNC_INTERVAL_MS;
pub use flusher::FlushStats;
pub use log_engine::LogWriteStats;
pub use log_store::{LogStore, PurgeFloor, CACHE_BYTES_MAX};
pub use node::{wait_until_sled_unlocked, NodeStore, LOCK_WAIT_MS, RAFT_LOG_FOLDER};
pub use power_cut::{PowerCut, PowerCutFileSystem, PowerCutImages};
pub use state_tree::StateTree;
pub use value_log::{SEPARATED_VALUE_BYTES_MIN, VALUE_LOG_FOLDER};
