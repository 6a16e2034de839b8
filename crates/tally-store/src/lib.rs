//! Tally's storage on sled 0.34: the openraft log storage of every Raft group with a
//! group-commit flusher, and atomic state-machine batches.
//!
//! One node process opens one [`NodeStore`] (one sled `Db`) for every group it hosts. Each group
//! gets two trees: `"g{id:05}/raft"` for its log and vote ([`LogStore`], openraft's
//! `RaftLogStorage`) and `"g{id:05}/sm"` for its state machine ([`StateTree`], no openraft
//! types). Durability comes from one flusher thread per node that calls sled's blocking
//! `flush()` for every pending request at once, across groups.
//!
//! The durability rules, in one place:
//!
//! - A log append is reported durable (`LogFlushed::log_io_completed(Ok)`) and a vote save
//!   returns only after a `db.flush()` that started after the write was applied has returned.
//! - Everything else (state-machine batches, `committed`, truncate, purge) is written without a
//!   flush. That is safe because sled recovers a prefix of the writes made to one `Db`: a later
//!   flushed append or vote makes every earlier write durable too, in order.
//!
//! # Layout
//!
//! - `config`: [`StoreConfig`] and its defaults.
//! - `error`: [`StoreError`].
//! - `codec`: the value framing `[version u8 = 1][crc32 be][bincode 1]`: [`encode_value`],
//!   [`decode_value`].
//! - `flusher`: the flusher thread (group commit), its watchdog against flushes that never
//!   return, and [`FlushStats`].
//! - `node`: [`NodeStore`], the node's `Db`, and the per-group tree constructors.
//! - `log_store`: [`LogStore`], `RaftLogStorage` + `RaftLogReader` for one group.
//! - `state_tree`: [`StateTree`], a group's state-machine tree.
//! - `vote_file`: the copy of each group's vote kept outside sled (see [`LogStore`]'s
//!   `save_vote`), so that a database that lost its tail cannot make the node vote twice.
//! - `flush_mark`: the count of completed flushes kept outside sled, so that a database that
//!   lost writes it had made durable (acknowledged log entries) refuses to open.

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

pub use codec::{check_frame, decode_value, encode_value, VALUE_FORMAT_VERSION};
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
