//! A single-node shard group on disk, shut down and started again on the same folder.

mod common;

use std::time::Duration;

use common::*;
use openraft::RaftLogReader;
use tally_ledger::Command;
use tally_raft::{Group, TallyRaft};
use tally_store::NodeStore;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Shuts the group down and drops every handle on the store.
async fn stop(group: Group, store: NodeStore) {
    group.raft.shutdown().await.expect("shutdown");
    drop(group);
    store.flush().await.expect("final flush");
    drop(store);
}

/// Waits until the restarted group has applied at least up to `index`.
async fn wait_applied(group: &Group, index: u64) {
    group
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(index), "re-apply after restart")
        .await
        .unwrap_or_else(|error| panic!("the restarted group did not apply up to {index}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let group = start_single(&store, &fast_tuning()).await;
    let mut proposed: Vec<Vec<Command>> = Vec::new();
    for round in 0..4 {
        let commands = round_commands(round);
        assert_outcomes(&propose(&group, commands.clone()).await, &commands, false);
        proposed.push(commands);
    }
    let before = fingerprint(&group.shared);
    let before_ledger = ledger(&group.shared);
    let before_lines = all_statement_lines(&group.shared, &before_ledger);
    let last_log_index = group.raft.metrics().borrow().last_log_index.unwrap();
    let term = group.raft.metrics().borrow().current_term;
    assert_eq!(before.0.unwrap().index, last_log_index, "everything proposed is applied");
    // Snapshot and purge the whole log: the restart must rest on the snapshot and applied state.
    group.raft.trigger().snapshot().await.unwrap();
    let snapshot_id = before.0.unwrap();
    group.raft.wait(WAIT).snapshot(snapshot_id, "snapshot before the restart").await.unwrap();
    group.raft.trigger().purge_log(last_log_index).await.unwrap();
    group.raft.wait(WAIT).purged(Some(snapshot_id), "purge the whole log").await.unwrap();
    stop(group, store).await;

    let store = reopen_store(dir.path()).await;
    let group = start_single(&store, &fast_tuning()).await;
    // A single voter whose vote was committed takes up leadership again (openraft 0.9 may do so
    // in the same term without a blank entry): everything is applied, nothing lost or doubled.
    wait_applied(&group, last_log_index).await;
    let after = fingerprint(&group.shared);
    let restarted_term = group.raft.metrics().borrow().current_term;
    assert!(restarted_term >= term, "the term never goes back");
    let metrics = group.raft.metrics().borrow().clone();
    assert_eq!(metrics.snapshot, Some(snapshot_id), "the snapshot survived the restart");
    assert_eq!(metrics.purged, Some(snapshot_id), "and so did the purge");
    let current = group.raft.get_snapshot().await.unwrap().expect("the current snapshot");
    assert_eq!(current.meta.last_log_id, Some(snapshot_id));
    let restarted_last_log = group.raft.metrics().borrow().last_log_index.unwrap();
    if restarted_last_log == last_log_index {
        assert_eq!(after.0, before.0, "same applied log id after the restart");
    } else {
        assert!(after.0 >= before.0, "applied {:?} is behind {:?}", after.0, before.0);
    }
    assert_eq!(after.1, before.1, "same digest after the restart");
    assert_eq!(after.2.membership(), before.2.membership(), "same membership");
    let after_ledger = ledger(&group.shared);
    assert_eq!(after_ledger, before_ledger);
    assert_ledger_after_rounds(&after_ledger, 4, "after the restart");
    assert_eq!(all_statement_lines(&group.shared, &after_ledger), before_lines);

    // Retries of acknowledged commands are replays; new rounds apply at later indexes.
    let replays = propose(&group, proposed[3].clone()).await;
    assert_outcomes(&replays, &proposed[3], true);
    assert!(replays.iter().all(|outcome| outcome.log_index <= last_log_index), "answered from before");
    let commands = round_commands(4);
    let outcomes = propose(&group, commands.clone()).await;
    assert_outcomes(&outcomes, &commands, false);
    assert!(
        outcomes.iter().all(|outcome| outcome.log_index > last_log_index),
        "the log continues: {outcomes:?}"
    );
    let appended = group.raft.metrics().borrow().last_log_index.unwrap();
    assert!(appended > last_log_index, "log indexes continue after {last_log_index}, now {appended}");
    assert_ledger_after_rounds(&ledger(&group.shared), 5, "after a round proposed after the restart");
    stop(group, store).await;

    // A second restart sees the round proposed after the first.
    let store = reopen_store(dir.path()).await;
    let group = start_single(&store, &fast_tuning()).await;
    wait_applied(&group, appended).await;
    assert_ledger_after_rounds(&ledger(&group.shared), 5, "after the second restart");
    stop(group, store).await;
}

/// The tree holds the last checkpoint, so after a crash it may reflect an older prefix of
/// applies than the log. Simulated honestly through public APIs: copy the whole tree
/// at a quiet point A, go on to B, stop, and put the copy back (exactly the content the tree had
/// at A, `applied` included). On restart openraft must re-apply A+1..B from the log, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_behind_the_log_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let group = start_single(&store, &fast_tuning()).await;
    for round in 0..2 {
        let commands = round_commands(round);
        assert_outcomes(&propose(&group, commands.clone()).await, &commands, false);
    }
    // Point A: no proposal is in flight, everything appended is applied.
    let at_a = fingerprint(&group.shared);
    assert_eq!(at_a.0.unwrap().index, group.raft.metrics().borrow().last_log_index.unwrap());
    // The tree holds what checkpoints wrote; one now makes it hold A.
    group.shared.checkpoint().await.unwrap();
    let tree_at_a: Vec<(Vec<u8>, Vec<u8>)> =
        store.state_tree(SHARD).unwrap().iter_all().collect::<Result<_, _>>().unwrap();

    let mut later = Vec::new();
    for round in 2..5 {
        let commands = round_commands(round);
        assert_outcomes(&propose(&group, commands.clone()).await, &commands, false);
        later.push(commands);
    }
    let at_b = fingerprint(&group.shared);
    let ledger_b = ledger(&group.shared);
    let lines_b = all_statement_lines(&group.shared, &ledger_b);
    let b_index = at_b.0.unwrap().index;
    stop(group, store).await;

    {
        let store = reopen_store(dir.path()).await;
        store.state_tree(SHARD).unwrap().replace_all(tree_at_a).unwrap();
        store.flush().await.unwrap();
        // The log still holds every entry of A+1..B.
        let mut log = store.log_store::<TallyRaft>(SHARD).unwrap();
        let entries = log.try_get_log_entries(at_a.0.unwrap().index + 1..=b_index).await.unwrap();
        assert_eq!(entries.len() as u64, b_index - at_a.0.unwrap().index);
    }

    let store = reopen_store(dir.path()).await;
    let reopened =
        tally_raft::state_machine::GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap())
            .unwrap()
            .shared();
    assert_eq!(fingerprint(&reopened), at_a, "the tree was rolled back to A");
    drop(reopened);

    let group = start_single(&store, &fast_tuning()).await;
    wait_applied(&group, b_index).await;
    let restarted_ledger = ledger(&group.shared);
    assert_eq!(restarted_ledger.digest(), at_b.1, "re-applying A+1..B reaches B's digest");
    assert_eq!(restarted_ledger, ledger_b);
    assert_ledger_after_rounds(&restarted_ledger, 5, "after catching up from the log");
    assert_eq!(all_statement_lines(&group.shared, &restarted_ledger), lines_b, "statement lines once");
    // The re-applied commands still answer as replays of their first outcome.
    for commands in later {
        let outcomes = propose(&group, commands.clone()).await;
        assert_outcomes(&outcomes, &commands, true);
        assert!(outcomes.iter().all(|outcome| outcome.log_index <= b_index));
    }
    stop(group, store).await;
}
