//! openraft's storage conformance suite against the real pair a Tally node runs: tally-store's
//! sled `LogStore<TallyRaft>` and tally-raft's `GroupStateMachine`, once for a shard group and
//! once for the meta group (their state machines hold different data and snapshot payloads).
//!
//! The suite builds its own tokio runtime per check, so it runs from a plain `#[test]` (inside
//! `#[tokio::test]` it would panic with a nested runtime).

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tally_raft::state_machine::GroupStateMachine;
use tally_raft::{shard_group_id, GroupId, TallyRaft, META_GROUP_ID};
use tally_store::{LogStore, NodeStore, StoreError};

fn storage_error(error: StoreError) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&error)).into()
}

/// Every build gets a fresh on-disk store in its own temp dir. The guard holds the `NodeStore`
/// (dropped, joining its flusher, before the directory is removed: fields drop in order).
struct GroupBuilder {
    group_id: GroupId,
}

impl StoreBuilder<TallyRaft, LogStore<TallyRaft>, GroupStateMachine, (NodeStore, tempfile::TempDir)>
    for GroupBuilder
{
    async fn build(
        &self,
    ) -> Result<((NodeStore, tempfile::TempDir), LogStore<TallyRaft>, GroupStateMachine), StorageError<u64>>
    {
        let dir = tempfile::tempdir().map_err(|error| StorageIOError::write(AnyError::new(&error)))?;
        let store = NodeStore::open(dir.path()).map_err(storage_error)?;
        let log_store = store.log_store::<TallyRaft>(self.group_id).map_err(storage_error)?;
        let tree = store.state_tree(self.group_id).map_err(storage_error)?;
        let state_machine = GroupStateMachine::open(self.group_id, tree).map_err(storage_error)?;
        Ok(((store, dir), log_store, state_machine))
    }
}

#[test]
fn openraft_storage_suite_on_a_shard_group() {
    Suite::test_all(GroupBuilder { group_id: shard_group_id(0) })
        .expect("openraft storage suite, shard group");
}

#[test]
fn openraft_storage_suite_on_the_meta_group() {
    Suite::test_all(GroupBuilder { group_id: META_GROUP_ID }).expect("openraft storage suite, meta group");
}
