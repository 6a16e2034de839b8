//! openraft's `RaftStateMachine` over Tally's domain state, persisted in the group's sled tree.
//!
//! The working set lives in memory ([`GroupState`]); each `apply` call mutates it and then
//! writes exactly the items it changed, the new statement lines, the applied log id and the
//! membership in ONE atomic sled batch. There is no flush here: the Raft log (in the same sled
//! Db) is flushed before an entry commits, and sled recovers a prefix of its writes, so after
//! a crash the tree reflects some prefix of applies, `applied` says which, and openraft
//! re-applies the rest from the log. A restart therefore never applies an entry twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, StorageIOError};
use serde::{Deserialize, Serialize};
use tally_ledger::meta::MetaState;
use tally_ledger::state::{AccountKey, ChangeSet, ItemKey, StateItem, StatementLine};
use tally_ledger::{CurrencyCode, Ledger, MemberId};
use tally_store::{decode_value, encode_value, StateTree, StoreError};

use crate::keys;
use crate::types::{
    Entry, GroupId, GroupRequest, GroupResponse, LogId, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TallyRaft, META_GROUP_ID,
};

/// Puts (`Some`) and deletes (`None`) for one atomic tree batch.
type TreeWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;
/// The whole content of a tree, for a snapshot install.
type TreeContent = Vec<(Vec<u8>, Vec<u8>)>;

/// Format of snapshot payloads; bump on any change of what a snapshot holds.
const SNAPSHOT_FORMAT_VERSION: u8 = 1;

/// The domain state of one group.
#[derive(Clone, Debug)]
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
}

impl GroupShared {
    pub fn read(&self) -> RwLockReadGuard<'_, GroupState> {
        self.state.read().expect("group state lock poisoned: a panic happened during apply")
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
        let prefix = keys::statement_prefix(account);
        let start = start_sequence.map(|sequence| keys::statement_key(account, sequence));
        let rows = self.tree.scan_prefix(&prefix, start.as_deref(), newest_first, limit)?;
        rows.iter().map(|(_, value)| decode_value(value, "statement line")).collect()
    }
}

/// What a snapshot holds: the whole domain state at `last_log_id`, including the idempotency
/// table (without it a retry after a snapshot install would apply twice) and every statement
/// line written up to the cut.
#[derive(Serialize, Deserialize)]
enum SnapshotPayload {
    Shard { items: Vec<StateItem>, statement_lines: Vec<(AccountKey, StatementLine)> },
    Meta(MetaState),
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

pub struct GroupStateMachine {
    shared: Arc<GroupShared>,
    changes: ChangeSet,
    /// Stored journals by the log time at which their last record expires, then their key.
    journals: BTreeSet<(u64, u64)>,
}

/// Idempotency and earn records go to the apply call's journal (see `keys`).
fn is_journaled(key: &ItemKey) -> bool {
    matches!(key, ItemKey::Idempotency(..) | ItemKey::Earn(..))
}

/// The log time at which a journaled record is deleted (the ledger forgets it at that time).
fn journal_expiry_ms(item: &StateItem) -> u64 {
    match item {
        StateItem::Idempotency(_, _, record) => record.expires_at_ms,
        StateItem::Earn(_, _, record) => record.expires_at_ms,
        other => panic!("{:?} is not journaled", other.key()),
    }
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
        let mut items = Vec::new();
        let mut meta_state = MetaState::default();
        let mut applied = None;
        let mut membership = StoredMembership::default();
        let mut current_snapshot = None;
        // Later journals hold later versions: the tree is walked in log index order.
        let mut journaled: BTreeMap<ItemKey, StateItem> = BTreeMap::new();
        let mut journals = BTreeSet::new();
        for row in tree.iter_all() {
            let (key, value) = row?;
            match key.first() {
                Some(&keys::ITEM_PREFIX) => items.push(decode_value::<StateItem>(&value, "state item")?),
                Some(&keys::JOURNAL_PREFIX) => {
                    let journal: Vec<StateItem> = decode_value(&value, "journal")?;
                    let index = journal_index(&key)?;
                    let expiry_ms = journal.iter().map(journal_expiry_ms).max().unwrap_or(0);
                    journals.insert((expiry_ms, index));
                    journaled.extend(journal.into_iter().map(|item| (item.key(), item)));
                }
                Some(&keys::STATEMENT_PREFIX) => {}
                _ if key == keys::APPLIED_KEY => applied = decode_value(&value, "applied log id")?,
                _ if key == keys::MEMBERSHIP_KEY => membership = decode_value(&value, "membership")?,
                _ if key == keys::META_STATE_KEY => meta_state = decode_value(&value, "meta state")?,
                _ if key == keys::SNAPSHOT_KEY => {
                    current_snapshot = decode_value::<StoredSnapshot>(&value, "snapshot")?.meta.last_log_id;
                }
                _ => {}
            }
        }
        // A running replica deleted every record whose expiry is at or before its clock; skip
        // them here too, so digests agree at the same applied index.
        let clock_ms = items
            .iter()
            .find_map(|item| match item {
                StateItem::Clock { log_time_ms } => Some(*log_time_ms),
                _ => None,
            })
            .unwrap_or(0);
        items.extend(journaled.into_values().filter(|item| journal_expiry_ms(item) > clock_ms));
        let data = if group_id == META_GROUP_ID {
            GroupData::Meta(Arc::new(meta_state))
        } else {
            GroupData::Shard(Ledger::from_items(items))
        };
        let state = GroupState { data, applied, membership };
        let shared = GroupShared {
            group_id,
            tree,
            state: RwLock::new(state),
            snapshots_built: AtomicU64::new(0),
            current_snapshot: Mutex::new(current_snapshot),
        };
        Ok(Self { shared: Arc::new(shared), changes: ChangeSet::default(), journals })
    }

