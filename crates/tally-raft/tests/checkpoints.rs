//! Checkpoints of a shard's in-memory state into its sled tree: most are deltas (a few chunked
//! values whatever the number of accounts touched), and every so often a full one folds them
//! into one key per item and one run per account's lines. After every checkpoint of either
//! kind, a replica loading the tree holds exactly the state and the statement lines in memory.

mod common;

use std::sync::Arc;

use common::*;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use tally_ledger::state::{AccountKey, StateItem};
use tally_ledger::{BatchHeader, Command, MemberId, Operation, ShardBatch};
use tally_raft::state_machine::{GroupStateMachine, FULL_CHECKPOINT_EVERY};
use tally_raft::{keys, Entry, GroupRequest, GroupResponse, GroupShared};
use tally_store::{NodeStore, StateTree};

/// Members beyond the workload's, each earning in every round: many accounts per checkpoint.
const WIDE_MEMBERS: usize = 60;

fn wide_member(i: usize) -> MemberId {
    MemberId::parse(format!("w{i}")).unwrap()
}

fn round_entry(round: u64) -> Entry {
    let mut commands: Vec<Command> = round_commands(round);
    for i in 0..WIDE_MEMBERS {
        commands.push(command(
            &format!("r{round}-wide-earn-{i}"),
            Operation::Earn { member_id: wide_member(i), currency: currency_of(i), amount_points: 3 },
        ));
    }
    let header = BatchHeader {
        log_time_ms: 1_700_000_000_000 + round * 1_000,
        idempotency_retention_ms: tally_ledger::limits::IDEMPOTENCY_RETENTION_MS_DEFAULT,
    };
    Entry {
        log_id: openraft::testing::log_id(1, 1, round + 1),
        payload: EntryPayload::Normal(GroupRequest::Shard(ShardBatch { header, commands })),
    }
}

/// Keys of the tree by their first byte.
/// A temporary store and the shard's state machine over it, with the tree (to inject write
/// failures into) and the state machine's shared half.
fn fresh_shard_with_tree() -> (NodeStore, StateTree, GroupStateMachine, Arc<GroupShared>) {
    let store = NodeStore::temporary().unwrap();
    let tree = store.state_tree(SHARD).unwrap();
    let state_machine = GroupStateMachine::open(SHARD, tree.clone()).unwrap();
    let shared = state_machine.shared();
    (store, tree, state_machine, shared)
}

fn count_keys(store: &NodeStore, prefix: u8) -> usize {
    store
        .state_tree(SHARD)
        .unwrap()
        .iter_all()
        .filter(|row| row.as_ref().unwrap().0.first() == Some(&prefix))
        .count()
}

fn member_accounts(shared: &GroupShared) -> Vec<AccountKey> {
    ledger(shared)
        .items()
        .into_iter()
        .filter_map(|item| match item {
            StateItem::Account(account @ AccountKey::Member { .. }, _) => Some(account),
            _ => None,
        })
        .collect()
}

/// The loaded replica's state and every member account's whole statement equal memory's.
fn assert_reload_equal(store: &NodeStore, shared: &Arc<GroupShared>, context: &str) {
    let loaded = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap().shared();
    assert_eq!(fingerprint(&loaded), fingerprint(shared), "{context}: state");
    assert_eq!(retained_records(&loaded).0, 0, "{context}: loading reads indexes, not records");
    let accounts = member_accounts(shared);
    assert_eq!(accounts.len(), MEMBERS + WIDE_MEMBERS);
    for account in accounts {
        let in_memory = shared.statement_lines(&account, Some(0), false, 10_000).unwrap();
        let reloaded = loaded.statement_lines(&account, Some(0), false, 10_000).unwrap();
        assert!(!in_memory.is_empty(), "{context}: {account:?} has lines");
        assert_eq!(reloaded, in_memory, "{context}: statement of {account:?}");
    }
}

