//! Key layout of a group's state-machine tree (`g{group:05}/sm`):
//!
//! | key                                   | value                                |
//! |---------------------------------------|--------------------------------------|
//! | `i` ‖ bincode(ItemKey)                | a shard's account, hold, transfer    |
//! |                                       | or clock `StateItem` (as of the last |
//! |                                       | full checkpoint)                     |
//! | `d` ‖ log index (BE) ‖ chunk (BE u32) | delta: items one checkpoint changed, |
//! |                                       | `(ItemKey, Option<StateItem>)`       |
//! | `l` ‖ log index (BE) ‖ chunk (BE u32) | line journal: the statement lines    |
//! |                                       | one checkpoint wrote                 |
//! | `j` ‖ log index (BE) ‖ chunk (BE u32) | journal: the retained keys' records  |
//! |                                       | one checkpoint wrote                 |
//! | `x` ‖ log index (BE) ‖ chunk (BE u32) | the index of the journal of the same |
//! |                                       | suffix: each record's fingerprint,   |
//! |                                       | expiry and place in it               |
//! | `s` ‖ bincode(AccountKey) ‖ seq (BE)  | a run of a member account's          |
//! |                                       | `StatementLine`s starting at `seq`   |
//! | `m` ‖ `applied`                       | last applied `LogId` (checkpointed)  |
//! | `m` ‖ `membership`                    | last applied `StoredMembership`      |
//! | `m` ‖ `meta_state`                    | the meta group's whole `MetaState`   |
//! | `m` ‖ `snapshot`                      | the current snapshot's meta and size |
//! | `m` ‖ `state_format`                  | [`STATE_FORMAT`] of a shard's items  |
//! | `n` ‖ chunk (BE u32)                  | the current snapshot's data, chunked |
//!
//! The tree is written only by checkpoints (and snapshot installs), each one sled batch
//! holding what changed since the previous checkpoint and the applied log id. Most
//! checkpoints are *deltas*: the changed items, the new statement lines and the changed
//! idempotency and earn records each go as a few chunked values under the checkpoint's log
//! index, so that a checkpoint costs a handful of sled keys however many accounts it touched.
//! Every so often a *full* checkpoint writes each item changed since the last full one under its
//! own `i` key and the statement lines in memory as one run per account, and deletes the deltas
//! and line journals in the same batch. Loading reads the `i` items, then the deltas in log
//! index order over them, the line journals back into memory, and the journal indexes (not the
//! journals: a record is read from its journal only when its key comes back, see `journal`).
//! Retained keys' records are never changed in place except an earn's reversed amount (the
//! changed record goes in a later journal, whose index entry wins), so they stay in their
//! journals until every record in one has expired. No value but a journal (see
//! `journal::JOURNAL_BYTES_MAX`) exceeds [`VALUE_BYTES_MAX`]: larger ones are split into chunks. A record is deleted only when its
//! retention has passed in log time; a journal is deleted once every record in it has expired,
//! and loading skips records that expired before the stored clock, so a restarted replica
//! holds exactly what a running one holds.
//!
//! bincode's encodings are self-delimiting, so an account's encoding is never a prefix of
//! another account's, and a prefix scan over `s ‖ account` yields exactly its lines in
//! sequence order (the sequence is big-endian).

use tally_ledger::state::{AccountKey, ItemKey};

pub const ITEM_PREFIX: u8 = b'i';
pub const STATEMENT_PREFIX: u8 = b's';
pub const JOURNAL_PREFIX: u8 = b'j';
pub const JOURNAL_INDEX_PREFIX: u8 = b'x';
pub const DELTA_PREFIX: u8 = b'd';
pub const LINE_JOURNAL_PREFIX: u8 = b'l';
pub const SNAPSHOT_CHUNK_PREFIX: u8 = b'n';
pub const APPLIED_KEY: &[u8] = b"mapplied";
pub const MEMBERSHIP_KEY: &[u8] = b"mmembership";
pub const META_STATE_KEY: &[u8] = b"mmeta_state";
pub const SNAPSHOT_KEY: &[u8] = b"msnapshot";
pub const STATE_FORMAT_KEY: &[u8] = b"mstate_format";