    pub fn shared(&self) -> Arc<GroupShared> {
        self.shared.clone()
    }

    /// Applies entries to memory and persists them. The state lock is held until the tree
    /// write is done, so a reader never sees a statement line count whose lines are not in
    /// the tree yet.
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<Vec<GroupResponse>, StoreError> {
        let shared = self.shared.clone();
        let mut state = shared.state.write().expect("group state lock poisoned");
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
        let writes = self.persisted_writes(&state, meta_changed);
        shared.tree.write_batch(writes)?;
        Ok(responses)
    }

    fn persisted_writes(&mut self, state: &GroupState, meta_changed: bool) -> TreeWrites {
        let mut writes =
            Vec::with_capacity(self.changes.dirty.len() + self.changes.statement_lines.len() + 3);
        match &state.data {
            GroupData::Shard(ledger) => {
                let mut journal = Vec::new();
                for key in &self.changes.dirty {
                    if is_journaled(key) {
                        // A deleted record needs no write: it expired, and so will its journal.
                        journal.extend(ledger.item(key));
                        continue;
                    }
                    let value = ledger.item(key).map(|item| encode(&item));
                    writes.push((keys::item_key(key), value));
                }
                let journal_index = state.applied.map(|log_id| log_id.index).unwrap_or(0);
                if let Some(expiry_ms) = journal.iter().map(journal_expiry_ms).max() {
                    writes.push((keys::journal_key(journal_index), Some(encode(&journal))));
                    self.journals.insert((expiry_ms, journal_index));
                }
                // A journal goes once every record in it has expired by log time.
                while let Some(&(expiry_ms, index)) = self.journals.first() {
                    if expiry_ms > ledger.log_time_ms() {
                        break;
                    }
                    self.journals.pop_first();
                    writes.push((keys::journal_key(index), None));
                }
                for (account, line) in &self.changes.statement_lines {
                    writes.push((keys::statement_key(account, line.sequence), Some(encode(line))));
                }
            }
            GroupData::Meta(meta) if meta_changed => {
                writes.push((keys::META_STATE_KEY.to_vec(), Some(encode(meta.as_ref()))));
            }
            GroupData::Meta(_) => {}
        }
        writes.push((keys::APPLIED_KEY.to_vec(), Some(encode(&state.applied))));
        writes.push((keys::MEMBERSHIP_KEY.to_vec(), Some(encode(&state.membership))));
        writes
    }
}

fn journal_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key[1..]
        .try_into()
        .map_err(|_| StoreError::Corrupt { what: format!("journal key of {} bytes", key.len()) })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes a value for the tree. Encoding into memory fails only on a serde bug, so a panic