#[tokio::test]
async fn deltas_and_full_checkpoints_reload_to_the_state_in_memory() {
    let store = NodeStore::temporary().unwrap();
    let mut state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    let shared = state_machine.shared();
    let rounds = u64::from(FULL_CHECKPOINT_EVERY) * 2 + 3;
    let (mut deltas, mut fulls) = (0, 0);
    for round in 0..rounds {
        state_machine.apply([round_entry(round)]).await.unwrap();
        let keys_before = store.state_tree(SHARD).unwrap().iter_all().count();
        shared.checkpoint().await.unwrap().expect("something was applied");
        let keys_after = store.state_tree(SHARD).unwrap().iter_all().count();
        let context = format!("after round {round}");
        if count_keys(&store, keys::DELTA_PREFIX) == 0 && count_keys(&store, keys::LINE_JOURNAL_PREFIX) == 0 {
            // A full checkpoint: every item under its own key, every line in a run.
            fulls += 1;
            assert!(count_keys(&store, keys::ITEM_PREFIX) >= MEMBERS + WIDE_MEMBERS, "{context}");
            assert!(count_keys(&store, keys::STATEMENT_PREFIX) >= MEMBERS + WIDE_MEMBERS, "{context}");
        } else {
            // A delta: the 66 accounts (and holds) it changed cost a few keys, not one each
            // (values of at most 6 KiB: a few journals of records with their indexes, a few
            // chunks of items and of lines).
            deltas += 1;
            assert!(
                keys_after - keys_before <= 20,
                "{context}: a delta grew the tree from {keys_before} to {keys_after} keys"
            );
        }
        // Every record the checkpoint wrote leaves memory at the next apply, or, with nothing
        // applied since (as here), at the next checkpoint; the digests read them back.
        assert!(shared.checkpoint().await.unwrap().is_none(), "{context}: nothing applied since");
        let (resident, retained) = retained_records(&shared);
        assert!(retained > 0, "{context}");
        assert_eq!(resident, 0, "{context}: records left in memory");
        assert_reload_equal(&store, &shared, &context);
    }
    assert!(
        fulls >= 2 && deltas >= 2 * (u64::from(FULL_CHECKPOINT_EVERY) - 1),
        "{fulls} full, {deltas} deltas"
    );
}

/// A replica restarted between deltas carries on: its next checkpoints (deltas, then a full one
/// that deletes the deltas it loaded) still reload to the state in memory.
/// Under load the records a checkpoint wrote leave memory at the start of the next apply,
/// under the state lock apply holds anyway, and not before: the checkpoint's thread would
/// otherwise take that lock for them while apply waits.
#[tokio::test]
async fn written_records_leave_memory_at_the_next_apply() {
    let store = NodeStore::temporary().unwrap();
    let mut state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    let shared = state_machine.shared();
    state_machine.apply([round_entry(0)]).await.unwrap();
    let (resident_first, retained_first) = retained_records(&shared);
    assert!(resident_first > 0 && resident_first == retained_first, "round 0 keeps its records in memory");
    shared.checkpoint().await.unwrap().expect("something was applied");
    assert_eq!(retained_records(&shared), (resident_first, retained_first), "written, not released yet");
    state_machine.apply([round_entry(1)]).await.unwrap();
    let (resident, retained) = retained_records(&shared);
    assert!(retained > retained_first, "round 1 added keys");
    assert_eq!(resident, retained - retained_first, "round 0's records left memory, round 1's stay");
    shared.checkpoint().await.unwrap().expect("something was applied");
    assert_reload_equal(&store, &shared, "after the apply that released round 0");
}

#[tokio::test]
async fn a_restart_between_deltas_carries_on_from_them() {
    let store = NodeStore::temporary().unwrap();
    let mut state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    let mut round = 0;
    for _ in 0..3 {
        state_machine.apply([round_entry(round)]).await.unwrap();
        state_machine.shared().checkpoint().await.unwrap();
        round += 1;
    }
    assert!(count_keys(&store, keys::DELTA_PREFIX) > 0, "the checkpoints so far are deltas");
    for _ in 0..FULL_CHECKPOINT_EVERY + 1 {
        drop(state_machine);
        state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
        state_machine.apply([round_entry(round)]).await.unwrap();
        let shared = state_machine.shared();
        shared.checkpoint().await.unwrap();
        assert_reload_equal(&store, &shared, &format!("after restart and round {round}"));
        round += 1;
    }
    assert_eq!(count_keys(&store, keys::DELTA_PREFIX), 0, "a full checkpoint came and deleted the deltas");
    let ledger = ledger(&state_machine.shared());
    assert_ledger_after_rounds(&ledger, round, "after the restarts");
}

