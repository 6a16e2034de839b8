//! [`LogStore`]: openraft's `RaftLogStorage` + `RaftLogReader` for one group, on one sled tree.
//!
//! Key layout inside `"g{id:05}/raft"`:
//!
//! - `0x00 ‖ name` for metadata: `vote`, `committed`, `last_purged`;
//! - `0x01 ‖ index as u64 big-endian` for log entries, so key order is index order (little
//!   endian or decimal strings would break ordering past 255 entries).
//!
//! Values use the crate's framing ([`encode_value`]): version byte, crc32, bincode payload.
//! Keeping metadata and entries in one tree lets `purge` remove entries and record
//! `last_purged` in one atomic sled `Batch`, so no reader ever sees a hole.

use std::fmt;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;

use crate::vote_file::{reconcile_vote, VoteFile};
use crate::{decode_value, encode_value, NodeStore, StoreError};

const META: u8 = 0x00;
const ENTRY: u8 = 0x01;

// Metadata keys must sort before every entry key, so that entry ranges never see them.
const _: () = assert!(META < ENTRY);

const KEY_VOTE: &[u8] = b"\x00vote";
const KEY_COMMITTED: &[u8] = b"\x00committed";
const KEY_LAST_PURGED: &[u8] = b"\x00last_purged";

/// The key of the log entry at `index`: `0x01 ‖ index_be`.
fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The index in an entry key, `None` for metadata keys.
pub(crate) fn entry_index(key: &[u8]) -> Option<u64> {
    match key {
        [ENTRY, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// The Raft log and vote of one group. Cheap to clone: the clone is also the group's log reader
/// (sled trees are safe to read while RaftCore writes).
pub struct LogStore<C> {
    group_id: u32,
    tree: sled::Tree,
    node: NodeStore,
    /// Encoded bytes appended since the store was opened (shared by clones), so the group can
    /// bound its log by size as well as by entry count.
    appended_bytes: Arc<AtomicU64>,
    /// The vote's copy outside sled (none for temporary stores).
    vote_file: Option<VoteFile>,
    _config: PhantomData<C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            group_id: self.group_id,
            tree: self.tree.clone(),
            node: self.node.clone(),
            appended_bytes: self.appended_bytes.clone(),
            vote_file: self.vote_file.clone(),
            _config: PhantomData,
        }
    }
}

impl<C> fmt::Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").field("group_id", &self.group_id).finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    pub(crate) fn new(group_id: u32, tree: sled::Tree, node: NodeStore, vote_file: Option<VoteFile>) -> Self {
        LogStore {
            group_id,
            tree,
            node,
            appended_bytes: Arc::new(AtomicU64::new(0)),
            vote_file,
            _config: PhantomData,
        }
    }

    /// A live counter of the encoded bytes appended to this log since it was opened.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended_bytes.clone()
    }

    /// The group this log belongs to.
    pub fn group_id(&self) -> u32 {
        self.group_id
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                let name = String::from_utf8_lossy(&key[1..]);
                let what = format!("group {} {name}", self.group_id);
                decode_value(&bytes, &what).map(Some)
            }
        }
    }

    /// Decodes the entry stored under `key` and checks the pair assertion: the entry's own index
    /// must equal the index in its key.
    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<C::Entry, StoreError> {
        let index = match key {
            [ENTRY, rest @ ..] if rest.len() == 8 => {
                u64::from_be_bytes(rest.try_into().expect("length checked above"))
            }
            _ => {
                return Err(StoreError::Corrupt {
                    what: format!("group {} log key {key:02x?}: not an entry key", self.group_id),
                })
            }
        };
        let what = format!("group {} log entry {index}", self.group_id);
        let entry: C::Entry = decode_value(value, &what)?;
        let stored_index = entry.get_log_id().index;
        if stored_index != index {
            return Err(StoreError::Corrupt {
                what: format!("{what}: stored under index {index} but holds index {stored_index}"),
            });
        }
        Ok(entry)
    }

    /// Entries with index in `[start, end]` (inclusive), in index order.
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<C::Entry>, StoreError> {
        let mut out = Vec::new();
        if start > end {
            return Ok(out);
        }
        for item in self.tree.range(entry_key(start)..=entry_key(end)) {
            let (key, value) = item?;
            out.push(self.decode_entry(&key, &value)?);
        }
        Ok(out)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<C::NodeId>>, StoreError> {
        match self.tree.range(entry_key(0)..=entry_key(u64::MAX)).next_back() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                Ok(Some(self.decode_entry(&key, &value)?.get_log_id().clone()))
            }
        }
    }

    /// A batch removing every entry with index in `[start, end]`.
    fn remove_range(&self, start: u64, end: u64) -> Result<sled::Batch, StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.tree.range(entry_key(start)..=entry_key(end)).keys() {
            batch.remove(key?);
        }
        Ok(batch)
    }
}

