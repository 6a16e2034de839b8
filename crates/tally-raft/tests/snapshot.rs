//! Snapshots of a shard (and the meta group) built by a live single-node group, installed into
//! a fresh `GroupStateMachine` on another store the way openraft installs a received snapshot.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use tally_ledger::meta::{MetaCommand, MetaResult};
use tally_ledger::{BatchHeader, Command, CommandOutcome, CurrencyCode, LedgerError, Operation, ShardBatch};
use tally_raft::network::PeerPool;
use tally_raft::proposer::wall_clock_ms;
use tally_raft::state_machine::GroupStateMachine;
use tally_raft::{
    Entry, Group, GroupRequest, GroupResponse, GroupShared, LogId, ProposerConfig, StoredMembership,
    TallyRaft, META_GROUP_ID,
};
use tally_store::NodeStore;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Triggers a snapshot and waits until one covering everything applied so far is current.
async fn snapshot_now(group: &Group) -> Snapshot<TallyRaft> {
    let applied = group.raft.metrics().borrow().last_applied.expect("the group applied entries");
    group.raft.trigger().snapshot().await.expect("trigger a snapshot");
    group
        .raft
        .wait(WAIT)
        .metrics(|m| m.snapshot.is_some_and(|id| id.index >= applied.index), "snapshot built")
        .await
        .unwrap_or_else(|error| panic!("no snapshot at or after {applied}: {error}"));
    group.raft.get_snapshot().await.expect("read the snapshot").expect("a current snapshot")
}

/// What a leader sends a lagging follower: a snapshot built (its meta becomes the current
/// snapshot; a build returns no data, openraft keeps only the meta), then read the way openraft
/// reads it to send it (the data, encoded from the state).
async fn built_snapshot(state_machine: &mut GroupStateMachine) -> Snapshot<TallyRaft> {
    let built = state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert!(built.snapshot.get_ref().is_empty(), "a build returns the meta alone");
    let current = state_machine.get_current_snapshot().await.unwrap().expect("the built snapshot is current");
    assert_eq!(current.meta, built.meta, "nothing was applied since the build");
    assert!(!current.snapshot.get_ref().is_empty(), "a read carries the data");
    current
}

/// A fresh state machine of `group_id` on its own temporary store, as a new replica has.
fn fresh_state_machine(group_id: u32) -> (NodeStore, GroupStateMachine) {
    let store = NodeStore::temporary().unwrap();
    let state_machine = GroupStateMachine::open(group_id, store.state_tree(group_id).unwrap()).unwrap();
    (store, state_machine)
}

/// What openraft does with a received snapshot: a buffer from the state machine, filled with
/// the bytes, then `install_snapshot`.
async fn install(state_machine: &mut GroupStateMachine, snapshot: &Snapshot<TallyRaft>) {
    let mut buffer = state_machine.begin_receiving_snapshot().await.unwrap();
    *buffer = Cursor::new(snapshot.snapshot.get_ref().clone());
    state_machine.install_snapshot(&snapshot.meta, buffer).await.expect("install the snapshot");
}

fn shard_entry(log_id: LogId, commands: Vec<Command>) -> Entry {
    let header = BatchHeader {
        log_time_ms: wall_clock_ms(),
        idempotency_retention_ms: tally_ledger::limits::IDEMPOTENCY_RETENTION_MS_DEFAULT,
    };
    Entry { log_id, payload: EntryPayload::Normal(GroupRequest::Shard(ShardBatch { header, commands })) }
}

