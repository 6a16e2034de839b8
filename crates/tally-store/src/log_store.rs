//! [`LogStore`]: openraft's `RaftLogStorage` + `RaftLogReader` for one group, on the node's
//! raft-engine (one region per group).
//!
//! What the group keeps in raft-engine:
//!
//! - its entries, as [`LogEntry`] messages: the index and the openraft entry in the crate's
//!   value framing ([`encode_value`]: version byte, crc32, bincode);
//! - values under the keys `vote`, `committed`, `last_purged` and `truncated_from`.
//!
//! Entries are readable the moment `append` returns because they go into an in-memory cache
//! first; the cache also serves apply and replication (recent entries) without decoding from
//! disk. Entries leave the cache only once written and only when it exceeds
//! [`CACHE_BYTES_MAX`]; older entries are read back from raft-engine.
//!
//! raft-engine has no "truncate" command: it overwrites a region's tail when entries are
//! appended at an index it already holds. openraft can truncate without appending (a follower
//! whose log conflicts with the leader's), so a truncation is recorded as `truncated_from`
//! (entries at or after it are not part of the log), written before anything the truncation
//! allows, and cleared by the next append, which overwrites those entries in raft-engine.
//!
//! Purges are bounded by the group's [`PurgeFloor`]: the state machine lives in memory and is
//! checkpointed to sled, so an entry may only leave the log once a checkpoint covering it is
//! durable. A purge openraft asks for beyond the floor is remembered and done once the floor
//! has passed it.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};
use raft_engine::{Command, LogBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::log_engine::{LogEngine, LogEntries};
use crate::log_entry_message::LogEntry;
use crate::{decode_value, encode_value, StoreError};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_TRUNCATED_FROM: &[u8] = b"truncated_from";

/// Encoded bytes of written entries a group keeps in memory. Apply reads entries right after
/// they commit and replication right after they are appended, so a few MiB serve both; a
/// follower further behind reads from raft-engine.
pub const CACHE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The highest log index whose effects are in a durable state-machine checkpoint: the log may
/// be purged up to it and no further. Shared between the state machine (which raises it after
/// each durable checkpoint) and the log store. [`PurgeFloor::unbounded`] for a log whose state
/// machine keeps nothing in memory (tests).
#[derive(Clone, Debug)]
pub struct PurgeFloor(Arc<AtomicU64>);

impl PurgeFloor {
    /// A floor at 0: nothing may be purged until the state machine raises it.
    pub fn new() -> Self {
        PurgeFloor(Arc::new(AtomicU64::new(0)))
    }

    /// No bound: every purge is done when asked.
    pub fn unbounded() -> Self {
        PurgeFloor(Arc::new(AtomicU64::new(u64::MAX)))
    }

    /// Raises the floor to `index` (never lowers it).
    pub fn raise_to(&self, index: u64) {
        self.0.fetch_max(index, Ordering::AcqRel);
    }

    pub fn index(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl Default for PurgeFloor {
    fn default() -> Self {
        Self::new()
    }
}

/// What one group's log looks like now (its in-memory part and its bounds).
struct GroupLog<C: RaftTypeConfig> {
    /// The newest entries, contiguous, ending at `last_log_id` when not empty; with their
    /// encoded sizes.
    cache: VecDeque<(C::Entry, usize)>,
    cache_bytes: usize,
    last_log_id: Option<LogId<C::NodeId>>,
    last_purged: Option<LogId<C::NodeId>>,
    /// Entries of raft-engine at or after this index are not part of the log.
    truncated_from: Option<u64>,
    /// Entries up to this index (appended in the current `epoch`) are in raft-engine, so the
    /// cache may drop them.
    written_index: u64,
    /// Raised by every truncation, so that a write completing for entries that a truncation
    /// removed in the meantime does not count newer entries as written.
    epoch: u64,
    /// A purge openraft asked for that the purge floor did not allow yet.
    pending_purge: Option<LogId<C::NodeId>>,
}

impl<C: RaftTypeConfig> GroupLog<C> {
    fn first_cached_index(&self) -> Option<u64> {
        self.cache.front().map(|(entry, _)| entry.get_log_id().index)
    }

    fn last_index(&self) -> Option<u64> {
        self.last_log_id.as_ref().map(|log_id| log_id.index)
    }

    /// Drops written entries from the front while the cache is over its size.
    fn trim_cache(&mut self) {
        while self.cache_bytes > CACHE_BYTES_MAX {
            let Some((front, size)) = self.cache.front() else { break };
            if front.get_log_id().index > self.written_index {
                break;
            }
            self.cache_bytes -= size;
            self.cache.pop_front();
        }
    }

    /// Drops cached entries at or after `index`.
    fn cut_cache_from(&mut self, index: u64) {
        while let Some((back, size)) = self.cache.back() {
            if back.get_log_id().index < index {
                break;
            }
            self.cache_bytes -= size;
            self.cache.pop_back();
        }
    }

    /// Drops cached entries at or before `index`.
    fn cut_cache_through(&mut self, index: u64) {
        while let Some((front, size)) = self.cache.front() {
            if front.get_log_id().index > index {
                break;
            }
            self.cache_bytes -= size;
            self.cache.pop_front();
        }
    }
}

/// The Raft log and vote of one group. Cheap to clone: the clone is also the group's log reader.
pub struct LogStore<C: RaftTypeConfig> {
    group_id: u32,
    engine: Arc<LogEngine>,
    log: Arc<Mutex<GroupLog<C>>>,
    /// Encoded bytes appended since the store was opened (shared by clones), so the group can
    /// bound its log by size as well as by entry count.
    appended_bytes: Arc<AtomicU64>,
    purge_floor: PurgeFloor,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            group_id: self.group_id,
            engine: self.engine.clone(),
            log: self.log.clone(),
            appended_bytes: self.appended_bytes.clone(),
            purge_floor: self.purge_floor.clone(),
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").field("group_id", &self.group_id).finish_non_exhaustive()
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

impl<C: RaftTypeConfig> LogStore<C>
where
    C::Entry: Clone,
{
    /// Loads the bounds of group `group_id`'s log from the engine.
    pub(crate) fn open(group_id: u32, engine: Arc<LogEngine>) -> Result<Self, StoreError> {
        let region = u64::from(group_id);
        let raw = engine.engine();
        let read = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> { Ok(raw.get(region, key)) };
        let what = |name: &str| format!("group {group_id} {name}");
        let last_purged: Option<LogId<C::NodeId>> = match read(KEY_LAST_PURGED)? {
            Some(bytes) => Some(decode_value(&bytes, &what("last_purged"))?),
            None => None,
        };
        let truncated_from: Option<u64> = match read(KEY_TRUNCATED_FROM)? {
            Some(bytes) => Some(decode_value(&bytes, &what("truncated_from"))?),
            None => None,
        };
        // A truncation mark hides the entries at and after it (see the module docs).
        let last_index = match (raw.first_index(region), raw.last_index(region)) {
            (Some(first), Some(last)) => {
                let end = match truncated_from {
                    Some(cut) => cut.checked_sub(1).map(|before_cut| before_cut.min(last)),
                    None => Some(last),
                };
                end.filter(|&end| end >= first)
            }
            _ => None,
        };
        let store = LogStore {
            group_id,
            engine,
            log: Arc::new(Mutex::new(GroupLog {
                cache: VecDeque::new(),
                cache_bytes: 0,
                last_log_id: None,
                last_purged: last_purged.clone(),
                truncated_from,
                written_index: 0,
                epoch: 0,
                pending_purge: None,
            })),
            appended_bytes: Arc::new(AtomicU64::new(0)),
            purge_floor: PurgeFloor::unbounded(),
        };
        let last_log_id = match last_index {
            Some(index) => {
                let entry: C::Entry = store.read_from_engine(index, index)?.pop().ok_or_else(|| {
                    StoreError::Corrupt { what: what(&format!("log entry {index} is missing")) }
                })?;
                Some(entry.get_log_id().clone())
            }
            None => None,
        };
        {
            let mut log = store.lock();
            log.written_index = last_index.unwrap_or(0);
            log.last_log_id = match (last_log_id, last_purged) {
                (Some(last), Some(purged)) if purged.index >= last.index => Some(purged),
                (Some(last), _) => Some(last),
                (None, purged) => purged,
            };
        }
        Ok(store)
    }

    /// Bounds purges by `floor` (see [`PurgeFloor`]); a new store purges whenever asked.
    pub fn with_purge_floor(mut self, floor: PurgeFloor) -> Self {
        self.purge_floor = floor;
        self
    }

    /// A live counter of the encoded bytes appended to this log since it was opened.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended_bytes.clone()
    }

    /// The group this log belongs to.
    pub fn group_id(&self) -> u32 {
        self.group_id
    }

    /// The index of the last purge done (`None` before the first): a purge openraft asked for
    /// may wait for the purge floor.
    pub fn purged_index(&self) -> Option<u64> {
        self.lock().last_purged.as_ref().map(|log_id| log_id.index)
    }

    fn region(&self) -> u64 {
        u64::from(self.group_id)
    }

    fn lock(&self) -> MutexGuard<'_, GroupLog<C>> {
        self.log.lock().expect("group log lock poisoned: a panic happened in the log store")
    }

    fn read_value<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.engine.engine().get(self.region(), key) {
            None => Ok(None),
            Some(bytes) => {
                let what = format!("group {} {}", self.group_id, String::from_utf8_lossy(key));
                decode_value(&bytes, &what).map(Some)
            }
        }
    }

    fn put_value<T: Serialize>(&self, batch: &mut LogBatch, key: &[u8], value: &T) -> Result<(), StoreError> {
        batch
            .put(self.region(), key.to_vec(), encode_value(value)?)
            .map_err(|error| StoreError::InvalidArgument(format!("raft-engine refused key {key:?}: {error}")))
    }

    /// Entries `[start, end]` from raft-engine (those it holds), decoded and checked.
    fn read_from_engine(&self, start: u64, end: u64) -> Result<Vec<C::Entry>, StoreError> {
        let raw = self.engine.engine();
        let (Some(first), Some(last)) = (raw.first_index(self.region()), raw.last_index(self.region()))
        else {
            return Ok(Vec::new());
        };
        let (start, end) = (start.max(first), end.min(last));
        if start > end {
            return Ok(Vec::new());
        }
        let mut messages = Vec::with_capacity((end - start + 1) as usize);
        raw.fetch_entries(self.region(), start, end + 1, &mut messages).map_err(|error| {
            StoreError::Corrupt {
                what: format!("group {} log entries {start}..={end}: {error}", self.group_id),
            }
        })?;
        messages
            .iter()
            .map(|message| {
                let what = format!("group {} log entry {}", self.group_id, message.index);
                let entry: C::Entry = decode_value(&message.payload, &what)?;
                let stored_index = entry.get_log_id().index;
                if stored_index != message.index {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "{what}: stored under index {} but holds index {stored_index}",
                            message.index
                        ),
                    });
                }
                Ok(entry)
            })
            .collect()
    }

    /// Entries with index in `[start, end]` that the log holds, in index order.
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<C::Entry>, StoreError> {
        let (from_engine, mut from_cache) = {
            let log = self.lock();
            let Some(last) = log.last_index() else { return Ok(Vec::new()) };
            let first = log.last_purged.as_ref().map_or(0, |log_id| log_id.index + 1);
            let (start, end) = (start.max(first), end.min(last));
            if start > end {
                return Ok(Vec::new());
            }
            let cached_from = log.first_cached_index().unwrap_or(last + 1);
            // The cache is contiguous: positions follow from indexes.
            let from_cache: Vec<C::Entry> = if end < cached_from {
                Vec::new()
            } else {
                let skip = usize::try_from(start.saturating_sub(cached_from)).unwrap_or(usize::MAX);
                let take = usize::try_from(end - start.max(cached_from) + 1).unwrap_or(usize::MAX);
                log.cache.iter().skip(skip).take(take).map(|(entry, _)| entry.clone()).collect()
            };
            let from_engine = (start < cached_from).then(|| (start, end.min(cached_from - 1)));
            (from_engine, from_cache)
        };
        let Some((start, end)) = from_engine else { return Ok(from_cache) };
        let mut entries = self.read_from_engine(start, end)?;
        entries.append(&mut from_cache);
        Ok(entries)
    }

    /// Adds `run` (contiguous entries) to `batch` and empties it.
    fn add_run(&self, batch: &mut LogBatch, run: &mut Vec<LogEntry>) -> Result<(), StoreError> {
        if run.is_empty() {
            return Ok(());
        }
        batch
            .add_entries::<LogEntries>(self.region(), run)
            .map_err(|error| StoreError::Encode(format!("raft-engine batch: {error}")))?;
        run.clear();
        Ok(())
    }

    /// Does the purge openraft asked for, if the floor allows it (adds it to `batch`).
    fn purge_if_allowed(&self, log: &mut GroupLog<C>, batch: &mut LogBatch) -> Result<(), StoreError> {
        let Some(purge) = log.pending_purge.clone() else { return Ok(()) };
        if purge.index > self.purge_floor.index() {
            return Ok(());
        }
        log.pending_purge = None;
        // raft-engine removes entries below the index given; the record of the purge goes in the
        // same batch, so a crash keeps both or neither.
        batch.add_command(self.region(), Command::Compact { index: purge.index + 1 });
        self.put_value(batch, KEY_LAST_PURGED, &purge)?;
        log.cut_cache_through(purge.index);
        if log.last_index().is_none_or(|last| last < purge.index) {
            log.last_log_id = Some(purge.clone());
        }
        log.last_purged = Some(purge);
        Ok(())
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C>
where
    C::Entry: Clone,
{
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

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let log = self.lock();
        Ok(LogState { last_purged_log_id: log.last_purged.clone(), last_log_id: log.last_log_id.clone() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Vote, ErrorVerb::Write, e);
        let mut batch = LogBatch::default();
        self.put_value(&mut batch, KEY_VOTE, vote).map_err(write)?;
        // Durable before we return: losing it would let this node vote twice in one term. The
        // sync also covers every earlier write of the node (truncations among them).
        self.engine.write_durably(batch).await.map_err(write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.read_value(KEY_VOTE).map_err(|e| sto_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Store, ErrorVerb::Write, e);
        // Not synced: `committed` tells a restart how far to re-apply. The next synced write
        // carries it; if a crash loses it, openraft learns the commit index from the leader
        // again, and it never points past the durable log (the entries it names were written
        // before it, and raft-engine recovers a prefix of its writes).
        let mut batch = LogBatch::default();
        match committed {
            Some(log_id) => self.put_value(&mut batch, KEY_COMMITTED, &log_id).map_err(write)?,
            None => batch.delete(self.region(), KEY_COMMITTED.to_vec()),
        }
        self.engine.submit(batch, false, None).map_err(write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        self.read_value(KEY_COMMITTED).map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = |e| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e);
        let mut batch = LogBatch::default();
        let mut run: Vec<LogEntry> = Vec::new();
        let mut appended = 0usize;
        let mut first_appended = None;
        let mut log = self.lock();
        let mut size_bytes = 0usize;
        for entry in entries {
            let index = entry.get_log_id().index;
            let next = log.last_index().map_or(0, |last| last + 1);
            if index < next {
                // Overwrites the tail: raft-engine does the same with the entries below.
                log.cut_cache_from(index);
            } else if index > next && log.last_index().is_some() {
                // openraft never leaves a hole (its storage suite does, to set up a state), and
                // raft-engine cannot hold one: the entries before it go.
                tracing::warn!(
                    group = self.group_id,
                    index,
                    next,
                    "append leaves a hole: the log restarts at it"
                );
                self.add_run(&mut batch, &mut run).map_err(write)?;
                batch.add_command(self.region(), Command::Compact { index });
                log.cut_cache_from(0);
            }
            let payload = encode_value(&entry).map_err(write)?;
            let entry_bytes = payload.len();
            size_bytes += entry_bytes;
            let mut message = LogEntry::new();
            message.index = index;
            message.payload = payload;
            run.push(message);
            first_appended.get_or_insert(index);
            appended += 1;
            log.last_log_id = Some(entry.get_log_id().clone());
            log.cache_bytes += entry_bytes;
            log.cache.push_back((entry, entry_bytes));
        }
        if appended == 0 {
            drop(log);
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let last_index = log.last_index().expect("entries were appended");
        if first_appended.is_some_and(|first| log.truncated_from.is_some_and(|cut| first <= cut)) {
            // These entries overwrite the truncated ones in raft-engine: the mark goes.
            batch.delete(self.region(), KEY_TRUNCATED_FROM.to_vec());
            log.truncated_from = None;
        }
        self.add_run(&mut batch, &mut run).map_err(write)?;
        self.purge_if_allowed(&mut log, &mut batch).map_err(write)?;
        self.appended_bytes.fetch_add(size_bytes as u64, Ordering::Relaxed);
        let epoch = log.epoch;
        drop(log);

        // Durability is reported only after the sync that covered this batch returned: reporting
        // earlier would let the leader count its own vote for entries a crash could still lose.
        // A failed write is reported as an error, which openraft treats as fatal for the group.
        let group_log = Arc::downgrade(&self.log);
        let done = Box::new(move |result: io::Result<()>| {
            if result.is_ok() {
                if let Some(group_log) = group_log.upgrade() {
                    let mut log = group_log.lock().expect("group log lock poisoned");
                    if log.epoch == epoch {
                        log.written_index = log.written_index.max(last_index);
                        log.trim_cache();
                    }
                }
            }
            callback.log_io_completed(result);
        });
        self.engine.submit(batch, true, Some(done)).map_err(write)
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let index = log_id.index;
        let new_last = match index.checked_sub(1) {
            None => None,
            Some(previous) => {
                let purged = self.lock().last_purged.clone();
                match purged {
                    Some(purged) if purged.index >= previous => Some(purged),
                    _ => self
                        .read_range(previous, previous)
                        .map_err(write)?
                        .pop()
                        .map(|entry| entry.get_log_id().clone()),
                }
            }
        };
        let mut log = self.lock();
        if log.last_index().is_none_or(|last| last < index) {
            return Ok(());
        }
        log.cut_cache_from(index);
        log.last_log_id = new_last.or_else(|| log.last_purged.clone());
        log.epoch += 1;
        log.written_index = log.written_index.min(index.saturating_sub(1));
        let cut = log.truncated_from.map_or(index, |cut| cut.min(index));
        log.truncated_from = Some(cut);
        let mut batch = LogBatch::default();
        self.put_value(&mut batch, KEY_TRUNCATED_FROM, &cut).map_err(write)?;
        drop(log);
        // Not synced: the append or vote that follows (which is synced before openraft relies on
        // it) can only become durable together with this mark, raft-engine recovering a prefix
        // of its writes. If a crash loses it, no later write survived either, and the node
        // restarts as if it had not received the request that caused the truncation.
        self.engine.submit(batch, false, None).map_err(write)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let write = |e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let mut log = self.lock();
        if log.last_purged.as_ref().is_some_and(|purged| purged.index >= log_id.index) {
            return Ok(());
        }
        if log.pending_purge.as_ref().is_none_or(|pending| pending.index < log_id.index) {
            log.pending_purge = Some(log_id);
        }
        let mut batch = LogBatch::default();
        self.purge_if_allowed(&mut log, &mut batch).map_err(write)?;
        drop(log);
        if batch.is_empty() {
            return Ok(());
        }
        // Not synced: if a crash loses the purge the entries come back and are purged again.
        self.engine.submit(batch, false, None).map_err(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_floor_only_rises() {
        let floor = PurgeFloor::new();
        assert_eq!(floor.index(), 0);
        floor.raise_to(10);
        floor.raise_to(4);
        assert_eq!(floor.index(), 10);
        assert_eq!(PurgeFloor::unbounded().index(), u64::MAX);
    }
}