/// The encoding of a shard's items, deltas and journals. 4: journals of up to 1 MiB whose
/// records are framed each with their length and crc32 (3 held records as a bincode
/// `Vec<StateItem>` in journals of 6 KiB). 3: every journal has an index value
/// (loading reads indexes, not journals). 2: an idempotency key's request, answer and earn are
/// one `StateItem::Retained`, named by its fingerprint (1 held them as separate idempotency and
/// earn items, under other enum tags). A tree of another format is refused when opened, never
/// misread.
pub const STATE_FORMAT: u32 = 4;

/// Whether a checkpoint's put under `key` creates it: journals, their indexes, deltas and
/// line journals are named by the applied index of the checkpoint that writes them, and a
/// statement run by its account and first sequence, which a full checkpoint writes once (a
/// retry after a failed write may name one again, which costs a value-log file kept until
/// the next open; see `StateTree::write_batch_of_new_keys`).
pub fn is_created_once(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(
            &(JOURNAL_PREFIX | JOURNAL_INDEX_PREFIX | DELTA_PREFIX | LINE_JOURNAL_PREFIX | STATEMENT_PREFIX)
        )
    )
}

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

/// The largest value a checkpoint writes (a larger item, line or record goes in a chunk of its
/// own). Values of [`tally_store::SEPARATED_VALUE_BYTES_MIN`] bytes or more live in the value
/// log (sled keeps a pointer), so this no longer guards sled's pages (sled 0.34 writes a page
/// past 128 KiB to a `blobs/` file it never fsyncs, which 60 KiB values inline did); it bounds
/// what a read of a delta or line journal costs. Journals have their own, larger bound (a
/// record is read back alone).
pub const VALUE_BYTES_MAX: usize = 6 * 1024;

pub fn journal_key(log_index: u64, chunk: u32) -> Vec<u8> {
    checkpoint_chunk_key(JOURNAL_PREFIX, log_index, chunk)
}

/// The key of the index of the journal under `journal_key` (the same suffix).
pub fn journal_index_key(journal_key: &[u8]) -> Vec<u8> {
    let mut bytes = journal_key.to_vec();
    bytes[0] = JOURNAL_INDEX_PREFIX;
    bytes
}

/// The key of the journal whose index is under `index_key`.
pub fn journal_of_index(index_key: &[u8]) -> Vec<u8> {
    let mut bytes = index_key.to_vec();
    bytes[0] = JOURNAL_PREFIX;
    bytes
}

pub fn delta_key(log_index: u64, chunk: u32) -> Vec<u8> {
    checkpoint_chunk_key(DELTA_PREFIX, log_index, chunk)
}

pub fn line_journal_key(log_index: u64, chunk: u32) -> Vec<u8> {
    checkpoint_chunk_key(LINE_JOURNAL_PREFIX, log_index, chunk)
}

/// `prefix` ‖ log index ‖ chunk, big-endian: a checkpoint's chunks sort in log order.
fn checkpoint_chunk_key(prefix: u8, log_index: u64, chunk: u32) -> Vec<u8> {
    let mut bytes = vec![prefix];
    bytes.extend_from_slice(&log_index.to_be_bytes());
    bytes.extend_from_slice(&chunk.to_be_bytes());
    bytes
}

pub fn snapshot_chunk_key(chunk: u32) -> Vec<u8> {
    let mut bytes = vec![SNAPSHOT_CHUNK_PREFIX];
    bytes.extend_from_slice(&chunk.to_be_bytes());
    bytes
}

/// The first sequence number of the statement run stored under `key` (of `account`).
pub fn statement_run_start(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}
