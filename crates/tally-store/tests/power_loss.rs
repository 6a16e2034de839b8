//! Power loss and the purge floor, on the Raft log in raft-engine.
//!
//! - A simulated power cut ([`PowerCutFileSystem`]) keeps of every log file only what an
//!   `fdatasync` covered. A store reopened afterwards holds every append that was reported
//!   durable and the vote, while writes no sync covered are gone (so the simulation does cut).
//! - A purge openraft asks for waits until the group's purge floor (raised by durable
//!   state-machine checkpoints) has reached it: the log never loses an entry that a restart
//!   would have to re-apply.

mod common;

use common::{normal_entries, TestConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{RaftLogReader, Vote};
use tally_store::{NodeStore, PowerCutFileSystem, PurgeFloor};

fn indexes(entries: &[openraft::Entry<TestConfig>]) -> Vec<u64> {
    entries.iter().map(|entry| entry.log_id.index).collect()
}

#[tokio::test]
async fn a_power_cut_keeps_every_append_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let file_system = PowerCutFileSystem::new();
    let power_cut;
    {
        let node = NodeStore::open_on_power_cut(dir.path(), file_system.clone()).unwrap();
        let mut log = node.log_store::<TestConfig>(4).unwrap();
        log.save_vote(&Vote::new(5, 1)).await.unwrap();
        for index in 1..=40 {
            // Returns once the append's durability callback fired with Ok.
            log.blocking_append(normal_entries(index..=index)).await.unwrap();
        }
        // Written but never synced: a commit index and a purge record.
        log.save_committed(Some(log_id(1, 0, 40))).await.unwrap();
        log.purge(log_id(1, 0, 3)).await.unwrap();
        // Let the writer thread write them (without a sync), then the power goes.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        power_cut = file_system.cut_power();
    }
    let cut = power_cut.restore().unwrap();
    assert!(cut.bytes_lost > 0, "the unsynced writes were discarded: {cut:?}");

    let node = NodeStore::open(dir.path()).unwrap();
    let mut log = node.log_store::<TestConfig>(4).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(5, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 0, 40)), "every acknowledged append is there");
    assert_eq!(state.last_purged_log_id, None, "the unsynced purge is gone with the power");
    assert_eq!(log.read_committed().await.unwrap(), None, "so is the unsynced commit index");
    assert_eq!(indexes(&log.try_get_log_entries(1..=40).await.unwrap()), (1..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_purge_never_passes_the_purge_floor() {
    let dir = tempfile::tempdir().unwrap();
    let floor = PurgeFloor::new();
    {
        let node = NodeStore::open(dir.path()).unwrap();
        let mut log = node.log_store::<TestConfig>(2).unwrap().with_purge_floor(floor.clone());
        log.blocking_append(normal_entries(1..=20)).await.unwrap();

        // No durable checkpoint yet: the purge is remembered, nothing is removed.
        log.purge(log_id(1, 0, 10)).await.unwrap();
        assert_eq!(log.purged_index(), None);
        assert_eq!(indexes(&log.try_get_log_entries(1..=20).await.unwrap()), (1..=20).collect::<Vec<_>>());

        // A checkpoint below the purge: still nothing.
        floor.raise_to(5);
        log.blocking_append(normal_entries(21..=21)).await.unwrap();
        assert_eq!(log.purged_index(), None);

        // The floor passes it: the next write does the purge.
        floor.raise_to(12);
        log.blocking_append(normal_entries(22..=22)).await.unwrap();
        assert_eq!(log.purged_index(), Some(10));
        assert_eq!(indexes(&log.try_get_log_entries(1..=22).await.unwrap()), (11..=22).collect::<Vec<_>>());
        // A floor never goes down.
        floor.raise_to(3);
        assert_eq!(floor.index(), 12);
    }
    let node = NodeStore::open(dir.path()).unwrap();
    let mut log = node.log_store::<TestConfig>(2).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 0, 10)));
    assert_eq!(state.last_log_id, Some(log_id(1, 0, 22)));
}
