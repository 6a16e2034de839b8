//! openraft's `RaftStateMachine` over Tally's domain state: in memory, checkpointed to the
//! group's sled tree.
//!
//! Apply changes memory only ([`GroupState`]) and notes what it changed. About every second
//! ([`crate::group::CHECKPOINT_INTERVAL_MS`]) a checkpoint ([`GroupShared::checkpoint`]) writes
//! what changed since the previous one with the applied log id and membership in ONE atomic
//! sled batch; the group then makes it durable (sled flush and fsync) and only then lets its
//! Raft log be purged up to it. Most checkpoints are deltas (a few chunked values, whatever
//! the number of accounts touched); every [`FULL_CHECKPOINT_EVERY`] checkpoints, or once
//! [`LINES_IN_MEMORY_MAX`] statement lines wait in memory, a full one rewrites the changed
//! items under their own keys and the lines as runs per account (see `keys`). The Raft log (in
//! raft-engine) is the write-ahead log: a restart loads the last checkpoint and openraft
//! re-applies the committed entries after it, so no entry is applied twice to durable state.
//! Statement lines not checkpointed yet are read from memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, StorageIOError};
use serde::{Deserialize, Serialize};
use tally_ledger::meta::MetaState;
use tally_ledger::state::{AccountKey, ChangeSet, ItemKey, KeyFingerprint, StateItem, StatementLine};
use tally_ledger::{CurrencyCode, Ledger, MemberId, RecordSlot};
use tally_store::{
    decode_value, encode_framed, encode_value, NodeStore, PurgeFloor, StateTree, StoreError,
    FRAME_HEADER_BYTES,
};

use crate::journal::{encode_journals, EncodedJournal, JournalIndexEntry, JournalRecord, JournalSource};
use crate::keys;
use crate::types::{
    Entry, GroupId, GroupRequest, GroupResponse, LogId, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TallyRaft, META_GROUP_ID,
};

/// Puts (`Some`) and deletes (`None`) for one atomic tree batch.
type TreeWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;
/// A stored journal: the log time its last record expires at, and its key.
type JournalEntry = (u64, Vec<u8>);
/// The whole content of a tree, for a snapshot install.
type TreeContent = Vec<(Vec<u8>, Vec<u8>)>;

/// Format of snapshot payloads; bump on any change of what a snapshot holds.
const SNAPSHOT_FORMAT_VERSION: u8 = 2;

/// At most this many delta checkpoints follow a full one. Deltas are cheap to write (a sled
/// key per ~6 KiB of changes instead of one per item and per account's new lines) and a full
/// checkpoint folds them into one key per item, so a restart reads a bounded number of them.
pub const FULL_CHECKPOINT_EVERY: u32 = 16;

/// A full checkpoint is due once this many statement lines wait in memory (lines leave memory
/// only when a full checkpoint has written them as runs): about 40 MiB per group.
pub const LINES_IN_MEMORY_MAX: usize = 262_144;

/// The domain state of one group.
#[derive(Clone, Debug)]
// One value per group, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum GroupData {
    Shard(Ledger),
    /// Behind an `Arc` so that gateways read the latest partners and agreements without a copy.
    Meta(Arc<MetaState>),
}

#[derive(Clone, Debug)]
pub struct GroupState {
    pub data: GroupData,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// State shared between the state machine (written only by openraft's state-machine worker)
/// and readers (balance reads, statements, status).
pub struct GroupShared {
    pub group_id: GroupId,
    pub tree: StateTree,
    state: RwLock<GroupState>,
    snapshots_built: AtomicU64,
    /// The last log id of the current (stored) snapshot. Its lock orders the writes of the
    /// current snapshot: a build runs concurrently with applies and installs, and must never
    /// replace a newer installed snapshot with its older cut.
    current_snapshot: Mutex<Option<LogId>>,
    /// What apply changed that no checkpoint has written yet.
    unwritten: Mutex<Unwritten>,
    /// Items written by deltas since the last full checkpoint, with the value the last of them
    /// wrote: the next full one writes them under their own keys before it deletes the deltas.
    /// Only checkpoints (one at a time, under `checkpoint_lock`), snapshot installs and the
    /// load touch it. Apart from `unwritten`, which apply takes after every entry: folding a
    /// delta's items in took 11-20 ms a second at 9,000 transfers/s, and every apply waited
    /// for it (the open-loop p99).
    written_since_full: Mutex<FastMap<ItemKey, Option<StateItem>>>,
    /// Orders checkpoints and snapshot installs (both write the tree from what memory holds).
    checkpoint_lock: Arc<tokio::sync::Mutex<()>>,
    /// Records a checkpoint wrote, waiting to leave memory (see [`WrittenRecords`]).
    written_records: Mutex<WrittenRecords>,
    /// The shard's retained keys as the last apply, load or install left them. Every write
    /// checks the retention budget before it is proposed; reading the count under the state
    /// lock made a runtime worker wait while apply held that lock (tens of milliseconds for an
    /// entry of thousands of commands), and with two workers the other one alone served every
    /// call meanwhile: SubmitBatch runs left half of both cores idle.
    retained_keys: AtomicUsize,
    /// When the earliest open hold expires (log time, ms; `u64::MAX` for none), for the same
    /// reason: the leader's hold-expiry task looks at it four times a second.
    next_hold_expiry_ms: AtomicU64,
    /// Reads a shard's retained records back from their journals (`None` for the meta group).
    journal_source: Option<Arc<JournalSource>>,
}

/// Hash maps and sets of the apply path: a seeded foldhash, several times cheaper than std's
/// SipHash on member ids (SipHash was 2-3 % of the node's CPU in batch runs).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Records a checkpoint lets leave memory per hold of the state's write lock, when no apply
/// does it (a shard at rest).
const EVICTED_PER_LOCK: usize = 1_024;
/// Written records that leave memory at the start of one apply, at most: more than an apply
/// adds (at most about [`APPLY_COMMANDS_PER_LOCK`] commands, one record each), so the queue
/// drains under load.
const EVICTED_PER_APPLY: usize = 2 * APPLY_COMMANDS_PER_LOCK;

/// Records in journals that may leave memory, with the slots they can be read back from.
///
/// Apply lets them go, under the state lock it already holds, before it applies its entries.
/// A checkpoint's thread did it before, in slices under the write lock, and apply waited for
/// that lock at nearly every entry (36 waits a second, an off-CPU profile of SubmitBatch): on
/// two cores the thread holding it is often preempted. A shard at rest lets them go at its
/// next checkpoint tick.
#[derive(Default)]
struct WrittenRecords {
    records: VecDeque<(KeyFingerprint, RecordSlot, Arc<[u8]>)>,
    /// Records left memory since the expiry index was last compacted (see
    /// `Ledger::compact_retained_expiry`).
    compaction_due: bool,
}
/// Accounts whose written lines a full checkpoint lets leave memory per hold of the lock of
/// unwritten changes.
const RELEASED_ACCOUNTS_PER_LOCK: usize = 1_024;

/// The changes of applies since the last checkpoint, and the tree's journals.
///
/// Apply copies what it changed into `captured` and `lines_unjournaled` as it goes, so that a
/// checkpoint takes them whole while it holds the state lock: copying a second's changes at
/// the cut took 20-45 ms at 6,500 transfers/s, and every apply (so every call) waited for it.
#[derive(Default)]
struct Unwritten {
    /// Items apply changed, as the last apply that changed each left it. A hash map: applies
    /// add to it all second long, and a checkpoint writes it in any order.
    captured: FastMap<ItemKey, Option<StateItem>>,
    /// Retained records apply stored, in apply order (the bulk of a second's changes: one per
    /// new key). A vector, not map entries of a few hundred bytes that the map regrew every
    /// checkpoint (109 MB at the peak of a heap profile at 8 M keys): a record changed twice
    /// goes in the journal twice, and the later slot wins when it is evicted and when a
    /// restart loads the journals. A record that expired meanwhile needs nothing written
    /// (its journal goes once all its records have expired).
    records: Vec<JournalRecord>,
    meta_changed: bool,
    /// Statement lines not in runs yet (in line journals, or not written at all), per account in
    /// sequence order.
    /// Shared, so that a checkpoint copies pointers under the state lock, not the lines. A
    /// hash map: every apply adds to it (a B-tree's string compares of member ids were 3 % of
    /// the node's CPU), and a full checkpoint sorts the few accounts it writes.
    lines: FastMap<AccountKey, Vec<Arc<StatementLine>>>,
    /// Lines in no line journal yet, in apply order: what the next delta writes.
    lines_unjournaled: Vec<(AccountKey, Arc<StatementLine>)>,
    /// The other lines of `lines` (in line journals): with `lines_unjournaled`, what the next
    /// full checkpoint writes as runs.
    lines_since_full: Vec<(AccountKey, Arc<StatementLine>)>,
    /// The number of lines in `lines`.
    lines_in_memory: usize,
    /// Delta and line-journal keys in the tree: the next full checkpoint deletes them.
    delta_keys: Vec<Vec<u8>>,
    /// Delta checkpoints since the last full one.
    deltas_since_full: u32,
    /// A checkpoint failed: the next one is full, so nothing it held is missing from the tree.
    full_due: bool,
    /// Stored journals by expiry (see [`JournalEntry`]).
    journals: BTreeSet<JournalEntry>,
    /// The applied log id the tree holds (the last checkpoint's).
    checkpointed: Option<LogId>,
}

impl Unwritten {
    /// Notes statement lines that apply added, or that the load read back from line journals
    /// (`journaled`), in sequence order per account.
    fn add_lines(&mut self, lines: impl Iterator<Item = (AccountKey, StatementLine)>, journaled: bool) {
        for (account, line) in lines {
            let line = Arc::new(line);
            let pending = if journaled { &mut self.lines_since_full } else { &mut self.lines_unjournaled };
            pending.push((account.clone(), line.clone()));
            self.lines.entry(account).or_default().push(line);
            self.lines_in_memory += 1;
        }
    }
}

/// A checkpoint ready to write: the tree batch, the statement lines it wrote as runs (the last
/// sequence per account, to forget them in memory once written), the applied index, and what
/// to put back if the write fails.
struct CheckpointWrites {
    writes: TreeWrites,
    written_lines: Vec<(AccountKey, u64)>,
    applied_index: u64,
    retry: CheckpointRetry,
    /// The records written to journals, and per journal its number and index (in the same
    /// order): once written, they leave memory.
    journal_records: Vec<JournalRecord>,
    journals_written: Vec<(u32, Vec<JournalIndexEntry>)>,
    /// Journals (and their indexes) the write deletes.
    journals_deleted: Vec<Vec<u8>>,
}

/// What a checkpoint hands back once written, and what it hands back when it failed, so that
/// the next (full) one writes it.
struct CheckpointRetry {
    /// A delta's items, for `written_since_full` whatever the outcome.
    delta_items: Vec<(ItemKey, Option<StateItem>)>,
    /// A delta's lines, now in a line journal (or, on failure, for the full one that follows).
    delta_lines: Vec<(AccountKey, Arc<StatementLine>)>,
    /// A full checkpoint's items and lines: back to `written_since_full` and `lines_since_full`
    /// when it failed.
    full_items: Vec<(ItemKey, Option<StateItem>)>,
    full_lines: Vec<(AccountKey, Arc<StatementLine>)>,
    delta_keys: Vec<Vec<u8>>,
    expired_journals: Vec<JournalEntry>,
    meta_changed: bool,
}

impl GroupShared {
    pub fn read(&self) -> RwLockReadGuard<'_, GroupState> {
        self.state.read().expect("group state lock poisoned: a panic happened during apply")
    }