fn shard_outcomes(mut responses: Vec<GroupResponse>) -> Vec<CommandOutcome> {
    assert_eq!(responses.len(), 1, "one response per entry");
    match responses.remove(0) {
        GroupResponse::Shard(outcomes) => outcomes,
        other => panic!("expected shard outcomes, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_carries_the_whole_shard_into_a_fresh_state_machine() {
    const ROUNDS: u64 = 5;
    let store = NodeStore::temporary().unwrap();
    let group = start_single(&store, &fast_tuning()).await;
    let mut rounds: Vec<(Vec<Command>, Vec<CommandOutcome>)> = Vec::new();
    for round in 0..ROUNDS {
        let commands = round_commands(round);
        let outcomes = propose(&group, commands.clone()).await;
        assert_outcomes(&outcomes, &commands, false);
        rounds.push((commands, outcomes));
    }

    let snapshot = snapshot_now(&group).await;
    let source = ledger(&group.shared);
    assert_ledger_after_rounds(&source, ROUNDS, "source");
    let source_fingerprint = fingerprint(&group.shared);
    assert_eq!(snapshot.meta.last_log_id, source_fingerprint.0, "nothing was proposed after the last round");
    assert_eq!(snapshot.meta.last_membership, source_fingerprint.2);
    assert!(snapshot.meta.last_membership.membership().voter_ids().eq([1]), "the single voter");
    let source_lines = all_statement_lines(&group.shared, &source);
    assert!(source_lines.values().all(|lines| lines.len() >= ROUNDS as usize), "every member has lines");

    let (other_store, mut state_machine) = fresh_state_machine(SHARD);
    assert_eq!(state_machine.applied_state().await.unwrap(), (None, StoredMembership::default()));
    assert!(state_machine.get_current_snapshot().await.unwrap().is_none());
    install(&mut state_machine, &snapshot).await;

    let installed = state_machine.shared();
    assert_eq!(fingerprint(&installed), source_fingerprint, "applied id, digest and membership");
    let (applied, membership) = state_machine.applied_state().await.unwrap();
    assert_eq!((applied, membership), (source_fingerprint.0, source_fingerprint.2.clone()));
    let installed_ledger = ledger(&installed);
    assert_eq!(installed_ledger, source, "the whole ledger, idempotency table and records included");
    assert_ledger_after_rounds(&installed_ledger, ROUNDS, "installed");
    assert_eq!(all_statement_lines(&installed, &installed_ledger), source_lines);
    // The installed snapshot is the replica's current one, so it can send it on.
    let current = state_machine.get_current_snapshot().await.unwrap().expect("installed snapshot is current");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(current.snapshot.get_ref(), snapshot.snapshot.get_ref());

    // A damaged snapshot is refused and leaves the state alone.
    let mut damaged = snapshot.snapshot.get_ref().clone();
    damaged[0] = 99;
    let mut buffer = state_machine.begin_receiving_snapshot().await.unwrap();
    *buffer = Cursor::new(damaged);
    assert!(state_machine.install_snapshot(&snapshot.meta, buffer).await.is_err(), "unknown format version");
    let mut truncated = snapshot.snapshot.get_ref().clone();
    truncated.truncate(truncated.len() / 2);
    let mut buffer = state_machine.begin_receiving_snapshot().await.unwrap();
    *buffer = Cursor::new(truncated);
    assert!(state_machine.install_snapshot(&snapshot.meta, buffer).await.is_err(), "truncated payload");
    assert_eq!(fingerprint(&installed), source_fingerprint, "a refused snapshot changes nothing");

    // The install was written to the tree: a restarted replica loads the same state.
    drop((state_machine, installed));
    let mut state_machine = GroupStateMachine::open(SHARD, other_store.state_tree(SHARD).unwrap()).unwrap();
    let reloaded = state_machine.shared();
    assert_eq!(fingerprint(&reloaded), source_fingerprint, "state reloaded from the tree");
    assert_eq!(ledger(&reloaded), source);
    assert_eq!(all_statement_lines(&reloaded, &source), source_lines);

    // The idempotency table travelled: a retry of round 0 on the installed replica is a replay
    // with the first answer, and changes nothing.
    let applied = source_fingerprint.0.unwrap();
    let (round0, round0_outcomes) = rounds[0].clone();
    let next = LogId { leader_id: applied.leader_id, index: applied.index + 1 };
    let replayed = shard_outcomes(state_machine.apply([shard_entry(next, round0.clone())]).await.unwrap());
    let expected: Vec<CommandOutcome> =
        round0_outcomes.iter().map(|outcome| CommandOutcome { replay: true, ..outcome.clone() }).collect();
    assert_eq!(replayed, expected, "replays answer with the first outcomes");
    assert_ledger_after_rounds(&ledger(&reloaded), ROUNDS, "installed, after the replay");
    // The source answers the same retry the same way.
    let replayed_on_source = propose(&group, round0.clone()).await;
    assert_eq!(replayed_on_source, expected);

    // A used key with another request is refused, not applied.
    let reused = command(
        "r0-earn-m0",
        Operation::Earn { member_id: member(0), currency: currency_of(0), amount_points: 1 },
    );
    let next = LogId { leader_id: applied.leader_id, index: applied.index + 2 };
    let outcome = shard_outcomes(state_machine.apply([shard_entry(next, vec![reused])]).await.unwrap());
    assert!(
        matches!(&outcome[0].result, Err(LedgerError::KeyReusedWithDifferentRequest { .. })),
        "{outcome:?}"
    );
    assert_ledger_after_rounds(&ledger(&reloaded), ROUNDS, "installed, after the refused reuse");
    assert_eq!(reloaded.read().applied, Some(next));
}

/// A snapshot cut while proposals keep arriving holds exactly the state at its own
/// `last_log_id`: installing it gives the same digest, records and statements as applying
/// exactly the log entries up to that id to an empty state machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_taken_under_load_is_a_consistent_cut() {
    let store = NodeStore::temporary().unwrap();
    let group = Arc::new(start_single(&store, &fast_tuning()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicU64::new(0));
    let load = {
        let (group, stop, rounds_done) = (group.clone(), stop.clone(), rounds_done.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                // Two proposals at once so the proposer has something to batch.
                let (first, second) = (round_commands(round), extra_earns(round));
                let (a, b) = tokio::join!(propose(&group, first.clone()), propose(&group, second.clone()));
                assert_outcomes(&a, &first, false);
                assert_outcomes(&b, &second, false);
                round += 1;
                rounds_done.store(round, Ordering::Relaxed);
            }
        })
    };

    let mut snapshots = Vec::new();
    for _ in 0..3 {
        let seen = rounds_done.load(Ordering::Relaxed);
        while rounds_done.load(Ordering::Relaxed) < seen + 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        snapshots.push(snapshot_now(&group).await);
    }
    // Let proposals run on past the last cut before stopping.
    let seen = rounds_done.load(Ordering::Relaxed);
    while rounds_done.load(Ordering::Relaxed) < seen + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load task succeeded");
    let rounds = rounds_done.load(Ordering::Relaxed);
    assert_tree_matches_memory(&store, &group.shared, "after the load").await;
    // Each round also earned 1 point per member through `extra_earns`.
    let source = ledger(&group.shared);
    source.check_invariants().unwrap();
    let (balance, held) = expected_member_points(rounds);
    for i in 0..MEMBERS {
        let view = source.balance(&member(i), &currency_of(i)).unwrap();
        assert_eq!((view.balance_points, view.held_points), (balance + rounds, held), "m{i} after the load");
    }
    let final_applied = group.shared.read().applied.unwrap();

    let mut log = store.log_store::<TallyRaft>(SHARD).unwrap();
    let mut previous_index = 0;
    for snapshot in &snapshots {
        let cut = snapshot.meta.last_log_id.expect("snapshot of a non-empty log");
        assert!(cut.index > previous_index, "each snapshot is newer than the one before");
        assert!(cut.index < final_applied.index, "proposals went on after the cut at {cut}");
        previous_index = cut.index;

        let (_installed_store, mut installed) = fresh_state_machine(SHARD);
        install(&mut installed, snapshot).await;
        let installed = installed.shared();
        let installed_ledger = ledger(&installed);
        installed_ledger.check_invariants().unwrap_or_else(|broken| panic!("snapshot at {cut}: {broken}"));
        for (currency, totals) in installed_ledger.currency_totals() {
            assert_eq!(totals.debits_points, totals.credits_points, "snapshot at {cut}: {currency}");
        }
        let installed_lines = all_statement_lines(&installed, &installed_ledger);

        // The same state, rebuilt from exactly the log entries up to the cut.
        let entries = log.try_get_log_entries(0..=cut.index).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|entry| entry.log_id.index).collect();
        assert_eq!(indexes, (0..=cut.index).collect::<Vec<_>>(), "the log is whole up to the cut");
        assert_eq!(entries.last().unwrap().log_id, cut);
        let (_rebuilt_store, mut rebuilt) = fresh_state_machine(SHARD);
        let responses = rebuilt.apply(entries).await.unwrap();
        assert_eq!(responses.len() as u64, cut.index + 1, "one response per entry");
        let rebuilt = rebuilt.shared();
        assert_eq!(fingerprint(&installed), fingerprint(&rebuilt), "snapshot at {cut} vs. the log up to it");
        let rebuilt_ledger = ledger(&rebuilt);
        assert_eq!(installed_ledger, rebuilt_ledger, "snapshot at {cut}: ledger");
        assert_eq!(
            all_statement_lines(&rebuilt, &rebuilt_ledger),
            installed_lines,
            "snapshot at {cut}: lines"
        );
    }
}

