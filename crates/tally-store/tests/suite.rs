//! openraft's storage conformance suite against `LogStore` plus a minimal test-only state machine
//! on `StateTree`.
//!
//! The suite builds its own tokio runtime per check, so it runs from a plain `#[test]` (inside
//! `#[tokio::test]` it would panic with a nested runtime).

mod common;

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::TestConfig;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use tally_store::{decode_value, encode_value, LogStore, NodeStore, StateTree, StoreError};

const LAST_APPLIED: &[u8] = b"meta/last_applied";
const LAST_MEMBERSHIP: &[u8] = b"meta/last_membership";
const CURRENT_SNAPSHOT: &[u8] = b"snapshot/current";

type Membership = StoredMembership<u64, BasicNode>;
type Meta = SnapshotMeta<u64, BasicNode>;

fn sm_read(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn sm_write(e: StoreError) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

/// A state machine that only tracks what the suite checks: last applied log id and membership,
/// stored as framed values in the group's `StateTree`. The snapshot is the encoded pair, and the
/// current snapshot (meta + data) is kept in the tree too.
struct TestSm {
    tree: StateTree,
    snapshot_seq: Arc<AtomicU64>,
}

impl TestSm {
    fn applied(&self) -> Result<(Option<LogId<u64>>, Membership), StoreError> {
        let last_applied = match self.tree.get(LAST_APPLIED)? {
            Some(v) => decode_value(&v, "last_applied")?,
            None => None,
        };
        let membership = match self.tree.get(LAST_MEMBERSHIP)? {
            Some(v) => decode_value(&v, "last_membership")?,
            None => Membership::default(),
        };
        Ok((last_applied, membership))
    }
}

/// Holds the cut taken in `get_snapshot_builder` (the SM worker runs no apply meanwhile).
struct TestSnapshotBuilder {
    tree: StateTree,
    cut: Result<(Option<LogId<u64>>, Membership), String>,
    seq: u64,
}

impl RaftSnapshotBuilder<TestConfig> for TestSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<u64>> {
        let (last_log_id, last_membership) =
            self.cut.clone().map_err(|e| StorageIOError::read_state_machine(AnyError::error(e)))?;
        let data = encode_value(&(last_log_id, last_membership.clone())).map_err(sm_write)?;
        let index = last_log_id.map(|id| id.index).unwrap_or(0);
        let meta = Meta { last_log_id, last_membership, snapshot_id: format!("{index}-{}", self.seq) };
        let stored = encode_value(&(meta.clone(), data.clone())).map_err(sm_write)?;
        self.tree.write_batch(vec![(CURRENT_SNAPSHOT.to_vec(), Some(stored))]).map_err(sm_write)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TestConfig> for TestSm {
    type SnapshotBuilder = TestSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        self.applied().map_err(sm_read)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<String>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TestConfig>> + Send,
        I::IntoIter: Send,
    {
        let (mut last_applied, mut membership) = self.applied().map_err(sm_read)?;
        let mut responses = Vec::new();
        for entry in entries {
            last_applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Blank => String::new(),
                EntryPayload::Normal(d) => d,
                EntryPayload::Membership(m) => {
                    membership = Membership::new(Some(entry.log_id), m);
                    String::new()
                }
            });
        }
        // One batch per apply call: last_applied and membership change together.
        let changes = vec![
            (LAST_APPLIED.to_vec(), Some(encode_value(&last_applied).map_err(sm_write)?)),
            (LAST_MEMBERSHIP.to_vec(), Some(encode_value(&membership).map_err(sm_write)?)),
        ];
        self.tree.write_batch(changes).map_err(sm_write)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> TestSnapshotBuilder {
        TestSnapshotBuilder {
            tree: self.tree.clone(),
            cut: self.applied().map_err(|e| e.to_string()),
            seq: self.snapshot_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let (last_applied, membership): (Option<LogId<u64>>, Membership) =
            decode_value(&data, "snapshot data").map_err(sm_read)?;
        let entries = vec![
            (LAST_APPLIED.to_vec(), encode_value(&last_applied).map_err(sm_write)?),
            (LAST_MEMBERSHIP.to_vec(), encode_value(&membership).map_err(sm_write)?),
            (CURRENT_SNAPSHOT.to_vec(), encode_value(&(meta.clone(), data)).map_err(sm_write)?),
        ];
        self.tree.replace_all(entries).map_err(sm_write)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TestConfig>>, StorageError<u64>> {
        let Some(stored) = self.tree.get(CURRENT_SNAPSHOT).map_err(sm_read)? else {
            return Ok(None);
        };
        let (meta, data): (Meta, Vec<u8>) = decode_value(&stored, "current snapshot").map_err(sm_read)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Every build gets a fresh on-disk store in its own temp dir. The guard drops the `NodeStore`
/// (joining its flusher) before removing the directory.
struct Builder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, TestSm, (NodeStore, tempfile::TempDir)> for Builder {
    async fn build(
        &self,
    ) -> Result<((NodeStore, tempfile::TempDir), LogStore<TestConfig>, TestSm), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let node = NodeStore::open(dir.path()).map_err(sm_write)?;
        let log = node.log_store::<TestConfig>(3).map_err(sm_write)?;
        let sm =
            TestSm { tree: node.state_tree(3).map_err(sm_write)?, snapshot_seq: Arc::new(AtomicU64::new(0)) };
        Ok(((node, dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

/// The same suite on sled's temporary mode, the way other crates' tests will build stores.
struct TemporaryBuilder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, TestSm, NodeStore> for TemporaryBuilder {
    async fn build(&self) -> Result<(NodeStore, LogStore<TestConfig>, TestSm), StorageError<u64>> {
        let node = NodeStore::temporary().map_err(sm_write)?;
        let log = node.log_store::<TestConfig>(0).map_err(sm_write)?;
        let sm =
            TestSm { tree: node.state_tree(0).map_err(sm_write)?, snapshot_seq: Arc::new(AtomicU64::new(0)) };
        Ok((node, log, sm))
    }
}

#[test]
fn openraft_storage_suite_on_temporary_db() {
    Suite::test_all(TemporaryBuilder).expect("openraft storage suite (temporary db)");
}