    /// The shard's retained idempotency keys as of the last apply, without the state lock (0 for
    /// the meta group).
    pub fn retained_keys(&self) -> usize {
        self.retained_keys.load(Ordering::Acquire)
    }

    /// When the earliest open hold expires, in log time, as of the last apply, without the state
    /// lock; `None` when no hold is open (and for the meta group).
    pub fn next_hold_expiry_ms(&self) -> Option<u64> {
        Some(self.next_hold_expiry_ms.load(Ordering::Acquire)).filter(|expiry_ms| *expiry_ms != u64::MAX)
    }

    /// Publishes what callers read without the state lock ([`GroupShared::retained_keys`],
    /// [`GroupShared::next_hold_expiry_ms`]); called by whoever changed the state, still holding
    /// its lock, so that what is published follows the state's order.
    fn publish_summary(&self, state: &GroupState) {
        if let GroupData::Shard(ledger) = &state.data {
            self.retained_keys.store(ledger.retained_keys(), Ordering::Release);
            self.next_hold_expiry_ms
                .store(ledger.next_hold_expiry_ms().unwrap_or(u64::MAX), Ordering::Release);
        }
    }

    /// The meta group's state (panics on a shard group: a wiring bug).
    pub fn meta_state(&self) -> Arc<MetaState> {
        match &self.read().data {
            GroupData::Meta(meta) => meta.clone(),
            GroupData::Shard(_) => panic!("group {} is a shard, not the meta group", self.group_id),
        }
    }

