//! Key layout of a group's state-machine tree (`g{group:05}/sm`):
//!
//! | key                                   | value                                |
//! |---------------------------------------|--------------------------------------|
//! | `i` ‖ bincode(ItemKey)                | a shard's account, hold, transfer    |
//! |                                       | or clock `StateItem`                 |
//! | `j` ‖ log index (BE)                  | journal: the idempotency and earn    |
//! |                                       | records one apply call wrote         |
//! | `s` ‖ bincode(AccountKey) ‖ seq (BE)  | a member account's `StatementLine`   |
//! | `m` ‖ `applied`                       | last applied `LogId`                 |
//! | `m` ‖ `membership`                    | last applied `StoredMembership`      |
//! | `m` ‖ `meta_state`                    | the meta group's whole `MetaState`   |
//! | `m` ‖ `snapshot`                      | the current snapshot (meta and data) |
//!
//! Idempotency and earn records are the bulk of the per-command writes and are never changed
//! in place except an earn's reversed amount, so one apply call writes all of them as one
//! journal value instead of one key each (measured: half the sled cost per earn). A record is
//! deleted only when its retention has passed in log time; a journal is deleted once every
//! record in it has expired, and loading skips records that expired before the stored clock,
//! so a restarted replica holds exactly what a running one holds.
//!
//! bincode's encodings are self-delimiting, so an account's encoding is never a prefix of
//! another account's, and a prefix scan over `s ‖ account` yields exactly its lines in
//! sequence order (the sequence is big-endian).

use tally_ledger::state::{AccountKey, ItemKey};

pub const ITEM_PREFIX: u8 = b'i';
pub const STATEMENT_PREFIX: u8 = b's';
pub const JOURNAL_PREFIX: u8 = b'j';
pub const APPLIED_KEY: &[u8] = b"mapplied";
pub const MEMBERSHIP_KEY: &[u8] = b"mmembership";
pub const META_STATE_KEY: &[u8] = b"mmeta_state";
pub const SNAPSHOT_KEY: &[u8] = b"msnapshot";

pub fn item_key(key: &ItemKey) -> Vec<u8> {
    let mut bytes = vec![ITEM_PREFIX];
    bincode::serialize_into(&mut bytes, key).expect("encoding an item key into memory cannot fail");
    bytes
}

pub fn statement_prefix(account: &AccountKey) -> Vec<u8> {
    let mut bytes = vec![STATEMENT_PREFIX];
    bincode::serialize_into(&mut bytes, account).expect("encoding an account key into memory cannot fail");
    bytes
}

pub fn statement_key(account: &AccountKey, sequence: u64) -> Vec<u8> {
    let mut bytes = statement_prefix(account);
    bytes.extend_from_slice(&sequence.to_be_bytes());
    bytes
}

pub fn journal_key(log_index: u64) -> Vec<u8> {
    let mut bytes = vec![JOURNAL_PREFIX];
    bytes.extend_from_slice(&log_index.to_be_bytes());
    bytes
}
