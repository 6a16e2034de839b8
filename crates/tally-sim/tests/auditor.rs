//! The auditor catches bugs: a clean history built by applying real commands to a real
//! ledger passes, and each deliberate defect (a double apply, a lost acknowledged effect, a
//! retry answered differently, a second fresh answer, a stale read, a wrong read, a broken
//! conservation, a negative balance, a diverged replica, a duplicated statement line) is
//! reported with its kind and the account or key.

use std::collections::BTreeMap;

use tally_ledger::state::{AccountKey, ChangeSet, ItemKey, KeyFingerprint, StateItem, SystemAccountKind};
use tally_ledger::{
    AgreementTerms, BatchHeader, Command, IdempotencyKey, Ledger, MemberId, Operation, ShardBatch,
};
use tally_sim::history::{Answer, History, Read, Sent, Slot};
use tally_sim::workload::{currency, member, partner};
use tally_sim::{audit, AuditInput, ReplicaView, ViolationKind};

const LOG_TIME_MS: u64 = 1_700_000_000_000;
const RETENTION_MS: u64 = 7 * 24 * 3_600_000;

fn key(value: &str) -> IdempotencyKey {
    IdempotencyKey::parse(value).unwrap()
}

fn command(value: &str, operation: Operation) -> Command {
    Command { partner_id: partner(0), idempotency_key: key(value), operation }
}

fn slot(value: &str) -> Slot {
    (partner(0), key(value))
}

fn replica(
    node_id: u64,
    ledger: &Ledger,
    statements: &BTreeMap<AccountKey, Vec<tally_ledger::StatementLine>>,
) -> ReplicaView {
    ReplicaView {
        node_id,
        applied_index: 0,
        digest: ledger.digest(),
        ledger: ledger.clone(),
        statements: statements.clone(),
    }
}

/// Applies a small workload to a real ledger, one command per log entry, and records the
/// history a client would have seen: every command acknowledged, and a linearizable read of
/// m0 after each acknowledgement.
fn clean_input() -> AuditInput {
    let (m0, m1) = (member(0), member(1));
    let (sim, nights) = (currency(0), currency(1));
    let commands = vec![
        command(
            "earn-m0",
            Operation::Earn { member_id: m0.clone(), currency: sim.clone(), amount_points: 100 },
        ),
        command(
            "earn-m1",
            Operation::Earn { member_id: m1.clone(), currency: sim.clone(), amount_points: 50 },
        ),
        command(
            "redeem-m0",
            Operation::Redeem { member_id: m0.clone(), currency: sim.clone(), amount_points: 30 },
        ),
        command(
            "transfer",
            Operation::Transfer {
                from_member_id: m0.clone(),
                to_member_id: m1.clone(),
                currency: sim.clone(),
                amount_points: 20,
            },
        ),
        command(
            "hold",
            Operation::AuthorizeHold {
                member_id: m1.clone(),
                currency: sim.clone(),
                amount_points: 10,
                expires_in_ms: 3_600_000,
            },
        ),
        command("capture", Operation::CaptureHold { hold_key: key("hold"), amount_points: 4 }),
        command(
            "exchange",
            Operation::Exchange {
                member_id: m0.clone(),
                from_currency: sim.clone(),
                to_currency: nights.clone(),
                amount_points: 10,
                terms: AgreementTerms {
                    rate_numerator: 2,
                    rate_denominator: 1,
                    minimum_points: 0,
                    maximum_points: 0,
                    block_size_points: 0,
                    fee_points: 1,
                },
            },
        ),
        // A refusal is an answer too: stored and replayed like a success.
        command(
            "redeem-too-much",
            Operation::Redeem { member_id: m1.clone(), currency: sim.clone(), amount_points: 1_000 },
        ),
    ];
    let mut ledger = Ledger::new();
    let mut statements: BTreeMap<AccountKey, Vec<tally_ledger::StatementLine>> = BTreeMap::new();
    let mut history = History::default();
    let mut clock = 0u64;
    for (position, command) in commands.into_iter().enumerate() {
        let log_index = position as u64 + 1;
        let batch = ShardBatch {
            header: BatchHeader {
                log_time_ms: LOG_TIME_MS + log_index,
                idempotency_retention_ms: RETENTION_MS,
            },
            commands: vec![command.clone()],
        };
        let mut changes = ChangeSet::default();
        let outcome = ledger.apply_batch(log_index, &batch, &mut changes).remove(0);
        for (account, line) in changes.statement_lines {
            statements.entry(account).or_default().push(line);
        }
        let slot = (command.partner_id.clone(), command.idempotency_key.clone());
        history.sent.insert(slot.clone(), Sent::Single { shard: 0, command });
        clock += 1;
        history.answers.push(Answer { slot: slot.clone(), outcome, at: clock });
        clock += 1;
        history.acked.insert(slot, clock);
        clock += 1;
        history.reads.push(Read {
            shard: 0,
            member_id: m0.clone(),
            currency: sim.clone(),
            started_at: clock,
            applied_log_index: log_index,
            balance: ledger.balance(&m0, &sim),
        });
    }
    let leader = replica(1, &ledger, &statements);
    let follower = replica(2, &ledger, &statements);
    AuditInput { seed: 7, shard_count: 1, history, shards: vec![vec![leader, follower]] }
}