    /// One page of a member account's statement and the account's total line count. Without
    /// a cursor, a newest-first page starts at the last line written and an oldest-first one at
    /// the first (panics on the meta group: a wiring bug).
    pub fn statement_page(
        &self,
        member_id: &MemberId,
        currency: &CurrencyCode,
        start_sequence: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> Result<(Vec<StatementLine>, u64), StoreError> {
        let total_lines = match &self.read().data {
            GroupData::Shard(ledger) => ledger.statement_lines(member_id, currency),
            GroupData::Meta(_) => panic!("group {} is the meta group, not a shard", self.group_id),
        };
        let start = match (start_sequence, newest_first) {
            (Some(sequence), _) => Some(sequence),
            (None, true) => total_lines.checked_sub(1),
            (None, false) => Some(0),
        };
        let Some(start) = start else { return Ok((Vec::new(), 0)) };
        let account = AccountKey::member(member_id, currency);
        Ok((self.statement_lines(&account, Some(start), newest_first, limit)?, total_lines))
    }

    /// Lines of a member account, from `start_sequence` (inclusive) in the given direction.
    pub fn statement_lines(
        &self,
        account: &AccountKey,
        start_sequence: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<StatementLine>, StoreError> {
        let start = match (start_sequence, newest_first) {
            (Some(sequence), _) => Some(sequence),
            (None, false) => Some(0),
            (None, true) => match &self.read().data {
                GroupData::Shard(ledger) => {
                    ledger.account(account).and_then(|record| record.statement_lines.checked_sub(1))
                }
                GroupData::Meta(_) => None,
            },
        };
        let Some(start) = start else { return Ok(Vec::new()) };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let span = limit as u64 - 1;
        let (low, high) = if newest_first {
            (start.saturating_sub(span), start)
        } else {
            (start, start.saturating_add(span))
        };
        // Memory first, then the tree: a checkpoint writes lines to the tree before it drops
        // them from memory, so each line is found in one place or both, never in neither.
        let mut found: BTreeMap<u64, StatementLine> = BTreeMap::new();
        {
            let unwritten = self.unwritten.lock().expect("unwritten changes lock poisoned");
            if let Some(lines) = unwritten.lines.get(account) {
                for line in lines.iter().filter(|line| (low..=high).contains(&line.sequence)) {
                    found.insert(line.sequence, StatementLine::clone(line));
                }
            }
        }
        let wanted = high - low + 1;
        if (found.len() as u64) < wanted {
            for line in self.stored_statement_lines(account, low, high)? {
                found.entry(line.sequence).or_insert(line);
            }
        }
        let lines = found.into_values();
        Ok(if newest_first { lines.rev().collect() } else { lines.collect() })
    }

    /// The tree's lines of `account` with sequence in `[low, high]`, ascending.
    fn stored_statement_lines(
        &self,
        account: &AccountKey,
        low: u64,
        high: u64,
    ) -> Result<Vec<StatementLine>, StoreError> {
        let prefix = keys::statement_prefix(account);
        let mut runs = self.tree.scan_prefix(&prefix, Some(&keys::statement_key(account, low)), true, 1)?;
        // A run holds at least one line: at most one run per wanted line follows the first.
        let runs_after = usize::try_from(high - low).unwrap_or(usize::MAX);
        if let Some(next) = low.checked_add(1) {
            for (key, value) in self.tree.scan_prefix(
                &prefix,
                Some(&keys::statement_key(account, next)),
                false,
                runs_after,
            )? {
                if keys::statement_run_start(&key).is_some_and(|first| first > high) {
                    break;
                }
                runs.push((key, value));
            }
        }
        let mut lines = Vec::new();
        for (_, value) in runs {
            let run: Vec<StatementLine> = decode_value(&value, "statement run")?;
            lines.extend(run.into_iter().filter(|line| (low..=high).contains(&line.sequence)));
        }
        lines.sort_by_key(|line| line.sequence);
        Ok(lines)
    }

    /// Makes the next checkpoint a full one, written even if nothing was applied since the last
    /// when deltas are left to fold: a node shutting down leaves a tree that loads without
    /// replaying deltas.
    pub fn make_next_checkpoint_full(&self) {
        let mut unwritten = self.unwritten.lock().expect("unwritten changes lock poisoned");
        unwritten.full_due = true;
        if !unwritten.delta_keys.is_empty() {
            unwritten.checkpointed = None;
        }
    }

    /// Writes what changed since the last checkpoint to the tree (one atomic batch, not flushed)
    /// and returns the applied index it holds, or `None` when nothing was applied since. The
    /// caller makes it durable (a store flush) before it relies on it.
    pub async fn checkpoint(self: &Arc<Self>) -> Result<Option<u64>, StoreError> {
        let _serial = self.checkpoint_lock.lock().await;
        // The copies and their encoding take tens to hundreds of milliseconds under load: off
        // the runtime's workers, whose queued tasks (calls, apply) would otherwise wait behind
        // them (a task in a busy worker's LIFO slot cannot be stolen by the other worker), and
        // at a lower priority than apply (see `background`).
        let this = Arc::clone(self);
        let collected = crate::background::run(move || this.collect_checkpoint())
            .await
            .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))?;
        let Some(checkpoint) = collected else {
            // Nothing applied since the last checkpoint, so no apply lets its records go.
            let this = Arc::clone(self);
            crate::background::run(move || this.evict_queued_at_rest())
                .await
                .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))?;
            return Ok(None);
        };
        let CheckpointWrites {
            writes,
            written_lines,
            applied_index,
            retry,
            journal_records,
            journals_written,
            journals_deleted,
        } = checkpoint;
        let tree = self.tree.clone();
        let write_count = writes.len();
        let written =
            crate::background::run(move || tree.write_batch_of_new_keys(writes, keys::is_created_once))
                .await
                .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))
                .and_then(|written| written);
        let CheckpointRetry {
            delta_items,
            delta_lines,
            full_items,
            full_lines,
            delta_keys,
            expired_journals,
            meta_changed,
        } = retry;
        {
            let mut guard = self.unwritten.lock().expect("unwritten changes lock poisoned");
            let unwritten = &mut *guard;
            unwritten.lines_since_full.extend(delta_lines);
            if let Err(error) = written {
                // Everything is still in memory: the next checkpoint is a full one, which writes
                // every item changed since the last full one and every line in memory. A record
                // captured again since the cut holds the newer value.
                let mut since_full = self.written_since_full.lock().expect("checkpoint items lock poisoned");
                since_full.extend(delta_items);
                since_full.extend(full_items);
                unwritten.lines_since_full.extend(full_lines);
                let newer = std::mem::replace(&mut unwritten.records, journal_records);
                unwritten.records.extend(newer);
                unwritten.delta_keys.extend(delta_keys);
                unwritten.journals.extend(expired_journals);
                unwritten.meta_changed |= meta_changed;
                unwritten.full_due = true;
                unwritten.checkpointed = None;
                return Err(error);
            }
            if let Some(source) = &self.journal_source {
                source.forget(&journals_deleted);
            }
        }
        let this = Arc::clone(self);
        crate::background::run(move || {
            // Here, on a background thread and outside `unwritten`. A closure that never runs
            // (the runtime shutting down) leaves the deltas in the tree: a restart folds them.
            this.written_since_full.lock().expect("checkpoint items lock poisoned").extend(delta_items);
            this.release_written(&journal_records, &journals_written, written_lines);
            // A full checkpoint's copies go here, not under a lock or on a runtime worker:
            // freeing a hundred thousand of them takes milliseconds.
            drop((full_items, full_lines));
        })
        .await
        .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))?;
        tracing::trace!(group = self.group_id, write_count, applied_index, "checkpoint written");
        Ok(Some(applied_index))
    }

    /// What a written checkpoint lets memory drop: the records now in journals and the lines
    /// now in runs.
    fn release_written(
        &self,
        journal_records: &[JournalRecord],
        journals_written: &[(u32, Vec<JournalIndexEntry>)],
        written_lines: Vec<(AccountKey, u64)>,
    ) {
        self.queue_written(journal_records, journals_written);
        // In slices: apply takes this lock at the end of every entry.
        for slice in written_lines.chunks(RELEASED_ACCOUNTS_PER_LOCK) {
            let mut dropped = Vec::new();
            {
                let mut guard = self.unwritten.lock().expect("unwritten changes lock poisoned");
                let unwritten = &mut *guard;
                for (account, last_sequence) in slice {
                    if let Some(lines) = unwritten.lines.get_mut(account) {
                        let written = lines.partition_point(|line| line.sequence <= *last_sequence);
                        unwritten.lines_in_memory -= written;
                        dropped.extend(lines.drain(..written));
                        if lines.is_empty() {
                            unwritten.lines.remove(account);
                        }
                    }
                }
            }
            drop(dropped);
        }
    }

    /// Queues the records a checkpoint wrote to journals to leave memory (those not changed
    /// since leave; see [`WrittenRecords`]).
    fn queue_written(&self, records: &[JournalRecord], journals: &[(u32, Vec<JournalIndexEntry>)]) {
        if records.is_empty() {
            return;
        }
        let slots =
            journals.iter().flat_map(|(journal, index)| index.iter().map(move |entry| entry.slot(*journal)));
        let mut written = self.written_records.lock().expect("written records lock poisoned");
        written.records.extend(
            records
                .iter()
                .zip(slots)
                .map(|(record, slot)| (record.fingerprint, slot, Arc::clone(&record.bytes))),
        );
        written.compaction_due = true;
    }

    /// Lets up to `records_max` queued records leave memory and then compacts the expiry index
    /// by as many entries; returns whether anything is left to do. The caller holds the state's
    /// write lock.
    fn evict_queued(&self, state: &mut GroupState, records_max: usize) -> bool {
        let GroupData::Shard(ledger) = &mut state.data else { return false };
        let mut written = self.written_records.lock().expect("written records lock poisoned");
        if written.records.is_empty() && !written.compaction_due {
            return false;
        }
        let take = written.records.len().min(records_max);
        if take > 0 {
            ledger.evict_retained(written.records.drain(..take));
            metrics::gauge!("tally_retained_records_in_memory", "group" => self.group_id.to_string())
                .set(ledger.resident_retained_records() as f64);
            metrics::gauge!("tally_retained_keys", "group" => self.group_id.to_string())
                .set(ledger.retained_keys() as f64);
        }
        // The keys that left memory are listed by prefix from now on, once the queue is empty.
        if written.records.is_empty() && written.compaction_due && ledger.compact_retained_expiry(records_max)
        {
            written.compaction_due = false;
        }
        !written.records.is_empty() || written.compaction_due
    }

    /// Lets every queued record leave memory, in slices under the write lock: for a shard that
    /// applies nothing meanwhile.
    fn evict_queued_at_rest(&self) {
        // Every idle tick comes here: the write lock only when there is something to do.
        let idle = |written: &WrittenRecords| written.records.is_empty() && !written.compaction_due;
        if idle(&self.written_records.lock().expect("written records lock poisoned")) {
            return;
        }
        loop {
            let mut state = self.state.write().expect("group state lock poisoned");
            if !self.evict_queued(&mut state, EVICTED_PER_LOCK) {
                break;
            }
        }
    }

    /// Takes what the next checkpoint writes, consistent with the applied log id (what apply
    /// captured, taken whole under the state lock), then encodes it outside the lock.
    fn collect_checkpoint(&self) -> Option<CheckpointWrites> {
        let cut = self.take_changes()?;
        let CheckpointCut {
            full,
            applied,
            membership,
            captured,
            records,
            since_full,
            expired_journals,
            lines_unjournaled,
            lines_since_full,
            delta_keys,
            meta,
        } = cut;
        let applied_index = applied.map_or(0, |log_id| log_id.index);
        let items: Vec<(ItemKey, Option<StateItem>)> = captured.into_iter().collect();
        let mut retry = CheckpointRetry {
            delta_items: Vec::new(),
            delta_lines: Vec::new(),
            full_items: Vec::new(),
            full_lines: Vec::new(),
            delta_keys: Vec::new(),
            expired_journals: expired_journals.clone(),
            meta_changed: meta.is_some(),
        };
        let mut writes =
            TreeWrites::with_capacity(if full { items.len() + since_full.len() } else { 0 } + 16);
        let mut written_lines = Vec::new();
        let mut new_chunk_keys = Vec::new();
        if full {
            // Every item changed since the last full checkpoint, at its latest value.
            let mut since_full = since_full;
            since_full.extend(items);
            let mut items: Vec<_> = since_full.into_iter().collect();
            items.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            for (key, item) in &items {
                writes.push((keys::item_key(key), item.as_ref().map(encode)));
            }
            // Every line in memory, as runs per account (apply order keeps each account's
            // lines in sequence order). Grouped in a hash map and the accounts sorted once: a
            // B-tree compared member ids for every line (5 % of a follower's CPU).
            let mut by_account: FastMap<&AccountKey, Vec<&StatementLine>> = FastMap::default();
            for (account, line) in lines_since_full.iter().chain(&lines_unjournaled) {
                by_account.entry(account).or_default().push(line);
            }
            let mut by_account: Vec<_> = by_account.into_iter().collect();
            by_account.sort_unstable_by_key(|(account, _)| *account);
            written_lines.reserve(by_account.len());
            for (account, lines) in by_account {
                for (first, value) in encode_in_chunks(&lines) {
                    writes.push((keys::statement_key(account, lines[first].sequence), Some(value)));
                }
                if let Some(last) = lines.last() {
                    written_lines.push((account.clone(), last.sequence));
                }
            }
            writes.extend(delta_keys.iter().map(|key| (key.clone(), None)));
            retry.delta_keys = delta_keys;
            retry.full_items = items;
            retry.full_lines = lines_since_full;
            retry.full_lines.extend(lines_unjournaled);
        } else {
            new_chunk_keys = push_chunks(&mut writes, &items, |chunk| keys::delta_key(applied_index, chunk));
            new_chunk_keys.extend(push_chunks(&mut writes, &lines_unjournaled, |chunk| {
                keys::line_journal_key(applied_index, chunk)
            }));
            retry.delta_items = items;
            retry.delta_lines = lines_unjournaled;
        }
        let journals = encode_journals(applied_index, &records);
        let mut journals_written = Vec::with_capacity(journals.len());
        {
            let mut unwritten = self.unwritten.lock().expect("unwritten changes lock poisoned");
            // Noted before the write: a key whose write fails is deleted by a later full
            // checkpoint all the same, which deletes nothing that is not there.
            unwritten.delta_keys.extend(new_chunk_keys);
            for encoded in journals {
                unwritten.journals.insert((encoded.expires_at_ms(), encoded.journal_key.clone()));
                let number = self.register_journal(&encoded);
                journals_written.push((number, push_journal(&mut writes, encoded)));
            }
        }
        let journals_deleted: Vec<Vec<u8>> = expired_journals.into_iter().map(|(_, key)| key).collect();
        for key in &journals_deleted {
            writes.push((keys::journal_index_key(key), None));
            writes.push((key.clone(), None));
        }
        if let Some(meta) = meta {
            writes.push((keys::META_STATE_KEY.to_vec(), Some(encode(meta.as_ref()))));
        }
        writes.push((keys::APPLIED_KEY.to_vec(), Some(encode(&applied))));
        writes.push((keys::STATE_FORMAT_KEY.to_vec(), Some(encode(&keys::STATE_FORMAT))));
        writes.push((keys::MEMBERSHIP_KEY.to_vec(), Some(encode(&membership))));
        metrics::counter!("tally_checkpoints_total", "kind" => if full { "full" } else { "delta" })
            .increment(1);
        Some(CheckpointWrites {
            writes,
            written_lines,
            applied_index,
            retry,
            journal_records: records,
            journals_written,
            journals_deleted,
        })
    }

    /// Numbers a journal for the slots of its records (0 when nothing reads journals back).
    fn register_journal(&self, journal: &EncodedJournal) -> u32 {
        self.journal_source.as_ref().map_or(0, |source| source.register(journal.journal_key.clone()))
    }

    /// What a checkpoint writes, taken under the state lock (swaps, no copies); `None` when
    /// nothing was applied since the last checkpoint.
    fn take_changes(&self) -> Option<CheckpointCut> {
        let state = self.read();
        let mut unwritten = self.unwritten.lock().expect("unwritten changes lock poisoned");
        if state.applied == unwritten.checkpointed && unwritten.checkpointed.is_some() {
            return None;
        }
        let full = unwritten.full_due
            || unwritten.deltas_since_full + 1 >= FULL_CHECKPOINT_EVERY
            || unwritten.lines_in_memory >= LINES_IN_MEMORY_MAX;
        let mut cut = CheckpointCut {
            full,
            applied: state.applied,
            membership: state.membership.clone(),
            captured: std::mem::take(&mut unwritten.captured),
            records: std::mem::take(&mut unwritten.records),
            since_full: FastMap::default(),
            expired_journals: Vec::new(),
            lines_unjournaled: std::mem::take(&mut unwritten.lines_unjournaled),
            lines_since_full: Vec::new(),
            delta_keys: Vec::new(),
            meta: None,
        };
        match &state.data {
            GroupData::Shard(ledger) => {
                // A journal goes once every record in it has expired by log time.
                while let Some((expiry_ms, _)) = unwritten.journals.first() {
                    if *expiry_ms > ledger.log_time_ms() {
                        break;
                    }
                    let entry = unwritten.journals.pop_first().expect("checked above");
                    cut.expired_journals.push(entry);
                }
            }
            GroupData::Meta(meta) => {
                if std::mem::take(&mut unwritten.meta_changed) {
                    cut.meta = Some(meta.clone());
                }
            }
        }
        if full {
            cut.since_full =
                std::mem::take(&mut *self.written_since_full.lock().expect("checkpoint items lock poisoned"));
            cut.lines_since_full = std::mem::take(&mut unwritten.lines_since_full);
            cut.delta_keys = std::mem::take(&mut unwritten.delta_keys);
            unwritten.deltas_since_full = 0;
            unwritten.full_due = false;
        } else {
            unwritten.deltas_since_full += 1;
        }
        unwritten.checkpointed = state.applied;
        Some(cut)
    }
}

