//! Shared by tally-raft's integration tests: a deterministic workload whose expected balances
//! are known in closed form, fast Raft timings, single-node groups, and state comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tally_ledger::state::{AccountKey, StatementLine};
use tally_ledger::{
    Command, CommandOutcome, CurrencyCode, IdempotencyKey, Ledger, MemberId, Operation, PartnerId,
};
use tally_raft::network::PeerPool;
use tally_raft::{
    shard_group_id, Group, GroupData, GroupId, GroupShared, LogId, NodeId, ProposerConfig, RaftTuning,
    StoredMembership, TallyNode,
};
use tally_store::NodeStore;

pub const PARTNER: &str = "skyair";
pub const SKY: &str = "SKYMILES";
pub const HOTEL: &str = "HOTELPTS";
/// Members `m0..m5`; even ones hold SKYMILES, odd ones HOTELPTS.
pub const MEMBERS: usize = 6;
pub const HOUR_MS: u64 = 3_600_000;
pub const SHARD: GroupId = 1;

pub const EARN_POINTS: u64 = 100;
pub const REDEEM_POINTS: u64 = 10;
pub const TRANSFER_POINTS: u64 = 7;
pub const HOLD_POINTS: u64 = 20;
pub const CAPTURE_POINTS: u64 = 5;

const _: () = assert!(SHARD == 1);

pub fn shard() -> GroupId {
    shard_group_id(0)
}

pub fn partner() -> PartnerId {
    PartnerId::parse(PARTNER).unwrap()
}

pub fn member(i: usize) -> MemberId {
    MemberId::parse(format!("m{i}")).unwrap()
}

pub fn currency_of(i: usize) -> CurrencyCode {
    CurrencyCode::parse([SKY, HOTEL][i % 2]).unwrap()
}

pub fn key(value: &str) -> IdempotencyKey {
    IdempotencyKey::parse(value).unwrap()
}

pub fn command(idempotency_key: &str, operation: Operation) -> Command {
    Command { partner_id: partner(), idempotency_key: key(idempotency_key), operation }
}

/// One round of the workload, as one proposal: every member earns, redeems, sends points to
/// the member two places on (same currency, so the ring nets to zero), settles the hold of the
/// previous round (capture of 5 in even rounds, void in odd ones) and authorizes a new hold.
pub fn round_commands(round: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    for i in 0..MEMBERS {
        let (member_id, currency) = (member(i), currency_of(i));
        commands.push(command(
            &format!("r{round}-earn-m{i}"),
            Operation::Earn { member_id, currency, amount_points: EARN_POINTS },
        ));
    }
    for i in 0..MEMBERS {
        let (member_id, currency) = (member(i), currency_of(i));
        commands.push(command(
            &format!("r{round}-redeem-m{i}"),
            Operation::Redeem { member_id, currency, amount_points: REDEEM_POINTS },
        ));
    }
    for i in 0..MEMBERS {
        commands.push(command(
            &format!("r{round}-transfer-m{i}"),
            Operation::Transfer {
                from_member_id: member(i),
                to_member_id: member((i + 2) % MEMBERS),
                currency: currency_of(i),
                amount_points: TRANSFER_POINTS,
            },
        ));
    }
    if round > 0 {
        for i in 0..MEMBERS {
            let hold_key = key(&format!("r{}-hold-m{i}", round - 1));
            let operation = match round % 2 {
                0 => Operation::CaptureHold { hold_key, amount_points: CAPTURE_POINTS },
                _ => Operation::VoidHold { hold_key },
            };
            commands.push(command(&format!("r{round}-settle-m{i}"), operation));
        }
    }
    for i in 0..MEMBERS {
        let (member_id, currency) = (member(i), currency_of(i));
        commands.push(command(
            &format!("r{round}-hold-m{i}"),
            Operation::AuthorizeHold {
                member_id,
                currency,
                amount_points: HOLD_POINTS,
                expires_in_ms: HOUR_MS,
            },
        ));
    }
    commands
}

/// `(balance, held)` of every member after rounds `0..rounds` applied exactly once each.
pub fn expected_member_points(rounds: u64) -> (u64, u64) {
    let per_round = EARN_POINTS - REDEEM_POINTS - TRANSFER_POINTS + TRANSFER_POINTS;
    let captures = (2..rounds).step_by(2).count() as u64;
    let held = if rounds > 0 { HOLD_POINTS } else { 0 };
    (per_round * rounds - CAPTURE_POINTS * captures, held)
}

/// Every outcome succeeded, and is (or is not) a replay of an earlier answer.
pub fn assert_outcomes(outcomes: &[CommandOutcome], commands: &[Command], replay: bool) {
    assert_eq!(outcomes.len(), commands.len(), "one outcome per command");
    for (outcome, command) in outcomes.iter().zip(commands) {
        assert!(outcome.result.is_ok(), "{} failed: {:?}", command.idempotency_key, outcome.result);
        assert_eq!(outcome.replay, replay, "replay flag of {}: {outcome:?}", command.idempotency_key);
    }
}