/// Earns with keys of their own, proposed next to a round.
fn extra_earns(round: u64) -> Vec<Command> {
    (0..MEMBERS)
        .map(|i| {
            command(
                &format!("x{round}-earn-m{i}"),
                Operation::Earn { member_id: member(i), currency: currency_of(i), amount_points: 1 },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_snapshot_round_trip() {
    let store = NodeStore::temporary().unwrap();
    let group = Group::start(
        1,
        META_GROUP_ID,
        &store,
        Arc::new(PeerPool::default()),
        &fast_tuning(),
        ProposerConfig::default(),
    )
    .await
    .unwrap();
    assert!(group.proposer.is_none(), "the meta group has no proposer");
    group.raft.initialize(BTreeMap::from([(1, node_info("127.0.0.1:1"))])).await.unwrap();
    wait_leader(&group, 1).await;
    let commands = [
        MetaCommand::CreatePartner {
            partner_id: partner(),
            display_name: "Sky Air".into(),
            currency: CurrencyCode::parse(SKY).unwrap(),
            api_key_sha256: "00".repeat(32),
        },
        MetaCommand::CreatePartner {
            partner_id: tally_ledger::PartnerId::parse("inn").unwrap(),
            display_name: "Inn".into(),
            currency: CurrencyCode::parse(HOTEL).unwrap(),
            api_key_sha256: "11".repeat(32),
        },
        MetaCommand::RotatePartnerKey { partner_id: partner(), api_key_sha256: "22".repeat(32) },
    ];
    for command in commands {
        let request = GroupRequest::Meta { log_time_ms: wall_clock_ms(), command };
        let response = group.raft.client_write(request).await.expect("meta write");
        assert!(
            matches!(
                response.data,
                GroupResponse::Meta(Ok(MetaResult::PartnerCreated(_) | MetaResult::PartnerKeyRotated(_)))
            ),
            "{:?}",
            response.data
        );
    }
    // A shard batch sent to the meta group is answered, not applied.
    let stray = GroupRequest::Shard(ShardBatch {
        header: BatchHeader { log_time_ms: wall_clock_ms(), idempotency_retention_ms: HOUR_MS },
        commands: round_commands(0),
    });
    let response = group.raft.client_write(stray).await.unwrap();
    assert!(matches!(response.data, GroupResponse::WrongGroup(_)), "{:?}", response.data);

    let meta = group.shared.meta_state();
    assert_eq!(meta.partners.len(), 2);
    assert_eq!(meta.partners[&partner()].api_key_sha256, "22".repeat(32));

    let snapshot = snapshot_now(&group).await;
    assert_eq!(snapshot.meta.last_log_id, group.shared.read().applied);
    let (other_store, mut state_machine) = fresh_state_machine(META_GROUP_ID);
    install(&mut state_machine, &snapshot).await;
    let installed: Arc<GroupShared> = state_machine.shared();
    assert_eq!(*installed.meta_state(), *meta);
    assert_eq!(
        state_machine.applied_state().await.unwrap(),
        (snapshot.meta.last_log_id, snapshot.meta.last_membership.clone())
    );

    drop((state_machine, installed));
    let reloaded =
        GroupStateMachine::open(META_GROUP_ID, other_store.state_tree(META_GROUP_ID).unwrap()).unwrap();
    assert_eq!(*reloaded.shared().meta_state(), *meta, "meta state reloaded from the tree");
    assert_eq!(reloaded.shared().read().applied, snapshot.meta.last_log_id);
}

/// Every key and value of a group's state-machine tree.
fn tree_content(store: &NodeStore, group_id: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.state_tree(group_id).unwrap().iter_all().collect::<Result<_, _>>().unwrap()
}

/// After a checkpoint, the tree holds exactly the in-memory state: a replica loading it gets
/// the same ledger.
async fn assert_tree_matches_memory(store: &NodeStore, shared: &Arc<GroupShared>, context: &str) {
    shared.checkpoint().await.unwrap();
    let loaded =
        GroupStateMachine::open(shared.group_id, store.state_tree(shared.group_id).unwrap()).unwrap();
    let loaded = loaded.shared();
    assert_eq!(fingerprint(&loaded), fingerprint(shared), "{context}: tree vs. memory");
    assert_eq!(ledger(&loaded), ledger(shared), "{context}: tree vs. memory");
}

fn entry_at(index: u64, log_time_ms: u64, retention_ms: u64, commands: Vec<Command>) -> Entry {
    let header = BatchHeader { log_time_ms, idempotency_retention_ms: retention_ms };
    Entry {
        log_id: openraft::testing::log_id(1, 1, index),
        payload: EntryPayload::Normal(GroupRequest::Shard(ShardBatch { header, commands })),
    }
}

/// Records expire with log time and are deleted from the tree. A replica still at an older
/// state (which has them) that installs a newer snapshot must end up with exactly the
/// snapshot's content: nothing forgotten comes back, nothing stale stays in its tree.
/// `count` entries of one earn each for member 0, at indexes 1.. and log times `t + index`.
fn earn_entries(count: u64, t: u64) -> Vec<Entry> {
    (1..=count)
        .map(|index| {
            let commands = vec![command(
                &format!("e{index}"),
                Operation::Earn { member_id: member(0), currency: currency_of(0), amount_points: index },
            )];
            entry_at(index, t + index, HOUR_MS, commands)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_over_an_older_replica_state_leaves_exactly_the_snapshot() {
    const T: u64 = 1_700_000_000_000;
    const RETENTION_MS: u64 = 1_000;
    let earns = |tag: &str| -> Vec<Command> {
        (0..MEMBERS)
            .map(|i| {
                command(
                    &format!("{tag}-earn-m{i}"),
                    Operation::Earn { member_id: member(i), currency: currency_of(i), amount_points: 50 },
                )
            })
            .collect()
    };
    let mut first = earns("e1");
    first.push(command(
        "e1-hold",
        Operation::AuthorizeHold {
            member_id: member(0),
            currency: currency_of(0),
            amount_points: 30,
            expires_in_ms: 500,
        },
    ));
    first.push(command(
        "e1-transfer",
        Operation::Transfer {
            from_member_id: member(1),
            to_member_id: member(3),
            currency: currency_of(1),
            amount_points: 5,
        },
    ));
    let entries = vec![
        entry_at(1, T, RETENTION_MS, first.clone()),
        // The hold expires (released, kept as Expired).
        entry_at(2, T + 600, RETENTION_MS, earns("e2")),
        // Entry 1's idempotency and earn records are forgotten; the hold record (forgotten at
        // its expiry + retention) is not yet.
        entry_at(3, T + 1_200, RETENTION_MS, earns("e3")),
        // Now the hold record goes too.
        entry_at(4, T + 2_000, RETENTION_MS, earns("e4")),
    ];

    let (newer_store, mut newer) = fresh_state_machine(SHARD);
    let shared = newer.shared();
    let mut item_counts = Vec::new();
    for entry in entries.clone() {
        let index = entry.log_id.index;
        let outcomes = shard_outcomes(newer.apply([entry]).await.unwrap());
        assert!(outcomes.iter().all(|outcome| outcome.result.is_ok()), "entry {index}: {outcomes:?}");
        assert_tree_matches_memory(&newer_store, &shared, &format!("after entry {index}")).await;
        item_counts.push(ledger(&shared).items().len());
    }
    let newest = ledger(&shared);
    assert!(newest.operation(&partner(), &key("e1-earn-m0")).is_none(), "entry 1's key was forgotten");
    assert!(newest.earn_record(&partner(), &key("e1-earn-m0")).is_none(), "and its earn record");
    assert!(newest.hold(&partner(), &key("e1-hold")).is_none(), "and the hold record");
    assert!(newest.operation(&partner(), &key("e4-earn-m0")).is_some());
    assert!(item_counts[3] < item_counts[1], "records were dropped: {item_counts:?}");
    let m0 = newest.balance(&member(0), &currency_of(0)).unwrap();
    assert_eq!((m0.balance_points, m0.held_points), (200, 0), "the expired hold released its points");

    let snapshot = built_snapshot(&mut newer).await;
    assert_eq!(snapshot.meta.last_log_id, Some(openraft::testing::log_id(1, 1, 4)));

    // An older replica: it applied entries 1 and 2 only, so it still has entry 1's records.
    let (older_store, mut older) = fresh_state_machine(SHARD);
    older.apply(entries[..2].to_vec()).await.unwrap();
    let older_shared = older.shared();
    assert!(ledger(&older_shared).operation(&partner(), &key("e1-earn-m0")).is_some());
    install(&mut older, &snapshot).await;
    assert_eq!(fingerprint(&older_shared), fingerprint(&shared));
    assert_eq!(ledger(&older_shared), newest);
    assert_eq!(all_statement_lines(&older_shared, &newest), all_statement_lines(&shared, &newest));
    // A full checkpoint on the newer replica, so that its tree has its items under their own
    // keys (as an install writes them) rather than in deltas.
    shared.make_next_checkpoint_full();
    shared.checkpoint().await.unwrap();
    // Not byte-identical: the installed replica keeps the snapshot's records in one journal,
    // the other in the journals of the entries that wrote them. Nothing stale may remain in
    // the installed tree: only keys that the newer replica's tree also has a kind of.
    let stale: Vec<Vec<u8>> = tree_content(&older_store, SHARD)
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.first() != Some(&b'j'))
        .filter(|key| !tree_content(&newer_store, SHARD).iter().any(|(other, _)| other == key))
        .collect();
    assert!(stale.is_empty(), "keys left over from before the install: {stale:?}");
    // Expired journals were deleted on the replica that applied the entries.
    let journals =
        tree_content(&newer_store, SHARD).iter().filter(|(key, _)| key.first() == Some(&b'j')).count();
    assert_eq!(journals, 2, "only the journals of entries 3 and 4 hold unexpired records");
    assert_tree_matches_memory(&older_store, &older_shared, "older replica after the install").await;
}

/// openraft 0.9 builds a snapshot in a task spawned by the state-machine worker
/// (`core/sm/worker.rs`, `build_snapshot`) and meanwhile the worker goes on with other commands,
/// `install_snapshot` of a newer snapshot from the leader included. The build that finishes
/// last must not replace the newer installed snapshot as the replica's current one: that one
/// covers the log the replica purged after the install, and is what it sends on and restarts
/// from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_finishing_after_an_install_keeps_the_installed_snapshot_current() {
    const T: u64 = 1_700_000_000_000;
    let entries = earn_entries(4, T);
    // The leader is at entry 4 and has a snapshot there.
    let (_leader_store, mut leader) = fresh_state_machine(SHARD);
    leader.apply(entries.clone()).await.unwrap();
    let newer = built_snapshot(&mut leader).await;

    // The follower, at entry 2, starts building its own snapshot in a task of its own (as
    // openraft does) while the worker installs the leader's snapshot; both finish in either
    // order.
    let (_follower_store, mut follower) = fresh_state_machine(SHARD);
    follower.apply(entries[..2].to_vec()).await.unwrap();
    let mut builder = follower.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    install(&mut follower, &newer).await;
    let built = build.await.unwrap().unwrap();
    assert_eq!(built.meta.last_log_id, Some(openraft::testing::log_id(1, 1, 2)), "the build's own cut");

    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(applied, newer.meta.last_log_id, "the installed state stays");
    let current = follower.get_current_snapshot().await.unwrap().expect("a current snapshot");
    assert_eq!(
        current.meta.last_log_id, newer.meta.last_log_id,
        "the current snapshot went back from the installed {} to the built {}",
        newer.meta.snapshot_id, current.meta.snapshot_id
    );
}

/// Idempotency and earn records live in per-apply journals: a later version of an earn record
/// (after a reversal) must win over the earlier one when the tree is loaded, and records that
/// expired must not come back, even while their journal still holds other live records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_records_reload_at_their_latest_version_and_expired_ones_stay_gone() {
    const T: u64 = 1_700_000_000_000;
    let earn = |tag: &str, points: u64| {
        command(
            tag,
            Operation::Earn { member_id: member(0), currency: currency_of(0), amount_points: points },
        )
    };
    let (store, mut state_machine) = fresh_state_machine(SHARD);
    let shared = state_machine.shared();
    // Entry 1 (retention 1 h): two earns. Entry 2 (retention 10 h): a reversal of one of them.
    state_machine.apply([entry_at(1, T, HOUR_MS, vec![earn("a", 100), earn("b", 50)])]).await.unwrap();
    let reverse = command("r", Operation::ReverseEarn { earn_key: key("a"), amount_points: 30 });
    state_machine.apply([entry_at(2, T + 1_000, 10 * HOUR_MS, vec![reverse])]).await.unwrap();
    assert_eq!(ledger(&shared).earn_record(&partner(), &key("a")).unwrap().reversed_points, 30);
    assert_tree_matches_memory(&store, &shared, "after the reversal").await;

    // Entry 3, past entry 1's retention: both earns' records expire; entry 2's journal (the
    // reversal's record, and the newer version of earn a's record) is still alive.
    state_machine.apply([entry_at(3, T + 2 * HOUR_MS, HOUR_MS, vec![earn("c", 1)])]).await.unwrap();
    let live = ledger(&shared);
    assert!(live.operation(&partner(), &key("a")).is_none());
    assert!(live.earn_record(&partner(), &key("a")).is_none(), "earn a's record expired with its key");
    assert!(live.operation(&partner(), &key("r")).is_some());
    assert_tree_matches_memory(&store, &shared, "after the expiry").await;
}

/// Entries can carry thousands of commands, so the log is bounded by size as well as by entry
/// count: with a count that is never reached and a small byte limit, a snapshot still comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_built_once_the_log_reaches_its_size_limit() {
    let store = NodeStore::temporary().unwrap();
    let tuning = tally_raft::RaftTuning {
        snapshot_logs_since_last: 1_000_000,
        snapshot_log_bytes: 20_000,
        ..fast_tuning()
    };
    let group = common::start_single(&store, &tuning).await;
    assert!(group.raft.metrics().borrow().snapshot.is_none(), "no snapshot before any write");
    for round in 0..10 {
        common::propose(&group, round_commands(round)).await;
    }
    let waited = group
        .raft
        .wait(Some(std::time::Duration::from_secs(10)))
        .metrics(|metrics| metrics.snapshot.is_some(), "a snapshot by log size")
        .await;
    assert!(waited.is_ok(), "no snapshot after {} log bytes", 20_000);
    group.raft.shutdown().await.unwrap();
}

/// openraft reads the current snapshot once when a group starts and keeps only its meta: that
/// first read after opening skips the data, and every later read (a snapshot sent to a
/// follower) carries the whole state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_snapshot_read_after_opening_carries_the_meta_and_later_reads_the_data() {
    const SHARD: u32 = 1;
    const T: u64 = 1_700_000_000_000;
    let entries = earn_entries(3, T);
    let (store, mut state_machine) = fresh_state_machine(SHARD);
    state_machine.apply(entries).await.unwrap();
    let built = built_snapshot(&mut state_machine).await;
    // What a node's checkpoint task would have written before a restart.
    state_machine.shared().checkpoint().await.unwrap();
    drop(state_machine);

    let mut reopened = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    let first = reopened.get_current_snapshot().await.unwrap().expect("the stored snapshot");
    assert_eq!(first.meta, built.meta);
    assert!(first.snapshot.get_ref().is_empty(), "the start-up read encodes nothing");
    let second = reopened.get_current_snapshot().await.unwrap().expect("the stored snapshot");
    assert_eq!(second.meta, built.meta);
    assert_eq!(second.snapshot.get_ref(), built.snapshot.get_ref(), "later reads carry the whole state");
}

/// A snapshot is the state as it stands when a follower needs it: read after more entries
/// were applied than its build saw, it carries them too, under a meta of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_read_after_later_applies_carries_the_state_at_that_time() {
    const T: u64 = 1_700_000_000_000;
    let entries = earn_entries(5, T);
    let (_store, mut leader) = fresh_state_machine(SHARD);
    leader.apply(entries[..3].to_vec()).await.unwrap();
    let built = built_snapshot(&mut leader).await;
    leader.apply(entries[3..].to_vec()).await.unwrap();
    let later = leader.get_current_snapshot().await.unwrap().expect("a current snapshot");
    assert_eq!(later.meta.last_log_id, entries[4].log_id.into(), "the state's applied id");
    assert_ne!(later.meta.snapshot_id, built.meta.snapshot_id);
    assert_eq!(later.meta.last_membership, leader.applied_state().await.unwrap().1);

    let (_follower_store, mut follower) = fresh_state_machine(SHARD);
    install(&mut follower, &later).await;
    assert_eq!(
        fingerprint(&follower.shared()),
        fingerprint(&leader.shared()),
        "applied id, digest, membership"
    );
    assert_eq!(ledger(&follower.shared()), ledger(&leader.shared()));
}

/// What writes check before they are proposed (the retained-key count against the budget) and
/// what the leader's hold-expiry task watches (the earliest open hold) are published by apply,
/// the load and snapshot installs, so that neither waits for the state lock: they always equal
/// what the ledger says.
#[tokio::test]
async fn the_published_key_count_and_next_hold_expiry_follow_apply_load_and_install() {
    fn assert_published(shared: &GroupShared, context: &str) {
        let ledger = ledger(shared);
        assert_eq!(shared.retained_keys(), ledger.retained_keys(), "{context}: retained keys");
        assert_eq!(shared.next_hold_expiry_ms(), ledger.next_hold_expiry_ms(), "{context}: next hold expiry");
    }
    let (store, mut state_machine) = fresh_state_machine(SHARD);
    let shared = state_machine.shared();
    assert_eq!((shared.retained_keys(), shared.next_hold_expiry_ms()), (0, None), "a fresh shard");
    state_machine.apply([shard_entry(openraft::testing::log_id(1, 1, 1), round_commands(0))]).await.unwrap();
    assert!(shared.retained_keys() > 0);
    assert_published(&shared, "after the first round");
    let hold = command(
        "published-hold",
        Operation::AuthorizeHold {
            member_id: member(0),
            currency: currency_of(0),
            amount_points: 1,
            expires_in_ms: 3_600_000,
        },
    );
    let outcomes = shard_outcomes(
        state_machine.apply([shard_entry(openraft::testing::log_id(1, 1, 2), vec![hold])]).await.unwrap(),
    );
    assert!(outcomes[0].result.is_ok(), "{outcomes:?}");
    assert!(shared.next_hold_expiry_ms().is_some(), "the hold is open");
    assert_published(&shared, "after the hold");

    shared.checkpoint().await.unwrap().expect("something was applied");
    let snapshot = built_snapshot(&mut state_machine).await;
    drop((state_machine, shared));
    let reopened = GroupStateMachine::open(SHARD, store.state_tree(SHARD).unwrap()).unwrap();
    assert!(reopened.shared().retained_keys() > 0);
    assert_published(&reopened.shared(), "after a restart");

    let (_other_store, mut installed) = fresh_state_machine(SHARD);
    install(&mut installed, &snapshot).await;
    assert!(installed.shared().next_hold_expiry_ms().is_some());
    assert_published(&installed.shared(), "after a snapshot install");
}