/// Pushes `values` as chunked puts under `key_of(chunk)` and returns the keys.
fn push_chunks<T: Serialize>(
    writes: &mut TreeWrites,
    values: &[T],
    key_of: impl Fn(u32) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    encode_in_chunks(values)
        .into_iter()
        .enumerate()
        .map(|(chunk, (_, value))| {
            let key = key_of(chunk as u32);
            writes.push((key.clone(), Some(value)));
            key
        })
        .collect()
}

/// What a checkpoint writes, taken out of memory (see [`GroupShared::take_changes`]).
struct CheckpointCut {
    /// A full checkpoint (items under their own keys, lines as runs, deltas deleted) or a delta.
    full: bool,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// What apply changed since the last checkpoint, at its value at the cut.
    captured: FastMap<ItemKey, Option<StateItem>>,
    /// The retained records apply stored since the last checkpoint, in apply order.
    records: Vec<JournalRecord>,
    /// A full checkpoint's items written by deltas since the last full one.
    since_full: FastMap<ItemKey, Option<StateItem>>,
    /// Journals whose every record has expired.
    expired_journals: Vec<JournalEntry>,
    /// Lines in no line journal yet (a delta's line journal; part of a full one's runs).
    lines_unjournaled: Vec<(AccountKey, Arc<StatementLine>)>,
    /// A full checkpoint's other lines in memory (in line journals).
    lines_since_full: Vec<(AccountKey, Arc<StatementLine>)>,
    /// A full checkpoint's deltas and line journals to delete.
    delta_keys: Vec<Vec<u8>>,
    /// The meta state, when it changed.
    meta: Option<Arc<MetaState>>,
}