fn kinds(input: &AuditInput) -> Vec<ViolationKind> {
    let mut kinds: Vec<ViolationKind> = audit(input).into_iter().map(|violation| violation.kind).collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// Rebuilds the leader's ledger from its items after `change`.
fn tamper_ledger(input: &mut AuditInput, change: impl FnOnce(&mut Vec<StateItem>)) {
    let mut items = input.shards[0][0].ledger.items();
    change(&mut items);
    let ledger = Ledger::from_items(items);
    input.shards[0][0].digest = ledger.digest();
    input.shards[0][0].ledger = ledger;
}

fn adjust_account(items: &mut [StateItem], wanted: &AccountKey, credits: u64, debits: u64) {
    let found = items.iter_mut().find_map(|item| match item {
        StateItem::Account(key, account) if key == wanted => Some(account),
        _ => None,
    });
    let account = found.unwrap_or_else(|| panic!("no account {wanted}"));
    account.credits_points += credits;
    account.debits_points += debits;
}

fn m0_sim() -> AccountKey {
    AccountKey::member(&member(0), &currency(0))
}

#[test]
fn a_clean_history_passes() {
    let input = clean_input();
    let violations = audit(&input);
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(input.history.acked.len(), 8);
}

#[test]
fn a_double_apply_is_caught() {
    // The earn applied a second time, balanced (so conservation alone would not see it).
    let mut input = clean_input();
    tamper_ledger(&mut input, |items| {
        adjust_account(items, &m0_sim(), 100, 0);
        adjust_account(items, &AccountKey::system(SystemAccountKind::Issuance, &currency(0)), 0, 100);
    });
    let violations = audit(&input);
    let kinds = kinds(&input);
    assert!(kinds.contains(&ViolationKind::ModelMismatch), "{violations:#?}");
    assert!(kinds.contains(&ViolationKind::ReplicaDiverged), "{violations:#?}");
    assert!(!kinds.contains(&ViolationKind::Conservation), "{violations:#?}");
    assert!(violations.iter().any(|v| v.detail.contains("member:sim-member-0:SIMMILES")), "{violations:#?}");
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    let mut input = clean_input();
    tamper_ledger(&mut input, |items| {
        items.retain(|item| {
            item.key() != ItemKey::Retained(KeyFingerprint::of(&partner(0), &key("redeem-m0")))
        });
    });
    let violations = audit(&input);
    assert!(
        violations.iter().any(|v| v.kind == ViolationKind::AckedMissing && v.detail.contains("redeem-m0")),
        "{violations:#?}"
    );
    // Without the record the redeem's effect is unexplained.
    assert!(kinds(&input).contains(&ViolationKind::ModelMismatch), "{violations:#?}");
}

#[test]
fn a_retry_answered_differently_is_caught() {
    let mut input = clean_input();
    let mut changed = input.history.answers[0].clone();
    changed.outcome.replay = true;
    changed.outcome.log_index += 5;
    changed.at = 1_000;
    input.history.answers.push(changed);
    let violations = audit(&input);
    assert!(
        violations.iter().any(|v| v.kind == ViolationKind::AnswerDiffers && v.detail.contains("earn-m0")),
        "{violations:#?}"
    );
    // The same answer again, marked as a replay, is fine.
    let mut input = clean_input();
    let mut replay = input.history.answers[0].clone();
    replay.outcome.replay = true;
    input.history.answers.push(replay);
    assert!(audit(&input).is_empty());
}

#[test]
fn two_fresh_answers_for_one_key_are_caught() {
    let mut input = clean_input();
    let again = input.history.answers[1].clone();
    input.history.answers.push(again);
    let violations = audit(&input);
    assert!(
        violations.iter().any(|v| v.kind == ViolationKind::AppliedTwice && v.detail.contains("earn-m1")),
        "{violations:#?}"
    );
}

#[test]
fn a_stale_read_is_caught() {
    let mut input = clean_input();
    let last = input.history.reads.last().unwrap().clone();
    // Started after every acknowledgement, but saw the state after the first entry only
    // (with that state's balance, so only the staleness is wrong).
    let first = input.history.reads[0].clone();
    input.history.reads.push(Read { started_at: last.started_at + 1, ..first });
    let violations = audit(&input);
    let kinds = kinds(&input);
    assert_eq!(kinds, vec![ViolationKind::StaleRead], "{violations:#?}");
    assert!(violations[0].detail.contains("member:sim-member-0:SIMMILES"), "{violations:#?}");
}

#[test]
fn a_read_showing_a_value_the_log_never_had_is_caught() {
    let mut input = clean_input();
    let read = input.history.reads.get_mut(2).unwrap();
    read.balance.as_mut().unwrap().balance_points += 1;
    assert_eq!(kinds(&input), vec![ViolationKind::ReadValue]);
}

#[test]
fn points_created_from_nothing_are_caught() {
    let mut input = clean_input();
    tamper_ledger(&mut input, |items| adjust_account(items, &m0_sim(), 5, 0));
    let kinds = kinds(&input);
    assert!(kinds.contains(&ViolationKind::Conservation), "{kinds:?}");
    assert!(kinds.contains(&ViolationKind::ModelMismatch), "{kinds:?}");
}

#[test]
fn a_negative_balance_is_caught() {
    let mut input = clean_input();
    let m1 = AccountKey::member(&member(1), &currency(0));
    tamper_ledger(&mut input, |items| {
        adjust_account(items, &m1, 0, 1_000);
        adjust_account(items, &AccountKey::system(SystemAccountKind::Redemption, &currency(0)), 1_000, 0);
    });
    let violations = audit(&input);
    assert!(
        violations
            .iter()
            .any(|v| v.kind == ViolationKind::NegativeBalance && v.detail.contains("sim-member-1")),
        "{violations:#?}"
    );
}

#[test]
fn a_diverged_replica_is_caught() {
    let mut input = clean_input();
    input.shards[0][1].digest[0] ^= 1;
    assert_eq!(kinds(&input), vec![ViolationKind::ReplicaDiverged]);
    let mut input = clean_input();
    input.shards[0][1].applied_index += 1;
    assert_eq!(kinds(&input), vec![ViolationKind::ReplicaDiverged]);
}

#[test]
fn a_duplicated_statement_line_is_caught() {
    let mut input = clean_input();
    let lines = input.shards[0][0].statements.get_mut(&m0_sim()).unwrap();
    let mut copy = lines[0].clone();
    copy.sequence = lines.len() as u64;
    copy.balance_after_points = lines.last().unwrap().balance_after_points + copy.credit_points;
    lines.push(copy);
    let violations = audit(&input);
    let kinds = kinds(&input);
    assert!(kinds.contains(&ViolationKind::AppliedTwice), "{violations:#?}");
    assert!(kinds.contains(&ViolationKind::Statement), "{violations:#?}");
}

#[test]
fn a_request_that_differs_from_the_journal_is_caught() {
    let mut input = clean_input();
    let sent = input.history.sent.get_mut(&slot("earn-m0")).unwrap();
    let Sent::Single { command, .. } = sent else { panic!("single") };
    command.operation = Operation::Earn {
        member_id: MemberId::parse("sim-member-0").unwrap(),
        currency: currency(0),
        amount_points: 99,
    };
    let violations = audit(&input);
    assert!(
        violations.iter().any(|v| v.kind == ViolationKind::RequestDiffers && v.detail.contains("earn-m0")),
        "{violations:#?}"
    );
}

/// Two shards: an earn applied on shard 0 under a key whose home is shard 1, with (or
/// without) the claim of that key on shard 1.
fn claimed_input(with_claim: bool) -> AuditInput {
    let shard_count = 2;
    let claimed_key = (0..100)
        .map(|n| key(&format!("claimed-{n}")))
        .find(|candidate| tally_ledger::routing::home_shard_of_key(&partner(0), candidate, shard_count) == 1)
        .expect("a key whose home is shard 1");
    let earn = Command {
        partner_id: partner(0),
        idempotency_key: claimed_key.clone(),
        operation: Operation::Earn { member_id: member(0), currency: currency(0), amount_points: 5 },
    };
    let claim =
        Command { operation: Operation::claim_key(member(0), earn.operation.clone()), ..earn.clone() };
    let apply = |ledger: &mut Ledger, command: &Command| {
        let batch = ShardBatch {
            header: BatchHeader { log_time_ms: LOG_TIME_MS, idempotency_retention_ms: RETENTION_MS },
            commands: vec![command.clone()],
        };
        let mut changes = ChangeSet::default();
        (ledger.apply_batch(1, &batch, &mut changes).remove(0), changes)
    };
    let mut home = Ledger::new();
    if with_claim {
        apply(&mut home, &claim);
    }
    let mut members_shard = Ledger::new();
    let (outcome, changes) = apply(&mut members_shard, &earn);
    let mut statements: BTreeMap<AccountKey, Vec<tally_ledger::StatementLine>> = BTreeMap::new();
    for (account, line) in changes.statement_lines {
        statements.entry(account).or_default().push(line);
    }
    let slot = (partner(0), claimed_key);
    let mut history = History::default();
    history.sent.insert(slot.clone(), Sent::Single { shard: 0, command: earn });
    history.answers.push(Answer { slot: slot.clone(), outcome, at: 1 });
    history.acked.insert(slot, 2);
    AuditInput {
        seed: 7,
        shard_count,
        history,
        shards: vec![
            vec![replica(1, &members_shard, &statements), replica(2, &members_shard, &statements)],
            vec![replica(1, &home, &BTreeMap::new()), replica(2, &home, &BTreeMap::new())],
        ],
    }
}

#[test]
fn a_request_applied_without_claiming_its_key_is_caught() {
    let violations = audit(&claimed_input(true));
    assert!(violations.is_empty(), "{violations:#?}");
    let violations = audit(&claimed_input(false));
    assert!(
        violations
            .iter()
            .any(|v| v.kind == ViolationKind::AckedMissing && v.detail.contains("never claimed")),
        "{violations:#?}"
    );
}