/// How many retained records the shard holds in memory, and how many keys it retains.
pub fn retained_records(shared: &GroupShared) -> (usize, usize) {
    match &shared.read().data {
        GroupData::Shard(ledger) => (ledger.resident_retained_records(), ledger.retained_keys()),
        GroupData::Meta(_) => panic!("group {} is the meta group", shared.group_id),
    }
}

/// The shard's ledger (panics on the meta group).
pub fn ledger(shared: &GroupShared) -> Ledger {
    match &shared.read().data {
        // Records read back into memory: the copy outlives the store it came from.
        GroupData::Shard(ledger) => ledger.in_memory_copy(),
        GroupData::Meta(_) => panic!("group {} is the meta group", shared.group_id),
    }
}

/// Applied log id, ledger digest and membership, read under one lock (a consistent view).
pub fn fingerprint(shared: &GroupShared) -> (Option<LogId>, [u8; 32], StoredMembership) {
    let state = shared.read();
    let GroupData::Shard(ledger) = &state.data else { panic!("group {} is the meta group", shared.group_id) };
    (state.applied, ledger.digest(), state.membership.clone())
}

/// Checks the audit, balanced currencies, and every member's balance after `rounds` rounds.
pub fn assert_ledger_after_rounds(ledger: &Ledger, rounds: u64, context: &str) {
    ledger.check_invariants().unwrap_or_else(|broken| panic!("{context}: invariant broken: {broken}"));
    for (currency, totals) in ledger.currency_totals() {
        assert_eq!(totals.debits_points, totals.credits_points, "{context}: {currency} unbalanced");
    }
    let (balance, held) = expected_member_points(rounds);
    for i in 0..MEMBERS {
        let view = ledger
            .balance(&member(i), &currency_of(i))
            .unwrap_or_else(|| panic!("{context}: member m{i} has no account"));
        assert_eq!(
            (view.balance_points, view.held_points),
            (balance, held),
            "{context}: points of m{i} after {rounds} rounds"
        );
    }
}

/// Every statement line of every member account of the ledger, read from the group's tree.
pub fn all_statement_lines(
    shared: &GroupShared,
    ledger: &Ledger,
) -> BTreeMap<AccountKey, Vec<StatementLine>> {
    let mut lines = BTreeMap::new();
    for i in 0..MEMBERS {
        let account = AccountKey::member(&member(i), &currency_of(i));
        let account_lines = shared.statement_lines(&account, None, false, usize::MAX).unwrap();
        let expected = ledger.statement_lines(&member(i), &currency_of(i));
        assert_eq!(account_lines.len() as u64, expected, "line count of {account} in the tree");
        for (sequence, line) in account_lines.iter().enumerate() {
            assert_eq!(line.sequence, sequence as u64, "statement of {account} is contiguous");
        }
        lines.insert(account, account_lines);
    }
    lines
}

/// Short timings so elections and heartbeats happen within a test's few seconds.
pub fn fast_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        install_snapshot_timeout_ms: 2_000,
        max_payload_entries: 64,
        snapshot_logs_since_last: 10_000,
        snapshot_log_bytes: 1 << 40,
        logs_kept_after_snapshot: 10_000,
        append_entries_on_streams: true,
    }
}

pub fn node_info(addr: &str) -> TallyNode {
    TallyNode { raft_addr: addr.to_string(), api_addr: addr.to_string() }
}

/// Starts the shard group on `store` as node 1 and makes it the only voter and leader.
pub async fn start_single(store: &NodeStore, tuning: &RaftTuning) -> Group {
    let group =
        Group::start(1, SHARD, store, Arc::new(PeerPool::default()), tuning, ProposerConfig::default())
            .await
            .expect("start the group");
    let initialized = group.raft.is_initialized().await.unwrap();
    if !initialized {
        let members = BTreeMap::from([(1, node_info("127.0.0.1:1"))]);
        group.raft.initialize(members).await.expect("initialize a single-node group");
    }
    wait_leader(&group, 1).await;
    group
}

pub async fn wait_leader(group: &Group, node_id: NodeId) {
    group
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.state == ServerState::Leader && m.current_leader == Some(node_id), "become leader")
        .await
        .unwrap_or_else(|error| {
            panic!("node {node_id} did not become leader of group {}: {error}", group.group_id)
        });
}

/// Proposes through the group's proposer and expects success.
pub async fn propose(group: &Group, commands: Vec<Command>) -> Vec<CommandOutcome> {
    let proposer = group.proposer.as_ref().expect("shard groups have a proposer");
    proposer.propose(commands).await.unwrap_or_else(|error| panic!("proposal failed: {error}"))
}

/// Opens the NodeStore at `path`, retrying while a previous instance still holds sled's file
/// lock (openraft's state-machine worker drops its tree a moment after `shutdown` returns).
pub async fn reopen_store(path: &Path) -> NodeStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // On a blocking thread: the open waits for sled's lock while the old instance's tasks
        // (which need the runtime) let go of it.
        let opening = path.to_path_buf();
        match tokio::task::spawn_blocking(move || NodeStore::open(&opening)).await.expect("open panicked") {
            Ok(store) => return store,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(error) => panic!("could not reopen the store at {}: {error}", path.display()),
        }
    }
}