/// (which stops the group) is the right answer.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_value(value).expect("encoding state into memory cannot fail")
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
        let started = std::time::Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let responses = self.apply_entries(entries).map_err(write_error)?;
        metrics::histogram!("tally_apply_duration_seconds").record(started.elapsed().as_secs_f64());
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> GroupSnapshotBuilder {
        // This runs inside the state-machine worker, so no apply is running: the clone is a
        // consistent cut of state, applied id and membership. Statement lines are not in
        // memory; the builder reads those up to each account's line count at the cut, and lines
        // are never rewritten, so later applies cannot tear the snapshot.
        let cut = self.shared.read().clone();
        GroupSnapshotBuilder { shared: self.shared.clone(), cut }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let new_state = install_writes(self.shared.group_id, meta, &data).map_err(read_error)?;
        let Installed { state, content: writes, journal } = new_state;
        let mut current_snapshot = self.shared.current_snapshot.lock().expect("snapshot lock poisoned");
        self.shared.tree.replace_all(writes).map_err(write_error)?;
        *current_snapshot = meta.last_log_id;
        *self.shared.state.write().expect("group state lock poisoned") = state;
        self.journals = journal.into_iter().collect();
        tracing::info!(group = self.shared.group_id, snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self.shared.tree.get(keys::SNAPSHOT_KEY).map_err(read_error)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = decode_value(&bytes, "snapshot").map_err(read_error)?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

/// A decoded snapshot: the new in-memory state, the tree's new content, and its one journal
/// (expiry of its last record, key).
struct Installed {
    state: GroupState,
    content: TreeContent,
    journal: Option<(u64, u64)>,
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
    let mut journal_entry = None;
    let data = match payload {
        SnapshotPayload::Shard { items, statement_lines } => {
            assert_ne!(group_id, META_GROUP_ID, "a shard snapshot was sent to the meta group");
            let mut journal = Vec::new();
            for item in &items {
                if is_journaled(&item.key()) {
                    journal.push(item.clone());
                } else {
                    writes.push((keys::item_key(&item.key()), encode(item)));
                }
            }
            // The snapshot's records become one journal under its last log index.
            let journal_index = meta.last_log_id.map(|log_id| log_id.index).unwrap_or(0);
            if let Some(expiry_ms) = journal.iter().map(journal_expiry_ms).max() {
                writes.push((keys::journal_key(journal_index), encode(&journal)));
                journal_entry = Some((expiry_ms, journal_index));
            }
            for (account, line) in &statement_lines {
                writes.push((keys::statement_key(account, line.sequence), encode(line)));
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
    writes.push((keys::MEMBERSHIP_KEY.to_vec(), encode(&state.membership)));
    // The installed snapshot becomes the current one, so this node can send it on.
    let stored = StoredSnapshot { meta: meta.clone(), data: snapshot_bytes.to_vec() };
    writes.push((keys::SNAPSHOT_KEY.to_vec(), encode(&stored)));
    Ok(Installed { state, content: writes, journal: journal_entry })
}

pub struct GroupSnapshotBuilder {
    shared: Arc<GroupShared>,
    cut: GroupState,
}

impl GroupSnapshotBuilder {
    fn payload(&self) -> Result<SnapshotPayload, StoreError> {
        match &self.cut.data {
            GroupData::Meta(meta) => Ok(SnapshotPayload::Meta(meta.as_ref().clone())),
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
                    let lines = self.shared.statement_lines(account, Some(0), false, limit)?;
                    assert_eq!(
                        lines.len() as u64,
                        record.statement_lines,
                        "statement lines missing for {account:?}"
                    );
                    statement_lines.extend(lines.into_iter().map(|line| (account.clone(), line)));
                }
                Ok(SnapshotPayload::Shard { items, statement_lines })
            }
        }
    }
}

impl RaftSnapshotBuilder<TallyRaft> for GroupSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let payload = self.payload().map_err(read_error)?;
        let mut data = vec![SNAPSHOT_FORMAT_VERSION];
        bincode::serialize_into(&mut data, &payload)
            .map_err(|error| write_error(StoreError::Encode(error.to_string())))?;
        let counter = self.shared.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let index = self.cut.applied.map(|log_id| log_id.index).unwrap_or(0);
        let meta = SnapshotMeta {
            last_log_id: self.cut.applied,
            last_membership: self.cut.membership.clone(),
            snapshot_id: format!("g{}-{}-{}", self.shared.group_id, index, counter),
        };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let encoded = encode_value(&stored).map_err(write_error)?;
        {
            let mut current_snapshot = self.shared.current_snapshot.lock().expect("snapshot lock poisoned");
            // An install may have finished while this build ran; its snapshot is newer and
            // must stay the current one (the log behind it may already be purged). openraft
            // drops this older build's result itself.
            if *current_snapshot <= meta.last_log_id {
                self.shared
                    .tree
                    .write_batch(vec![(keys::SNAPSHOT_KEY.to_vec(), Some(encoded))])
                    .map_err(write_error)?;
                *current_snapshot = meta.last_log_id;
            }
        }
        metrics::counter!("tally_snapshots_built_total").increment(1);
        tracing::info!(
            group = self.shared.group_id,
            snapshot = %meta.snapshot_id,
            size_bytes = stored.data.len(),
            "built snapshot"
        );
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}