/// `values` encoded as framed `Vec`s of consecutive values, each at most
/// [`keys::VALUE_BYTES_MAX`] bytes (a value larger than that alone goes in a chunk of its own);
/// with the position of each chunk's first value.
///
/// One pass: each value is encoded once, straight into its chunk (sizing every value and then
/// encoding each slice walked the values three times, 5 % of the node's CPU under SubmitBatch).
fn encode_in_chunks<T: Serialize>(values: &[T]) -> Vec<(usize, Vec<u8>)> {
    // A slice encodes as the `Vec` it is decoded as: a u64 length, then the values.
    const LENGTH_BYTES: usize = 8;
    let new_payload = || {
        let mut payload = Vec::with_capacity(keys::VALUE_BYTES_MAX);
        payload.extend_from_slice(&[0; LENGTH_BYTES]);
        payload
    };
    let finish = |mut payload: Vec<u8>, count: usize| {
        payload[..LENGTH_BYTES].copy_from_slice(&(count as u64).to_le_bytes());
        encode_framed(&payload)
    };
    let mut chunks = Vec::new();
    let mut first = 0;
    let mut payload = new_payload();
    for (position, value) in values.iter().enumerate() {
        let value_start = payload.len();
        bincode::serialize_into(&mut payload, value).expect("encoding a value into memory cannot fail");
        if position > first && FRAME_HEADER_BYTES + payload.len() > keys::VALUE_BYTES_MAX {
            let mut next = new_payload();
            next.extend_from_slice(&payload[value_start..]);
            payload.truncate(value_start);
            chunks.push((first, finish(std::mem::replace(&mut payload, next), position - first)));
            first = position;
        }
    }
    if first < values.len() {
        chunks.push((first, finish(payload, values.len() - first)));
    }
    chunks
}

/// Adds a journal and its index to a tree batch; returns the index.
fn push_journal(writes: &mut TreeWrites, journal: EncodedJournal) -> Vec<JournalIndexEntry> {
    writes.push((keys::journal_index_key(&journal.journal_key), Some(journal.index_value())));
    writes.push((journal.journal_key, Some(journal.journal_value)));
    journal.index
}

/// What a snapshot holds: the whole domain state at `last_log_id`, including the idempotency
/// table (without it a retry after a snapshot install would apply twice) and every statement
/// line written up to the cut.
#[derive(Serialize, Deserialize)]
enum SnapshotPayload {
    Shard { items: Vec<StateItem>, statement_lines: Vec<(AccountKey, StatementLine)> },
    Meta(MetaState),
}

/// The current snapshot's head in the tree: its meta. A snapshot keeps no data on disk (the
/// checkpointed state is the data, encoded when a follower needs it); `chunk_count` is 0 for
/// every head written now and counts the chunks that heads written by earlier versions kept
/// under [`keys::snapshot_chunk_key`], which the next build deletes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    chunk_count: u32,
}

/// The tree writes that make `meta` the current snapshot's head, deleting the
/// `old_chunk_count` data chunks an earlier version kept.
fn snapshot_writes(meta: &SnapshotMeta, old_chunk_count: u32) -> TreeWrites {
    let mut writes: TreeWrites =
        (0..old_chunk_count).map(|chunk| (keys::snapshot_chunk_key(chunk), None)).collect();
    let stored = StoredSnapshot { meta: meta.clone(), chunk_count: 0 };
    writes.push((keys::SNAPSHOT_KEY.to_vec(), Some(encode(&stored))));
    writes
}

/// The head of the current snapshot stored in `tree` (its meta and chunk count), if any.
fn read_stored_snapshot(tree: &StateTree) -> Result<Option<StoredSnapshot>, StoreError> {
    let Some(head) = tree.get(keys::SNAPSHOT_KEY)? else { return Ok(None) };
    Ok(Some(decode_value(&head, "snapshot")?))
}

/// How many chunks the current snapshot in `tree` has.
fn stored_snapshot_chunks(tree: &StateTree) -> Result<u32, StoreError> {
    Ok(read_stored_snapshot(tree)?.map_or(0, |stored| stored.chunk_count))
}

pub struct GroupStateMachine {
    shared: Arc<GroupShared>,
    /// The node's store and the group log's purge floor, when the log is purged only behind
    /// durable state (see `with_purge_floor`).
    durability: Option<(NodeStore, PurgeFloor)>,
    changes: ChangeSet,
    /// Set by `open`, cleared by the first `get_current_snapshot` and by anything that builds,
    /// receives or installs a snapshot. openraft 0.9 reads the current snapshot once when the
    /// group starts (`StorageHelper::get_initial_state`, before any other snapshot call) and
    /// keeps only its meta; encoding the data there would read a whole shard (hundreds of MB
    /// for millions of retained keys) into memory to throw it away. That first read answers
    /// the meta with empty data; every later one (a snapshot sent to a follower) encodes the
    /// state.
    startup_snapshot_read_pending: bool,
}

fn read_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&error).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&error).into()
}

