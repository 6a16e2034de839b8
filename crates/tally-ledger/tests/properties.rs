//! Property tests over random operation sequences: a few members, three currencies, two
//! partners, a small pool of keys (so keys are reused, with the same and with different
//! requests), log times that mostly move forward and sometimes back, and a short retention so
//! keys and holds expire during a run.
//!
//! Method: a concrete list of batches is generated, applied through the harness (which checks
//! change tracking, statements and invariants after every batch) while a model of the
//! idempotency table checks exactly-once; then the same batches are replayed into a fresh
//! ledger, and into one restored from items half-way, and must give identical outcomes and
//! digests.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use proptest::sample::select;
use tally_ledger::*;

const MEMBERS: [&str; 3] = ["ann", "ben", "cat"];
const CURRENCIES: [&str; 3] = [SKY, HOTEL, COFFEE];
const PARTNERS: [&str; 2] = ["skyair", "hotel"];
const TRANSFERS: usize = 4;
const RETENTION_MS: u64 = 4 * HOUR_MS;
/// Log times move in quarter hours, so expiry times often fall exactly on a batch's log time
/// and off-by-one mistakes at the boundary show.
const QUARTER_MS: u64 = HOUR_MS / 4;

/// An operation before it is placed in time and among earlier commands: a hold's expiry is
/// relative to the batch's log time, and reversals, captures and voids name the n-th earlier
/// earn or hold (so they mostly hit something that exists).
#[derive(Clone, Debug)]
enum Body {
    Ready(Operation),
    Hold { who: &'static str, code: &'static str, amount_points: u64, expires_in_ms: u64 },
    Reverse { earn: usize, amount_points: u64 },
    Capture { hold: usize, amount_points: u64 },
    Void { hold: usize },
}

/// How a command's key is chosen: a fresh key, an exact retry of an earlier command, or an
/// earlier command's key reused for another request.
#[derive(Clone, Debug)]
enum Draft {
    Fresh(usize, Body),
    Retry(usize),
    Collide(usize, Body),
}

fn exchange_terms() -> impl Strategy<Value = AgreementTerms> {
    select(vec![
        terms(1, 1),
        AgreementTerms { fee_points: 5, minimum_points: 10, block_size_points: 5, ..terms(3, 2) },
        terms(1, 100),
        AgreementTerms { maximum_points: 50, ..terms(2, 1) },
    ])
}

fn body() -> impl Strategy<Value = Body> {
    let who = || select(MEMBERS.to_vec());
    let code = || select(CURRENCIES.to_vec());
    let points = || 1u64..150;
    let transfer = || (0..TRANSFERS).prop_map(|index| format!("t{index}"));
    let ready = |operation: Operation| Body::Ready(operation);
    prop_oneof![
        1 => (who(), code()).prop_map(move |(w, c)| ready(enrol(w, c))),
        6 => (who(), code(), 1u64..300).prop_map(move |(w, c, a)| ready(earn(w, c, a))),
        3 => (who(), code(), points()).prop_map(move |(w, c, a)| ready(redeem(w, c, a))),
        2 => (0..64usize, 0u64..100).prop_map(|(earn, amount_points)| Body::Reverse { earn, amount_points }),
        3 => (who(), code(), points(), 0u64..12).prop_map(|(who, code, amount_points, quarters)| {
            Body::Hold { who, code, amount_points, expires_in_ms: quarters * QUARTER_MS }
        }),
        2 => (0..64usize, 0u64..120).prop_map(|(hold, amount_points)| Body::Capture { hold, amount_points }),
        1 => (0..64usize).prop_map(|hold| Body::Void { hold }),
        2 => (who(), who(), code(), points()).prop_map(move |(f, t, c, a)| ready(common::transfer(f, t, c, a))),
        2 => (transfer(), who(), who(), code(), points())
            .prop_map(move |(id, f, t, c, a)| ready(transfer_out(&id, f, t, c, a))),
        2 => (transfer(), who(), who(), code(), points())
            .prop_map(move |(id, f, t, c, a)| ready(transfer_in(&id, f, t, c, a))),
        1 => transfer().prop_map(move |id| ready(complete(&id))),
        1 => transfer().prop_map(move |id| ready(refund(&id))),
        2 => (who(), code(), code(), points(), exchange_terms())
            .prop_map(move |(w, f, t, a, terms)| ready(exchange(w, f, t, a, terms))),
    ]
}

fn draft() -> impl Strategy<Value = Draft> {
    prop_oneof![
        8 => (0..PARTNERS.len(), body()).prop_map(|(partner_index, body)| Draft::Fresh(partner_index, body)),
        2 => (0..1_000usize).prop_map(Draft::Retry),
        1 => (0..1_000usize, body()).prop_map(|(earlier, body)| Draft::Collide(earlier, body)),
    ]
}

