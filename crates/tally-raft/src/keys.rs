//! Key layout of a group's state-machine tree (`g{group:05}/sm`):
//!
//! | key                                   | value                                |
//! |---------------------------------------|--------------------------------------|
//! | `i` ‖ bincode(ItemKey)                | a shard's `StateItem`                |
//! | `s` ‖ bincode(AccountKey) ‖ seq (BE)  | a member account's `StatementLine`   |
//! | `m` ‖ `applied`                       | last applied `LogId`                 |
//! | `m` ‖ `membership`                    | last applied `StoredMembership`      |
//! | `m` ‖ `meta_state`                    | the meta group's whole `MetaState`   |
//! | `m` ‖ `snapshot`                      | the current snapshot (meta and data) |
//!
//! bincode's encodings are self-delimiting, so an account's encoding is never a prefix of
//! another account's, and a prefix scan over `s ‖ account` yields exactly its lines in
//! sequence order (the sequence is big-endian).

use tally_ledger::state::{AccountKey, ItemKey};

pub const ITEM_PREFIX: u8 = b'i';
pub const STATEMENT_PREFIX: u8 = b's';
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