impl GroupStateMachine {
    /// Loads the group's state from its tree (empty state for a new group).
    pub fn open(group_id: GroupId, tree: StateTree) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let mut items = Vec::new();
        let mut meta_state = MetaState::default();
        let mut applied = None;
        let mut membership = StoredMembership::default();
        let mut current_snapshot = None;
        // Later journals and deltas hold later versions: each kind is read in log index order.
        let mut deltas: Vec<Vec<(ItemKey, Option<StateItem>)>> = Vec::new();
        let mut unwritten = Unwritten::default();
        let mut written_since_full = FastMap::default();
        let mut state_format = None;
        // Journals, statement runs and snapshot chunks are not read: records are read back when
        // their keys return, lines when they are asked for.
        let holds_shard_state = [keys::ITEM_PREFIX, keys::DELTA_PREFIX, keys::JOURNAL_PREFIX]
            .into_iter()
            .any(|prefix| tree.iter_prefix(&[prefix]).next().is_some());
        // The journal indexes (one entry per retained key, millions of them) are read last, one
        // at a time into the ledger, not collected first.
        let loaded_prefixes = [keys::ITEM_PREFIX, keys::DELTA_PREFIX, keys::LINE_JOURNAL_PREFIX, b'm'];
        for row in loaded_prefixes.into_iter().flat_map(|prefix| tree.iter_prefix(&[prefix])) {
            let (key, value) = row?;
            if key == keys::STATE_FORMAT_KEY {
                state_format = Some(decode_value::<u32>(&value, "state format")?);
                continue;
            }
            match key.first() {
                Some(&keys::ITEM_PREFIX) => items.push(decode_value::<StateItem>(&value, "state item")?),
                Some(&keys::DELTA_PREFIX) => {
                    deltas.push(decode_value(&value, "checkpoint delta")?);
                    unwritten.delta_keys.push(key);
                }
                Some(&keys::LINE_JOURNAL_PREFIX) => {
                    let lines: Vec<(AccountKey, StatementLine)> = decode_value(&value, "line journal")?;
                    unwritten.add_lines(lines.into_iter(), true);
                    unwritten.delta_keys.push(key);
                }
                _ if key == keys::APPLIED_KEY => applied = decode_value(&value, "applied log id")?,
                _ if key == keys::MEMBERSHIP_KEY => membership = decode_value(&value, "membership")?,
                _ if key == keys::META_STATE_KEY => meta_state = decode_value(&value, "meta state")?,
                _ if key == keys::SNAPSHOT_KEY => {
                    current_snapshot = decode_value::<StoredSnapshot>(&value, "snapshot")?.meta.last_log_id;
                }
                _ => {}
            }
        }
        if holds_shard_state && state_format != Some(keys::STATE_FORMAT) {
            return Err(StoreError::Corrupt {
                what: format!(
                    "group {group_id}'s state is in format {}, this release reads format {} only: \
                     the data folder was written by another release of Tally",
                    state_format.map_or_else(|| "1".to_string(), |format| format.to_string()),
                    keys::STATE_FORMAT
                ),
            });
        }
        // The deltas since the last full checkpoint, oldest first, over the items it wrote.
        if !deltas.is_empty() {
            let mut by_key: BTreeMap<ItemKey, StateItem> =
                items.into_iter().map(|item| (item.key(), item)).collect();
            for (key, item) in deltas.into_iter().flatten() {
                written_since_full.insert(key.clone(), item.clone());
                match item {
                    Some(item) => by_key.insert(key, item),
                    None => by_key.remove(&key),
                };
            }
            items = by_key.into_values().collect();
        }
        // Lines read back from line journals are in the tree already. The next checkpoint
        // folds the loaded deltas (however many restarts left them) into a full one.
        unwritten.full_due = !unwritten.delta_keys.is_empty();
        // A running replica deleted every record whose expiry is at or before its clock; skip
        // them here too, so digests agree at the same applied index.
        let clock_ms = items
            .iter()
            .find_map(|item| match item {
                StateItem::Clock { log_time_ms } => Some(*log_time_ms),
                _ => None,
            })
            .unwrap_or(0);
        let mut journal_source = None;
        let data = if group_id == META_GROUP_ID {
            GroupData::Meta(Arc::new(meta_state))
        } else {
            let source = Arc::new(JournalSource::new(tree.clone()));
            let mut ledger = Ledger::from_items(items);
            let items_loaded_ms = started.elapsed().as_millis();
            ledger.set_record_source(source.clone());
            for row in tree.iter_prefix(&[keys::JOURNAL_INDEX_PREFIX]) {
                let (key, value) = row?;
                let journal_key = keys::journal_of_index(&key);
                let index: Vec<JournalIndexEntry> = decode_value(&value, "journal index")?;
                let expires_at_ms = index.iter().map(|entry| entry.expires_at_ms).max().unwrap_or(0);
                let journal = source.register(journal_key.clone());
                unwritten.journals.insert((expires_at_ms, journal_key));
                ledger.load_stored_retained(
                    index
                        .into_iter()
                        .filter(|entry| entry.expires_at_ms > clock_ms)
                        .map(|entry| (entry.fingerprint, entry.expires_at_ms, entry.slot(journal))),
                );
            }
            ledger.finish_loading_retained();
            tracing::info!(
                group = group_id,
                accounts_and_items_ms = items_loaded_ms,
                retained_keys = ledger.retained_keys(),
                loaded_ms = started.elapsed().as_millis(),
                "loaded the shard's checkpoint"
            );
            journal_source = Some(source);
            GroupData::Shard(ledger)
        };
        let state = GroupState { data, applied, membership };
        unwritten.checkpointed = applied;
        let shared = GroupShared {
            group_id,
            tree,
            state: RwLock::new(state),
            snapshots_built: AtomicU64::new(0),
            current_snapshot: Mutex::new(current_snapshot),
            unwritten: Mutex::new(unwritten),
            written_since_full: Mutex::new(written_since_full),
            checkpoint_lock: Arc::new(tokio::sync::Mutex::new(())),
            written_records: Mutex::default(),
            journal_source,
            retained_keys: AtomicUsize::new(0),
            next_hold_expiry_ms: AtomicU64::new(u64::MAX),
        };
        shared.publish_summary(&shared.read());
        Ok(Self {
            shared: Arc::new(shared),
            durability: None,
            changes: ChangeSet::default(),
            startup_snapshot_read_pending: true,
        })
    }

    /// Makes a snapshot install durable before it returns and raises `floor` to it, so that
    /// openraft's purge of the log behind the snapshot is done at once (the group's checkpoint
    /// task raises the floor for applied entries).
    pub fn with_purge_floor(mut self, store: NodeStore, floor: PurgeFloor) -> Self {
        self.durability = Some((store, floor));
        self
    }

    pub fn shared(&self) -> Arc<GroupShared> {
        self.shared.clone()
    }

    /// Applies entries to memory and notes what changed for the next checkpoint (under the
    /// state lock, so that a checkpoint sees changes and applied id together). `apply` hands it
    /// at most about [`APPLY_COMMANDS_PER_LOCK`] commands at a time.
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Vec<GroupResponse> {
        let shared = self.shared.clone();
        let mut state = shared.state.write().expect("group state lock poisoned");
        shared.evict_queued(&mut state, EVICTED_PER_APPLY);
        let mut responses = Vec::with_capacity(entries.len());
        let mut meta_changed = false;
        self.changes.clear();
        for entry in entries {
            state.applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => GroupResponse::Empty,
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    GroupResponse::Empty
                }
                EntryPayload::Normal(request) => match (&mut state.data, request) {
                    (GroupData::Shard(ledger), GroupRequest::Shard(batch)) => {
                        let outcomes = ledger.apply_batch(entry.log_id.index, &batch, &mut self.changes);
                        metrics::histogram!("tally_apply_batch_commands").record(batch.commands.len() as f64);
                        GroupResponse::Shard(outcomes)
                    }
                    (GroupData::Meta(meta), GroupRequest::Meta { log_time_ms, command }) => {
                        meta_changed = true;
                        GroupResponse::Meta(Arc::make_mut(meta).apply(log_time_ms, &command))
                    }
                    (_, request) => GroupResponse::WrongGroup(format!(
                        "group {} cannot apply {request}",
                        self.shared.group_id
                    )),
                },
            };
            responses.push(response);
        }
        shared.publish_summary(&state);
        // The values as this apply leaves them, for the next checkpoint (see `Unwritten`). Not
        // sorted and deduplicated first: sorting compared member ids (3.5 % of the node's CPU
        // under SubmitBatch) to spare the copy of a few items changed twice in one apply; the
        // map below keeps one copy of each, and a record named twice goes in its journal
        // twice, both copies the record as this apply leaves it.
        let mut captured = Vec::with_capacity(self.changes.dirty.len());
        let mut records = Vec::new();
        if let GroupData::Shard(ledger) = &state.data {
            for key in self.changes.dirty.drain(..) {
                match key {
                    ItemKey::Retained(fingerprint) => {
                        if let Some((expires_at_ms, bytes)) = ledger.resident_retained(&fingerprint) {
                            records.push(JournalRecord {
                                fingerprint,
                                expires_at_ms,
                                bytes: Arc::clone(bytes),
                            });
                        }
                    }
                    key => {
                        let item = ledger.item(&key);
                        captured.push((key, item));
                    }
                }
            }
        }
        let mut unwritten = shared.unwritten.lock().expect("unwritten changes lock poisoned");
        unwritten.captured.extend(captured);
        unwritten.records.append(&mut records);
        unwritten.meta_changed |= meta_changed;
        unwritten.add_lines(self.changes.statement_lines.drain(..), false);
        responses
    }
}