/// The items' encoding changed with the state format (3: journals with indexes);
/// a tree of another format is refused with a message naming both, never misread.
#[tokio::test]
async fn a_tree_of_another_state_format_is_refused_when_opened() {
    let store = NodeStore::temporary().unwrap();
    let mut state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    let shared = state_machine.shared();
    state_machine.apply([round_entry(0)]).await.unwrap();
    shared.make_next_checkpoint_full();
    shared.checkpoint().await.unwrap().expect("something was applied");
    assert!(GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).is_ok(), "its own format");
    let tree = store.state_tree(SHARD).unwrap();
    let older = tally_store::encode_value(&2u32).unwrap();
    tree.write_batch(vec![(keys::STATE_FORMAT_KEY.to_vec(), Some(older))]).unwrap();
    let refused = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).err().expect("format 2");
    assert!(refused.to_string().contains("format 2, this release reads format 4"), "{refused}");
    tree.write_batch(vec![(keys::STATE_FORMAT_KEY.to_vec(), None)]).unwrap();
    let refused = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).err().expect("no format");
    assert!(refused.to_string().contains("format 1"), "a tree without the key predates it: {refused}");
}

/// A key retried after its record left memory, and again after a restart that loaded only the
/// journals' indexes, gets its first answer back (read from its journal), and nothing applies
/// twice.
#[tokio::test]
async fn retried_keys_are_answered_from_their_journals_after_a_restart() {
    let store = NodeStore::temporary().unwrap();
    let mut state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    let first = state_machine.apply([round_entry(0)]).await.unwrap().remove(0);
    let GroupResponse::Shard(first) = first else { panic!("a shard answers {first:?}") };
    state_machine.shared().checkpoint().await.unwrap().expect("something was applied");
    assert!(state_machine.shared().checkpoint().await.unwrap().is_none(), "at rest: the records leave");
    for attempt in 0..2u64 {
        let shared = state_machine.shared();
        assert_eq!(retained_records(&shared).0, 0, "attempt {attempt}");
        let state_before = fingerprint(&shared).1;
        let mut retry = round_entry(0);
        retry.log_id = openraft::testing::log_id(1, 1, 10 + attempt);
        let replies = state_machine.apply([retry]).await.unwrap().remove(0);
        let GroupResponse::Shard(replies) = replies else { panic!("a shard answers {replies:?}") };
        assert_eq!(replies.len(), first.len());
        for (reply, original) in replies.iter().zip(&first) {
            assert!(reply.replay, "attempt {attempt}: {reply:?}");
            assert_eq!(reply.result, original.result, "attempt {attempt}");
            assert_eq!(reply.log_index, original.log_index, "attempt {attempt}: the first answer");
        }
        // Same log time, every command a replay: not a point and not a record changed.
        assert_eq!(fingerprint(&shared).1, state_before, "attempt {attempt}");
        assert_eq!(retained_records(&shared).0, 0, "a replay rewrites no record");
        ledger(&shared).check_invariants().unwrap();
        // Restart: the next attempt reads its records through the loaded indexes.
        drop(state_machine);
        state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
        assert_eq!(fingerprint(&state_machine.shared()).1, state_before);
    }
}

/// sled writes a page bigger than a quarter of its segment to a `blobs/` file, and a page is a
/// whole leaf of up to ~20 values: checkpoints keep their values small enough that no leaf of
/// journals, deltas, runs or items ever goes there (a blob file costs a create, a write and an
/// fsync for every rewrite of its page).
#[tokio::test]
async fn checkpoints_never_make_sled_write_blob_files() {
    let folder = tempfile::tempdir().unwrap();
    let store = NodeStore::open(folder.path()).unwrap();
    let mut state_machine = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    let shared = state_machine.shared();
    // Enough journals, deltas and full checkpoints to fill and split many leaves of each prefix.
    for round in 0..u64::from(FULL_CHECKPOINT_EVERY) * 3 {
        state_machine.apply([round_entry(round * 2), round_entry(round * 2 + 1)]).await.unwrap();
        shared.checkpoint().await.unwrap().expect("something was applied");
    }
    assert!(count_keys(&store, keys::JOURNAL_PREFIX) >= 48, "the checkpoints wrote journals");
    let blobs: Vec<_> = match std::fs::read_dir(folder.path().join("blobs")) {
        Ok(entries) => entries.map(|entry| entry.unwrap().file_name()).collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("reading sled's blobs folder: {error}"),
    };
    assert!(blobs.is_empty(), "sled wrote {} blob files: {blobs:?}", blobs.len());
}

