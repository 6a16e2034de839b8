//! A single-node shard group whose Raft log is on a simulated disk that loses every write no
//! `fdatasync` covered ([`PowerCutFileSystem`]): after a power cut, the restarted group holds
//! every operation it acknowledged, exactly once.

mod common;

use std::time::Duration;

use common::*;
use tally_store::{NodeStore, PowerCutFileSystem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_power_cut_holds_every_acknowledged_operation() {
    let dir = tempfile::tempdir().unwrap();
    let file_system = PowerCutFileSystem::new();
    let store = NodeStore::open_on_power_cut(dir.path(), file_system.clone()).unwrap();
    let group = start_single(&store, &fast_tuning()).await;
    const ROUNDS: u64 = 6;
    for round in 0..ROUNDS {
        let commands = round_commands(round);
        assert_outcomes(&propose(&group, commands.clone()).await, &commands, false);
    }
    // The digest, not a copy of the ledger: a copy reads its stored records through the store,
    // and would keep the store open across the restart.
    let acknowledged_digest = ledger(&group.shared).digest();
    let acknowledged_index = fingerprint(&group.shared).0.expect("entries were applied").index;

    // The power goes now: the log keeps what its syncs covered and nothing more (the group's
    // shutdown and the store's close below sync again, but the frozen images ignore that).
    let power_cut = file_system.cut_power();
    group.raft.shutdown().await.expect("shutdown");
    drop(group);
    drop(store);
    power_cut.restore().expect("put the files back to their durable content");

    let store = reopen_store(dir.path()).await;
    let group = start_single(&store, &fast_tuning()).await;
    group
        .raft
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(acknowledged_index), "re-apply after the power cut")
        .await
        .expect("the restarted group re-applies its log");
    let restarted = ledger(&group.shared);
    assert_eq!(restarted.digest(), acknowledged_digest, "the same ledger as acknowledged");
    assert_ledger_after_rounds(&restarted, ROUNDS, "after the power cut");
    // Every key is still known: the same requests are answered as replays, applied once.
    for round in 0..ROUNDS {
        let commands = round_commands(round);
        assert_outcomes(&propose(&group, commands.clone()).await, &commands, true);
    }
    // (The digest moves with the log time each batch stamps; balances and lines do not.)
    assert_ledger_after_rounds(&ledger(&group.shared), ROUNDS, "replays changed nothing");
    group.raft.shutdown().await.expect("shutdown");
}