/// Encodes a value for the tree. Encoding into memory fails only on a serde bug, so a panic
/// (which stops the group) is the right answer.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_value(value).expect("encoding state into memory cannot fail")
}

/// Commands applied under one hold of the state lock, at most (in whole entries, each of up to
/// 4,096). A replica catching up is given hundreds of entries in one `apply`; holding the lock,
/// and the runtime worker, through all of them stalls the node's reads (which wait for the
/// lock on other workers) and with them its Raft traffic, for seconds in a debug build.
const APPLY_COMMANDS_PER_LOCK: usize = 4_096;

fn entry_commands(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(GroupRequest::Shard(batch)) => batch.commands.len().max(1),
        _ => 1,
    }
}

impl RaftStateMachine<TallyRaft> for GroupStateMachine {
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.shared.read();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // openraft's state-machine worker sent the previous apply's results to the Raft core
        // just before this call, which put the core in this runtime worker's LIFO slot, where
        // the other worker cannot steal it: without this yield the core (and with it the
        // previous entry's answers and the proposer's next entry) waited behind this whole
        // apply, and entries were applied two by two with the state machine idle between
        // pairs (a quarter of the time under SubmitBatch).
        tokio::task::yield_now().await;
        let started = std::time::Instant::now();
        let mut entries = entries.into_iter().peekable();
        let mut responses = Vec::new();
        let mut chunk = Vec::new();
        let mut chunk_commands = 0;
        while let Some(entry) = entries.next() {
            chunk_commands += entry_commands(&entry);
            chunk.push(entry);
            if chunk_commands >= APPLY_COMMANDS_PER_LOCK || entries.peek().is_none() {
                responses.extend(self.apply_entries(std::mem::take(&mut chunk)));
                chunk_commands = 0;
                if entries.peek().is_some() {
                    tokio::task::yield_now().await;
                }
            }
        }
        metrics::histogram!("tally_apply_duration_seconds").record(started.elapsed().as_secs_f64());
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> GroupSnapshotBuilder {
        self.startup_snapshot_read_pending = false;
        // This runs inside the state-machine worker, so no apply is running: applied id and
        // membership are a consistent cut. The build copies nothing else (see
        // `GroupSnapshotBuilder`).
        let state = self.shared.read();
        GroupSnapshotBuilder {
            shared: self.shared.clone(),
            applied: state.applied,
            membership: state.membership.clone(),
            durability: self.durability.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        self.startup_snapshot_read_pending = false;
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.startup_snapshot_read_pending = false;
        let data = snapshot.into_inner();
        let new_state = install_writes(self.shared.group_id, meta, &data).map_err(read_error)?;
        let Installed { mut state, content, journals, journal_records, journal_indexes } = new_state;
        // No checkpoint may write the tree from the state being replaced.
        let _serial = self.shared.checkpoint_lock.lock().await;
        {
            let mut current_snapshot = self.shared.current_snapshot.lock().expect("snapshot lock poisoned");
            self.shared.tree.replace_all(content).map_err(write_error)?;
            *current_snapshot = meta.last_log_id;
            // Queued records name slots of journals the install replaces.
            *self.shared.written_records.lock().expect("written records lock poisoned") =
                WrittenRecords::default();
            // The installed records are in the new journals: they leave memory at once.
            if let (Some(source), GroupData::Shard(ledger)) = (&self.shared.journal_source, &mut state.data) {
                source.forget_all();
                ledger.set_record_source(source.clone());
                let slots = journal_indexes.into_iter().flat_map(|(journal_key, index)| {
                    let journal = source.register(journal_key);
                    index.into_iter().map(move |entry| entry.slot(journal))
                });
                ledger.evict_retained(
                    journal_records
                        .iter()
                        .zip(slots)
                        .map(|(record, slot)| (record.fingerprint, slot, &record.bytes[..])),
                );
            }
            let mut current = self.shared.state.write().expect("group state lock poisoned");
            *current = state;
            self.shared.publish_summary(&current);
            drop(current);
            *self.shared.unwritten.lock().expect("unwritten changes lock poisoned") =
                Unwritten { journals, checkpointed: meta.last_log_id, ..Unwritten::default() };
            self.shared.written_since_full.lock().expect("checkpoint items lock poisoned").clear();
        }
        // The install is the group's new checkpoint: durable before openraft purges the log.
        if let Some((store, floor)) = &self.durability {
            store.flush().await.map_err(write_error)?;
            floor.raise_to(meta.last_log_id.map_or(0, |log_id| log_id.index));
        }
        tracing::info!(group = self.shared.group_id, snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = {
            // Builds and installs write the head under this lock.
            let _current = self.shared.current_snapshot.lock().expect("snapshot lock poisoned");
            read_stored_snapshot(&self.shared.tree).map_err(read_error)?
        };
        let Some(stored) = stored else { return Ok(None) };
        if std::mem::take(&mut self.startup_snapshot_read_pending) {
            // openraft's start-up read: the meta is all it uses (see the field's comment).
            return Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(Vec::new())) }));
        }
        // A follower needs a snapshot: the state as it is now, which covers at least the
        // stored head's cut once the log is re-applied after a restart, so it is never older
        // than the log its leader purged. This
        // runs inside the state-machine worker, so no apply changes the state while it is
        // encoded; checkpoints running meanwhile move lines and records from memory to the tree
        // without ever leaving one in neither, and delete only journals whose records have all
        // expired, which the state no longer names.
        let state = self.shared.read();
        let meta = if state.applied == stored.meta.last_log_id {
            stored.meta
        } else {
            SnapshotMeta {
                last_log_id: state.applied,
                last_membership: state.membership.clone(),
                snapshot_id: self.shared.next_snapshot_id(state.applied),
            }
        };
        let data = encode_snapshot(&self.shared, &state).map_err(read_error)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// A decoded snapshot: the new in-memory state, the tree's new content, and its journals (by
/// expiry; and with their records and indexes, in the same order).
struct Installed {
    state: GroupState,
    content: TreeContent,
    journals: BTreeSet<JournalEntry>,
    journal_records: Vec<JournalRecord>,
    journal_indexes: Vec<(Vec<u8>, Vec<JournalIndexEntry>)>,
}