/// One batch: how far the leader's clock moved (it may go back), and its commands.
fn batch_draft() -> impl Strategy<Value = (i64, Vec<Draft>)> {
    let step_ms = prop_oneof![8 => 0i64..5, 1 => -4i64..0].prop_map(|quarters| quarters * QUARTER_MS as i64);
    (step_ms, prop::collection::vec(draft(), 0..7))
}

/// The n-th (wrapping) earlier command whose operation matches, or a key that names nothing.
fn nth_earlier(issued: &[Command], n: usize, wanted: fn(&Operation) -> bool) -> (PartnerId, String) {
    let matching: Vec<&Command> = issued.iter().filter(|command| wanted(&command.operation)).collect();
    match matching.get(n % matching.len().max(1)) {
        Some(command) => (command.partner_id.clone(), command.idempotency_key.to_string()),
        None => (partner(PARTNERS[n % PARTNERS.len()]), "nothing".to_string()),
    }
}

/// Resolves a body into a command partner and operation; `None` keeps the drafted partner.
fn resolve(body: Body, issued: &[Command], log_time_ms: u64) -> (Option<PartnerId>, Operation) {
    let is_earn = |operation: &Operation| matches!(operation, Operation::Earn { .. });
    let is_hold = |operation: &Operation| matches!(operation, Operation::AuthorizeHold { .. });
    match body {
        Body::Ready(operation) => (None, operation),
        Body::Hold { who, code, amount_points, expires_in_ms } => {
            (None, authorize(who, code, amount_points, log_time_ms + expires_in_ms))
        }
        Body::Reverse { earn, amount_points } => {
            let (partner_id, earn_key) = nth_earlier(issued, earn, is_earn);
            (Some(partner_id), reverse(&earn_key, amount_points))
        }
        Body::Capture { hold, amount_points } => {
            let (partner_id, hold_key) = nth_earlier(issued, hold, is_hold);
            (Some(partner_id), capture(&hold_key, amount_points))
        }
        Body::Void { hold } => {
            let (partner_id, hold_key) = nth_earlier(issued, hold, is_hold);
            (Some(partner_id), void(&hold_key))
        }
    }
}

/// Turns drafts into concrete batches: fresh keys are numbered, retries and collisions pick an
/// earlier command, and hold expiries are set against the log time the ledger will have (log
/// time never goes back).
fn concrete(seeded: bool, drafts: Vec<(i64, Vec<Draft>)>) -> Vec<ShardBatch> {
    let mut stamped_ms = START_MS;
    let mut log_time_ms = 0;
    let mut issued: Vec<Command> = Vec::new();
    let mut batches = Vec::new();
    if seeded {
        batches.push(seed_batch(&mut issued));
    }
    for (step_ms, drafts) in drafts {
        stamped_ms = stamped_ms.saturating_add_signed(step_ms);
        log_time_ms = stamped_ms.max(log_time_ms);
        let mut commands = Vec::new();
        for draft in drafts {
            let fresh_key = format!("k{}", issued.len());
            let command = match draft {
                Draft::Retry(earlier) if !issued.is_empty() => issued[earlier % issued.len()].clone(),
                Draft::Collide(earlier, body) if !issued.is_empty() => {
                    let reused = issued[earlier % issued.len()].clone();
                    let (_, operation) = resolve(body, &issued, log_time_ms);
                    Command { operation, ..reused }
                }
                Draft::Fresh(partner_index, body) | Draft::Collide(partner_index, body) => {
                    let (partner_id, operation) = resolve(body, &issued, log_time_ms);
                    let partner_id = partner_id.unwrap_or_else(|| partner(PARTNERS[partner_index % 2]));
                    Command { partner_id, idempotency_key: key(&fresh_key), operation }
                }
                Draft::Retry(_) => command(PARTNERS[0], &fresh_key, enrol("ann", SKY)),
            };
            issued.push(command.clone());
            commands.push(command);
        }
        let header = BatchHeader { log_time_ms: stamped_ms, idempotency_retention_ms: RETENTION_MS };
        batches.push(ShardBatch { header, commands });
    }
    batches
}

/// Every member earns in every currency, so most later commands find their accounts.
fn seed_batch(issued: &mut Vec<Command>) -> ShardBatch {
    for who in MEMBERS {
        for code in CURRENCIES {
            let seed_key = format!("k{}", issued.len());
            issued.push(command(PARTNERS[0], &seed_key, earn(who, code, 200)));
        }
    }
    let header = BatchHeader { log_time_ms: START_MS, idempotency_retention_ms: RETENTION_MS };
    ShardBatch { header, commands: issued.clone() }
}

/// The model of the idempotency table: which request first used each key, when, and until when
/// the key is remembered.
#[derive(Default)]
struct KeyModel {
    log_time_ms: u64,
    keys: BTreeMap<(PartnerId, IdempotencyKey), (Operation, u64, u64)>,
}