/// A checkpoint whose write fails changes nothing in the tree and loses nothing: the next one
/// (a full one) writes what the failed one held, whether that was a delta or a full one, and
/// the tree then reloads to the state in memory.
#[tokio::test]
async fn a_failed_checkpoint_write_is_made_good_by_the_next_one() {
    let (store, tree, mut state_machine, shared) = fresh_shard_with_tree();
    let mut round = 0;
    for _ in 0..3 {
        state_machine.apply([round_entry(round)]).await.unwrap();
        shared.checkpoint().await.unwrap().expect("something was applied");
        round += 1;
    }
    assert!(count_keys(&store, keys::DELTA_PREFIX) > 0, "deltas follow the first checkpoint");
    let keys_before = tree.iter_all().count();

    // A delta fails.
    state_machine.apply([round_entry(round)]).await.unwrap();
    round += 1;
    tree.fail_next_write_batches(1);
    assert!(shared.checkpoint().await.is_err(), "the injected failure is reported");
    assert_eq!(tree.iter_all().count(), keys_before, "a failed write changes nothing");

    // The full one that follows fails too, with more applied meanwhile.
    state_machine.apply([round_entry(round)]).await.unwrap();
    round += 1;
    tree.fail_next_write_batches(1);
    assert!(shared.checkpoint().await.is_err(), "the injected failure is reported");
    assert_eq!(tree.iter_all().count(), keys_before, "a failed write changes nothing");

    state_machine.apply([round_entry(round)]).await.unwrap();
    round += 1;
    shared.checkpoint().await.unwrap().expect("something was applied");
    assert_eq!(count_keys(&store, keys::DELTA_PREFIX), 0, "a full checkpoint folded the deltas");
    assert_eq!(count_keys(&store, keys::LINE_JOURNAL_PREFIX), 0, "a full checkpoint wrote runs");
    assert_reload_equal(&store, &shared, "after two failed checkpoints");

    // Deltas go on from it.
    state_machine.apply([round_entry(round)]).await.unwrap();
    shared.checkpoint().await.unwrap().expect("something was applied");
    assert!(count_keys(&store, keys::DELTA_PREFIX) > 0, "a delta again");
    assert_reload_equal(&store, &shared, "after a delta that followed them");
}

/// A retained record changed in the period of its first write, and again after a checkpoint
/// whose write failed, goes to the journals once per change: the latest copy is the one memory
/// lets go of, and the one a reload keeps.
#[tokio::test]
async fn a_record_changed_again_across_a_failed_checkpoint_reloads_to_its_last_value() {
    let (store, tree, mut state_machine, shared) = fresh_shard_with_tree();
    let reversal = |index: u64, reversal_key: &str| Entry {
        log_id: openraft::testing::log_id(1, 1, index),
        payload: EntryPayload::Normal(GroupRequest::Shard(ShardBatch {
            header: BatchHeader {
                log_time_ms: 1_700_000_000_000 + index * 1_000,
                idempotency_retention_ms: tally_ledger::limits::IDEMPOTENCY_RETENTION_MS_DEFAULT,
            },
            commands: vec![command(
                reversal_key,
                Operation::ReverseEarn { earn_key: key("r0-earn-m0"), amount_points: 1 },
            )],
        })),
    };
    let reversed_points = |shared: &GroupShared| {
        ledger(shared)
            .earn_record(&partner(), &key("r0-earn-m0"))
            .expect("the earn is retained")
            .reversed_points
    };
    state_machine.apply([round_entry(0)]).await.unwrap();
    state_machine.apply([reversal(2, "undo-1")]).await.unwrap();
    tree.fail_next_write_batches(1);
    assert!(shared.checkpoint().await.is_err(), "the injected failure is reported");
    state_machine.apply([reversal(3, "undo-2")]).await.unwrap();
    shared.checkpoint().await.unwrap().expect("something was applied");
    assert!(shared.checkpoint().await.unwrap().is_none(), "at rest: the records leave");
    assert_eq!(reversed_points(&shared), 2);
    assert_eq!(retained_records(&shared).0, 0, "every record left memory once written");
    assert_reload_equal(&store, &shared, "after a record changed three times");
    let loaded = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap().shared();
    assert_eq!(reversed_points(&loaded), 2, "the reload keeps the last copy of the record");
}