/// Decodes a received snapshot into the new in-memory state and the tree's new content.
fn install_writes(
    group_id: GroupId,
    meta: &SnapshotMeta,
    snapshot_bytes: &[u8],
) -> Result<Installed, StoreError> {
    let (&version, payload_bytes) =
        snapshot_bytes.split_first().ok_or_else(|| StoreError::Corrupt { what: "empty snapshot".into() })?;
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(StoreError::Corrupt {
            what: format!("snapshot format version {version} is not supported"),
        });
    }
    let payload: SnapshotPayload = bincode::deserialize(payload_bytes)
        .map_err(|error| StoreError::Corrupt { what: format!("snapshot payload: {error}") })?;
    let mut writes = Vec::new();
    let mut journals = BTreeSet::new();
    let mut journal_records = Vec::new();
    let mut journal_indexes = Vec::new();
    let data = match payload {
        SnapshotPayload::Shard { items, statement_lines } => {
            assert_ne!(group_id, META_GROUP_ID, "a shard snapshot was sent to the meta group");
            for item in &items {
                match item {
                    StateItem::Retained(record) => journal_records.push(JournalRecord {
                        fingerprint: record.fingerprint(),
                        expires_at_ms: record.expires_at_ms(),
                        bytes: bincode::serialize(record).expect("a retained record always encodes").into(),
                    }),
                    item => writes.push((keys::item_key(&item.key()), encode(item))),
                }
            }
            // The snapshot's records become journals under its last log index.
            let journal_index = meta.last_log_id.map(|log_id| log_id.index).unwrap_or(0);
            for journal in encode_journals(journal_index, &journal_records) {
                journals.insert((journal.expires_at_ms(), journal.journal_key.clone()));
                writes.push((keys::journal_index_key(&journal.journal_key), journal.index_value()));
                writes.push((journal.journal_key.clone(), journal.journal_value));
                journal_indexes.push((journal.journal_key, journal.index));
            }
            // Lines come grouped by account in sequence order: one run (or a few) each.
            for account_lines in statement_lines.chunk_by(|(left, _), (right, _)| left == right) {
                let account = &account_lines[0].0;
                let lines: Vec<StatementLine> = account_lines.iter().map(|(_, line)| line.clone()).collect();
                for (first, value) in encode_in_chunks(&lines) {
                    writes.push((keys::statement_key(account, lines[first].sequence), value));
                }
            }
            GroupData::Shard(Ledger::from_items(items))
        }
        SnapshotPayload::Meta(meta_state) => {
            assert_eq!(group_id, META_GROUP_ID, "a meta snapshot was sent to a shard group");
            writes.push((keys::META_STATE_KEY.to_vec(), encode(&meta_state)));
            GroupData::Meta(Arc::new(meta_state))
        }
    };
    let state = GroupState { data, applied: meta.last_log_id, membership: meta.last_membership.clone() };
    writes.push((keys::APPLIED_KEY.to_vec(), encode(&state.applied)));
    writes.push((keys::STATE_FORMAT_KEY.to_vec(), encode(&keys::STATE_FORMAT)));
    writes.push((keys::MEMBERSHIP_KEY.to_vec(), encode(&state.membership)));
    // The installed snapshot becomes the current one; its state is what this node sends on.
    for (key, value) in snapshot_writes(meta, 0) {
        writes.extend(value.map(|value| (key, value)));
    }
    Ok(Installed { state, content: writes, journals, journal_records, journal_indexes })
}

/// Builds a snapshot as openraft asks for one (every so many entries or log bytes): the cut's
/// meta becomes the current snapshot's head and a checkpoint covering it is made durable, so
/// that openraft may purge the log behind it. openraft keeps only the meta of what a build
/// returns; the data is encoded from the state when a follower needs it
/// (`get_current_snapshot`), so a build copies, reads and encodes nothing of the state.
pub struct GroupSnapshotBuilder {
    shared: Arc<GroupShared>,
    applied: Option<LogId>,
    membership: StoredMembership,
    durability: Option<(NodeStore, PurgeFloor)>,
}

/// What a snapshot of `state` carries, encoded: the format version, then the payload. Reads
/// every statement line and retained record of a shard.
fn encode_snapshot(shared: &GroupShared, state: &GroupState) -> Result<Vec<u8>, StoreError> {
    let payload = match &state.data {
        GroupData::Meta(meta) => SnapshotPayload::Meta(meta.as_ref().clone()),
        GroupData::Shard(ledger) => {
            let items = ledger.items();
            let mut statement_lines = Vec::new();
            for item in &items {
                let StateItem::Account(account @ AccountKey::Member { .. }, record) = item else {
                    continue;
                };
                if record.statement_lines == 0 {
                    continue;
                }
                let limit = usize::try_from(record.statement_lines).unwrap_or(usize::MAX);
                let lines = shared.statement_lines(account, Some(0), false, limit)?;
                assert_eq!(
                    lines.len() as u64,
                    record.statement_lines,
                    "statement lines missing for {account:?}"
                );
                statement_lines.extend(lines.into_iter().map(|line| (account.clone(), line)));
            }
            SnapshotPayload::Shard { items, statement_lines }
        }
    };
    let mut data = vec![SNAPSHOT_FORMAT_VERSION];
    bincode::serialize_into(&mut data, &payload).map_err(|error| StoreError::Encode(error.to_string()))?;
    Ok(data)
}

impl GroupShared {
    /// A snapshot id no other snapshot of this group in this process has: two snapshots of the
    /// same last log id must be told apart.
    fn next_snapshot_id(&self, applied: Option<LogId>) -> String {
        let counter = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let index = applied.map(|log_id| log_id.index).unwrap_or(0);
        format!("g{}-{}-{}", self.group_id, index, counter)
    }
}

impl RaftSnapshotBuilder<TallyRaft> for GroupSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.shared.next_snapshot_id(self.applied),
        };
        {
            let mut current_snapshot = self.shared.current_snapshot.lock().expect("snapshot lock poisoned");
            // An install may have finished while this build ran; its snapshot is newer and
            // must stay the current one (the log behind it may already be purged). openraft
            // drops this older build's result itself.
            if *current_snapshot <= meta.last_log_id {
                let old_chunks = stored_snapshot_chunks(&self.shared.tree).map_err(read_error)?;
                self.shared.tree.write_batch(snapshot_writes(&meta, old_chunks)).map_err(write_error)?;
                *current_snapshot = meta.last_log_id;
            }
        }
        // openraft purges the log behind a snapshot as soon as it is built, and a restart finds
        // the snapshot's meta in the tree (openraft refuses to start with a log purged past
        // its snapshot): a checkpoint, which holds at least the cut, is written after the meta
        // and both are made durable by one flush before the build returns.
        if let Some((store, floor)) = &self.durability {
            let checkpointed = self.shared.checkpoint().await.map_err(write_error)?;
            store.flush().await.map_err(write_error)?;
            if let Some(applied_index) = checkpointed {
                floor.raise_to(applied_index);
            }
        }
        metrics::counter!("tally_snapshots_built_total").increment(1);
        tracing::info!(group = self.shared.group_id, snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each chunk is exactly the framed encoding of its slice, chunks stay within the limit
    /// unless one value alone exceeds it, and together they hold every value in order.
    #[test]
    fn chunks_are_the_encodings_of_consecutive_slices_within_the_limit() {
        let values: Vec<String> = (0..3_000)
            .map(|at| "x".repeat(if at == 1_234 { keys::VALUE_BYTES_MAX * 2 } else { at % 97 }))
            .collect();
        let chunks = encode_in_chunks(&values);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        let mut next = 0;
        for (position, (first, bytes)) in chunks.iter().enumerate() {
            assert_eq!(*first, next);
            let end = chunks.get(position + 1).map_or(values.len(), |(first, _)| *first);
            assert_eq!(bytes, &encode(&&values[*first..end]));
            assert!(bytes.len() <= keys::VALUE_BYTES_MAX || end - first == 1, "chunk {position}");
            let decoded: Vec<String> = decode_value(bytes, "chunk").unwrap();
            assert_eq!(decoded, values[*first..end]);
            next = end;
        }
        assert_eq!(next, values.len());
        assert!(encode_in_chunks::<String>(&[]).is_empty());
    }
}