impl KeyModel {
    /// Checks one batch's outcomes; returns the keys whose effects this batch may show.
    fn check(&mut self, log_index: u64, batch: &ShardBatch, outcomes: &[CommandOutcome]) -> BTreeSet<String> {
        self.log_time_ms = self.log_time_ms.max(batch.header.log_time_ms);
        let now_ms = self.log_time_ms;
        self.keys.retain(|_, (_, _, expires_at_ms)| *expires_at_ms > now_ms);
        let mut applied = BTreeSet::new();
        for (command, outcome) in batch.commands.iter().zip(outcomes) {
            let slot = (command.partner_id.clone(), command.idempotency_key.clone());
            match self.keys.get(&slot) {
                Some((operation, first_index, _)) if *operation == command.operation => {
                    assert!(outcome.replay, "a retry of {slot:?} was applied again");
                    assert_eq!(outcome.log_index, *first_index);
                }
                Some(_) => {
                    assert!(!outcome.replay);
                    let reused =
                        matches!(outcome.result, Err(LedgerError::KeyReusedWithDifferentRequest { .. }));
                    assert!(reused, "{slot:?} reused for another request: {outcome:?}");
                }
                None => {
                    assert!(!outcome.replay, "{slot:?} is new but answered as a replay");
                    assert_eq!((outcome.log_index, outcome.log_time_ms), (log_index, now_ms));
                    let retained_ms = match &outcome.result {
                        Ok(OperationResult::HoldAuthorized { hold, .. }) => hold.expires_at_ms.max(now_ms),
                        _ => now_ms,
                    };
                    let expires_at_ms = retained_ms.saturating_add(RETENTION_MS);
                    self.keys.insert(slot, (command.operation.clone(), log_index, expires_at_ms));
                    if outcome.result.is_ok() {
                        applied.insert(format!("{}/{}", command.partner_id, command.idempotency_key));
                    }
                }
            }
        }
        applied
    }
}

fn check_accounts(ledger: &Ledger) {
    for (currency, totals) in ledger.currency_totals() {
        assert_eq!(totals.debits_points, totals.credits_points, "{currency} does not sum to zero");
    }
    for item in ledger.items() {
        let StateItem::Account(AccountKey::Member { member_id, currency }, account) = item else { continue };
        assert!(account.credits_points >= account.debits_points, "{member_id} is negative");
        let view = ledger.balance(&member_id, &currency).unwrap();
        assert_eq!(view.available_points, view.balance_points - view.held_points);
        assert!(view.held_points <= view.balance_points);
    }
}

fn run(batches: &[ShardBatch]) -> Vec<Vec<CommandOutcome>> {
    let mut h = Harness::new();
    let mut model = KeyModel::default();
    let mut all_outcomes = Vec::new();
    for batch in batches {
        let lines_before: usize = h.statements.values().map(Vec::len).sum();
        h.now_ms = batch.header.log_time_ms;
        h.retention_ms = batch.header.idempotency_retention_ms;
        let outcomes = h.batch(batch.commands.clone());
        h.ledger.check_invariants().unwrap();
        check_accounts(&h.ledger);
        let applied = model.check(h.log_index, batch, &outcomes);
        // Every statement line written by this batch belongs to a key first applied in it.
        let lines_after: usize = h.statements.values().map(Vec::len).sum();
        let new_lines = h.statements.values().flatten().filter(|line| line.log_index == h.log_index);
        let mut count = 0;
        for line in new_lines {
            count += 1;
            assert!(applied.contains(&format!("{}/{}", line.partner_id, line.idempotency_key)), "{line:?}");
        }
        assert_eq!(count, lines_after - lines_before);
        all_outcomes.push(outcomes);
    }
    let restored = Ledger::from_items(h.ledger.items());
    assert_eq!(restored, h.ledger);
    assert_eq!(restored.digest(), h.ledger.digest());
    all_outcomes
}

/// Replays the batches into a fresh ledger, restarting it from its items at `restart_at`.
fn replay(batches: &[ShardBatch], restart_at: usize) -> (Vec<Vec<CommandOutcome>>, Ledger) {
    let mut ledger = Ledger::new();
    let mut outcomes = Vec::new();
    for (index, batch) in batches.iter().enumerate() {
        if index == restart_at {
            ledger = Ledger::from_items(ledger.items());
        }
        let mut changes = ChangeSet::default();
        outcomes.push(ledger.apply_batch(index as u64 + 1, batch, &mut changes));
    }
    (outcomes, ledger)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_promise(
        seeded in any::<bool>(),
        drafts in prop::collection::vec(batch_draft(), 1..40),
        restart_percent in 0usize..100,
    ) {
        let batches = concrete(seeded, drafts);
        let outcomes = run(&batches);
        let (replayed, ledger) = replay(&batches, batches.len() * restart_percent / 100);
        prop_assert_eq!(&replayed, &outcomes);
        let (again, other) = replay(&batches, usize::MAX);
        prop_assert_eq!(&again, &outcomes);
        prop_assert_eq!(ledger.digest(), other.digest());
        prop_assert_eq!(ledger, other);
    }
}