fn sto_err<NID: openraft::NodeId>(
    subject: ErrorSubject<NID>,
    verb: ErrorVerb,
    e: StoreError,
) -> StorageError<NID> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// The inclusive `[start, end]` index range of `range`, or `None` if it is empty.
fn inclusive_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => e.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let Some((start, end)) = inclusive_bounds(&range) else {
            return Ok(Vec::new());
        };
        self.read_range(start, end).map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let read = |e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.read_meta(KEY_LAST_PURGED).map_err(read)?;
        // purge removes (-inf, last_purged] and records last_purged in one batch, so when any
        // entry is present it is newer than last_purged; when none is, the log ends there.
        let last_log_id = self.last_entry_log_id().map_err(read)?.or_else(|| last_purged_log_id.clone());
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Vote, ErrorVerb::Write, e);
        let value = encode_value(vote).map_err(write)?;
        self.tree.insert(KEY_VOTE, value.clone()).map_err(|e| write(e.into()))?;
        // The vote must be durable before we return: losing it would let this node vote twice
        // in one term. The flush starts after the insert, so it covers it (and, sled recovering
        // a prefix, every earlier write of this node, including truncates and purges).
        self.node.flush().await.map_err(write)?;
        // Then the copy outside sled (see `vote_file`), in case sled later loses its tail.
        // Blocking file I/O on the Raft task: votes change only with elections.
        if let Some(file) = &self.vote_file {
            file.write(&value).map_err(write)?;
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        let read = |e| sto_err(ErrorSubject::Vote, ErrorVerb::Read, e);
        let in_db: Option<Vote<C::NodeId>> = self.read_meta(KEY_VOTE).map_err(read)?;
        let Some(file) = &self.vote_file else { return Ok(in_db) };
        let damaged = |error: StoreError| StoreError::Damaged {
            path: file.path().display().to_string(),
            detail: error.to_string(),
        };
        let in_file: Option<Vote<C::NodeId>> = match file.read().map_err(read)? {
            Some(bytes) => Some(decode_value(&bytes, "vote file").map_err(|e| read(damaged(e)))?),
            None => None,
        };
        reconcile_vote(self.group_id, in_db, in_file, file.path()).map_err(read)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Store, ErrorVerb::Write, e);
        // No flush: `committed` is only a hint for how far to re-apply on restart. If it is lost
        // in a crash, openraft learns the commit index from the leader again; if it survives, it
        // never points past the durable log, because the entries it names were written to this
        // Db before it and sled recovers a prefix of writes.
        match committed {
            Some(log_id) => {
                let value = encode_value(&log_id).map_err(write)?;
                self.tree.insert(KEY_COMMITTED, value).map_err(|e| write(e.into()))?;
            }
            None => {
                self.tree.remove(KEY_COMMITTED).map_err(|e| write(e.into()))?;
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        self.read_meta(KEY_COMMITTED).map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut count = 0usize;
        let mut size_bytes = 0usize;
        for entry in entries {
            let log_id = entry.get_log_id();
            let value = encode_value(&entry)
                .map_err(|e| sto_err(ErrorSubject::Log(log_id.clone()), ErrorVerb::Write, e))?;
            size_bytes += value.len();
            batch.insert(&entry_key(log_id.index)[..], value);
            count += 1;
        }
        self.appended_bytes.fetch_add(size_bytes as u64, Ordering::Relaxed);
        let write = |e| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e);
        // One batch: the entries become readable together when `apply_batch` returns (openraft
        // requires them readable when `append` returns), and a crash keeps all or none of them.
        self.tree.apply_batch(batch).map_err(|e| write(e.into()))?;
        tracing::trace!(group = self.group_id, count, "log entries applied, waiting for flush");

        // Durability is reported only by the flusher, after a `db.flush()` that started after the
        // batch above was applied returned Ok. Reporting earlier would let the leader count its
        // own vote for entries a crash could still lose. A failed flush is reported as an error,
        // which openraft treats as fatal for the group.
        let completion = Box::new(move |result: io::Result<()>| callback.log_io_completed(result));
        if let Err(completion) = self.node.submit_flush(completion) {
            completion(Err(io::Error::other("the flusher thread has stopped")));
            return Err(write(StoreError::FlusherStopped));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        // Remove [index, +inf) in one batch, so a reader sees the old suffix or none of it, never
        // a hole. No flush of its own: sled recovers a prefix of writes, so the append or vote
        // that follows (and which *is* flushed before openraft relies on it) can only become
        // durable together with this truncate. If a crash loses it, no later write survived
        // either: the node restarts as if it had never received the request that caused the
        // truncate, and it acknowledged nothing for that request.
        let batch = self.remove_range(log_id.index, u64::MAX).map_err(write)?;
        self.tree.apply_batch(batch).map_err(|e| write(e.into()))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        // Remove (-inf, index] and record last_purged in the same batch of the same tree: atomic,
        // so get_log_state never sees the entries gone without last_purged (a hole). No flush of
        // its own: purge only follows applies that are already covered by a snapshot or the
        // state machine in this same Db, and sled's prefix recovery means the purge cannot reach
        // disk before them; if a crash loses it, the entries simply come back and are purged
        // again later.
        let mut batch = self.remove_range(0, log_id.index).map_err(write)?;
        let value = encode_value(&log_id).map_err(write)?;
        batch.insert(KEY_LAST_PURGED, value);
        self.tree.apply_batch(batch).map_err(|e| write(e.into()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_sort_by_index_and_after_metadata() {
        let keys: Vec<[u8; 9]> =
            [0u64, 1, 255, 256, 65_536, u64::MAX].iter().map(|&i| entry_key(i)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for meta in [KEY_VOTE, KEY_COMMITTED, KEY_LAST_PURGED] {
            assert!(meta < &entry_key(0)[..]);
        }
    }

    #[test]
    fn inclusive_bounds_cover_all_range_kinds() {
        assert_eq!(inclusive_bounds(&(3..7)), Some((3, 6)));
        assert_eq!(inclusive_bounds(&(3..=7)), Some((3, 7)));
        assert_eq!(inclusive_bounds(&(3..3)), None);
        assert_eq!(inclusive_bounds(&(0..0)), None);
        assert_eq!(inclusive_bounds(&(5..)), Some((5, u64::MAX)));
        assert_eq!(inclusive_bounds(&(..)), Some((0, u64::MAX)));
        assert_eq!(inclusive_bounds(&(..=0)), Some((0, 0)));
        assert_eq!(inclusive_bounds(&(Bound::Excluded(u64::MAX), Bound::Unbounded)), None);
        assert_eq!(inclusive_bounds(&(Bound::Included(8), Bound::Excluded(3))), None);
    }
}
