//! Every operation's success path and every error it can answer, through `apply_batch`, with
//! balances, system accounts and statement lines checked by value.

mod common;

use common::*;
use tally_ledger::*;

fn insufficient(available_points: u64, requested_points: u64) -> LedgerError {
    LedgerError::InsufficientPoints { available_points, requested_points }
}

fn not_found(who: &str, code: &str) -> LedgerError {
    LedgerError::AccountNotFound { member_id: who.to_string(), currency: code.to_string() }
}

#[test]
fn enrol_opens_an_empty_account_and_is_idempotent_by_nature() {
    let mut h = Harness::new();
    assert_eq!(h.ledger.balance(&member("alice"), &currency(SKY)), None);
    let OperationResult::Enrolled { balance } = h.ok("e1", enrol("alice", SKY)) else { panic!() };
    assert_eq!(
        balance,
        BalanceView {
            member_id: member("alice"),
            currency: currency(SKY),
            balance_points: 0,
            held_points: 0,
            available_points: 0,
        }
    );
    h.ok("e2", earn("alice", SKY, 50));
    // Enrolling again under a new key succeeds and changes nothing.
    let OperationResult::Enrolled { balance } = h.ok("e3", enrol("alice", SKY)) else { panic!() };
    assert_eq!(balance.balance_points, 50);
    assert_eq!(h.lines("alice", SKY).len(), 1, "enrolment writes no statement line");
}

#[test]
fn earn_debits_issuance_and_credits_the_member() {
    let mut h = Harness::new();
    let OperationResult::Earned { balance } = h.ok("e1", earn("alice", SKY, 100)) else { panic!() };
    assert_eq!((balance.balance_points, balance.available_points), (100, 100));
    h.ok("e2", earn("alice", SKY, 25));
    assert_eq!(h.balance("alice", SKY), 125);
    assert_eq!(h.system(SystemAccountKind::Issuance, SKY), -125);
    let record = h.ledger.earn_record(&partner(PARTNER), &key("e1")).unwrap();
    assert_eq!((record.earned_points, record.reversed_points), (100, 0));
    assert_eq!(record.expires_at_ms, START_MS + RETENTION_MS);

    let lines = h.lines("alice", SKY);
    assert_eq!(lines.len(), 2);
    let line = &lines[1];
    assert_eq!(line.sequence, 1);
    assert_eq!(line.kind, OperationKind::Earn);
    assert_eq!(line.counterparty, "issuance:SKYMILES");
    assert_eq!((line.credit_points, line.debit_points, line.balance_after_points), (25, 0, 125));
    assert_eq!(line.idempotency_key, key("e2"));
    assert_eq!(line.partner_id, partner(PARTNER));
    assert_eq!((line.log_index, line.log_time_ms), (2, START_MS));
    assert_eq!(h.ledger.statement_lines(&member("alice"), &currency(SKY)), 2);
    assert_eq!(h.ledger.statement_lines(&member("nobody"), &currency(SKY)), 0);
}

#[test]
fn redeem_debits_the_member_and_credits_redemption() {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 100));
    let OperationResult::Redeemed { balance } = h.ok("r1", redeem("alice", SKY, 60)) else { panic!() };
    assert_eq!(balance.balance_points, 40);
    assert_eq!(h.system(SystemAccountKind::Redemption, SKY), 60);
    let line = h.lines("alice", SKY).last().unwrap().clone();
    assert_eq!(line.counterparty, "redemption:SKYMILES");
    assert_eq!((line.credit_points, line.debit_points, line.balance_after_points), (0, 60, 40));
    // Spending everything is allowed, one more point is not.
    h.ok("r2", redeem("alice", SKY, 40));
    assert_eq!(h.err("r3", redeem("alice", SKY, 1)), insufficient(0, 1));
}

#[test]
fn redeem_errors_change_nothing() {
    let mut h = Harness::new();
    assert_eq!(h.err("r1", redeem("alice", SKY, 1)), not_found("alice", SKY));
    h.ok("e1", earn("alice", SKY, 10));
    let before = h.ledger.items();
    assert_eq!(h.err("r2", redeem("alice", SKY, 11)), insufficient(10, 11));
    assert_eq!(h.err("r3", redeem("alice", HOTEL, 1)), not_found("alice", HOTEL));
    // Only the idempotency records of the failed keys were added.
    let after: Vec<StateItem> =
        h.ledger.items().into_iter().filter(|item| !matches!(item, StateItem::Retained(..))).collect();
    let before: Vec<StateItem> =
        before.into_iter().filter(|item| !matches!(item, StateItem::Retained(..))).collect();
    assert_eq!(after, before);
}

#[test]
fn holds_reduce_what_redeem_and_transfer_can_spend() {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 100));
    h.ok("h1", authorize("alice", SKY, 70, HOUR_MS));
    assert_eq!(h.err("r1", redeem("alice", SKY, 31)), insufficient(30, 31));
    assert_eq!(h.err("t1", transfer("alice", "bob", SKY, 31)), insufficient(30, 31));
    h.ok("r2", redeem("alice", SKY, 30));
    assert_eq!(h.view("alice", SKY).available_points, 0);
}

#[test]
fn reversal_of_part_then_the_rest() {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 100));
    let result = h.ok("v1", reverse("e1", 30));
    let OperationResult::EarnReversed { balance, reversed_points, earn_remaining_points } = result else {
        panic!()
    };
    assert_eq!((balance.balance_points, reversed_points, earn_remaining_points), (70, 30, 70));
    assert_eq!(h.system(SystemAccountKind::Issuance, SKY), -70);
    let line = h.lines("alice", SKY).last().unwrap().clone();
    assert_eq!(line.kind, OperationKind::ReverseEarn);
    assert_eq!(line.counterparty, "issuance:SKYMILES");
    assert_eq!((line.debit_points, line.balance_after_points), (30, 70));

    // Zero reverses whatever is left.
    let result = h.ok("v2", reverse("e1", 0));
    let OperationResult::EarnReversed { balance, reversed_points, earn_remaining_points } = result else {
        panic!()
    };
    assert_eq!((balance.balance_points, reversed_points, earn_remaining_points), (0, 70, 0));
    let record = h.ledger.earn_record(&partner(PARTNER), &key("e1")).unwrap();
    assert_eq!(record.reversed_points, 100);
}

#[test]
fn reversal_errors() {
    let mut h = Harness::new();
    assert_eq!(h.err("v0", reverse("nope", 0)), LedgerError::EarnNotFound { earn_key: "nope".into() });
    h.ok("e1", earn("alice", SKY, 100));
    let exceeds = |requested_points, remaining_points| LedgerError::ReversalExceedsEarn {
        earn_key: "e1".into(),
        requested_points,
        remaining_points,
    };
    assert_eq!(h.err("v1", reverse("e1", 101)), exceeds(101, 100));
    h.ok("v2", reverse("e1", 100));
    assert_eq!(h.err("v3", reverse("e1", 1)), exceeds(1, 0));
    assert_eq!(h.err("v4", reverse("e1", 0)), exceeds(0, 0));

    // The member spent the points: the reversal says so instead of going negative.
    h.ok("e2", earn("bob", SKY, 50));
    h.ok("r1", redeem("bob", SKY, 45));
    assert_eq!(
        h.err("v5", reverse("e2", 10)),
        LedgerError::InsufficientPointsForReversal {
            earn_key: "e2".into(),
            member_id: "bob".into(),
            available_points: 5,
            requested_points: 10,
        }
    );
    assert_eq!(h.balance("bob", SKY), 5);
    h.ok("v6", reverse("e2", 5));

    // Earns are scoped by partner: another partner cannot reverse skyair's earn.
    h.ok("e3", earn("carol", SKY, 10));
    let error = h.run_as("hotel", "v7", reverse("e3", 0)).result.unwrap_err();
    assert_eq!(error, LedgerError::EarnNotFound { earn_key: "e3".into() });
}

#[test]
fn reversal_counts_held_points_as_unavailable() {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 100));
    h.ok("h1", authorize("alice", SKY, 80, HOUR_MS));
    let error = h.err("v1", reverse("e1", 30));
    assert!(matches!(
        error,
        LedgerError::InsufficientPointsForReversal { available_points: 20, requested_points: 30, .. }
    ));
}

#[test]
fn transfer_between_members_of_one_shard() {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 100));
    let OperationResult::Transferred { from, to } = h.ok("t1", transfer("alice", "bob", SKY, 40)) else {
        panic!()
    };
    assert_eq!((from.balance_points, to.balance_points), (60, 40));
    let sent = h.lines("alice", SKY).last().unwrap().clone();
    assert_eq!((sent.counterparty.as_str(), sent.debit_points), ("member:bob:SKYMILES", 40));
    let received = h.lines("bob", SKY).last().unwrap().clone();
    assert_eq!((received.counterparty.as_str(), received.credit_points), ("member:alice:SKYMILES", 40));
    assert_eq!(received.kind, OperationKind::Transfer);

    assert_eq!(h.err("t2", transfer("carol", "bob", SKY, 1)), not_found("carol", SKY));
    assert_eq!(h.err("t3", transfer("alice", "bob", SKY, 61)), insufficient(60, 61));
}

#[test]
fn exchange_converts_through_both_settlement_accounts() {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 1_000));
    let agreement = AgreementTerms { fee_points: 10, ..terms(3, 2) };
    let result = h.ok("x1", exchange("alice", SKY, HOTEL, 500, agreement));
    let OperationResult::Exchanged { from, to, debited_points, fee_points, credited_points } = result else {
        panic!()
    };
    // (500 - 10) * 3 / 2 = 735
    assert_eq!((debited_points, fee_points, credited_points), (500, 10, 735));
    assert_eq!((from.balance_points, to.balance_points), (500, 735));
    assert_eq!(h.system(SystemAccountKind::Settlement, SKY), 500);
    assert_eq!(h.system(SystemAccountKind::Settlement, HOTEL), -735);
    let out = h.lines("alice", SKY).last().unwrap().clone();
    assert_eq!((out.counterparty.as_str(), out.debit_points), ("settlement:SKYMILES", 500));
    let into = h.lines("alice", HOTEL).last().unwrap().clone();
    assert_eq!((into.counterparty.as_str(), into.credit_points), ("settlement:HOTELPTS", 735));
    assert_eq!(into.kind, OperationKind::Exchange);
}

#[test]
fn exchange_errors() {
    let mut h = Harness::new();
    assert_eq!(h.err("x0", exchange("alice", SKY, HOTEL, 10, terms(1, 1))), not_found("alice", SKY));
    h.ok("e1", earn("alice", SKY, 100));
    let minimum = AgreementTerms { minimum_points: 200, ..terms(1, 1) };
    assert_eq!(
        h.err("x1", exchange("alice", SKY, HOTEL, 150, minimum)),
        LedgerError::ExchangeOutsideAgreement {
            amount_points: 150,
            reason: "amount 150 is below the agreement's minimum of 200".into(),
        }
    );
    assert_eq!(h.err("x2", exchange("alice", SKY, HOTEL, 101, terms(1, 1))), insufficient(100, 101));
    // Rounding to nothing is outside the agreement, not a zero credit.
    let error = h.err("x3", exchange("alice", SKY, HOTEL, 99, terms(1, 100)));
    assert!(matches!(error, LedgerError::ExchangeOutsideAgreement { amount_points: 99, .. }), "{error:?}");
    assert_eq!(h.balance("alice", SKY), 100);
    assert_eq!(h.ledger.balance(&member("alice"), &currency(HOTEL)), None);
}

fn invalid_field(error: LedgerError) -> String {
    match error {
        LedgerError::Invalid(validation) => validation.field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn malformed_commands_are_answered_invalid_and_change_nothing() {
    let mut h = Harness::new();
    h.ok("e0", earn("alice", SKY, 100));
    let max = limits::AMOUNT_POINTS_MAX;
    let cases = vec![
        ("amount_points", earn("alice", SKY, 0)),
        ("amount_points", earn("alice", SKY, max + 1)),
        ("amount_points", redeem("alice", SKY, 0)),
        ("amount_points", reverse("e0", max + 1)),
        ("amount_points", authorize("alice", SKY, 0, 1)),
        ("expires_in_ms", authorize("alice", SKY, 1, 0)),
        ("expires_in_ms", authorize("alice", SKY, 1, limits::HOLD_DURATION_MS_MAX + 1)),
        ("expires_in_ms", authorize("alice", SKY, 1, u64::MAX)),
        ("amount_points", capture("h", max + 1)),
        ("amount_points", transfer("alice", "bob", SKY, 0)),
        ("to_member_id", transfer("alice", "alice", SKY, 1)),
        ("to_member_id", transfer_out("t", "alice", "alice", SKY, 1)),
        ("to_member_id", transfer_in("t", "alice", "alice", SKY, 1)),
        ("amount_points", transfer_in("t", "alice", "bob", SKY, 0)),
        ("to_currency", exchange("alice", SKY, SKY, 10, terms(1, 1))),
        ("rate_denominator", exchange("alice", SKY, HOTEL, 10, terms(1, 0))),
        ("rate_numerator", exchange("alice", SKY, HOTEL, 10, terms(limits::RATE_PART_MAX + 1, 1))),
        ("amount_points", exchange("alice", SKY, HOTEL, 0, terms(1, 1))),
    ];
    for (index, (field, operation)) in cases.into_iter().enumerate() {
        let error = h.err(&format!("bad{index}"), operation.clone());
        assert_eq!(invalid_field(error.clone()), field, "{operation:?}");
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
    }
    assert_eq!(h.balance("alice", SKY), 100);
    assert_eq!(h.ledger.balance(&member("bob"), &currency(SKY)), None);
    // The longest hold allowed is accepted.
    h.ok("h1", authorize("alice", SKY, 1, limits::HOLD_DURATION_MS_MAX));
}

#[test]
fn overflow_is_an_error_value_and_changes_nothing() {
    let near = u64::MAX - 5;
    let items = vec![
        StateItem::Account(
            member_account("alice", SKY),
            Account { credits_points: near, ..Account::default() },
        ),
        StateItem::Account(
            system_account(SystemAccountKind::Issuance, SKY),
            Account { debits_points: near, ..Account::default() },
        ),
    ];
    let mut h = Harness::with_ledger(Ledger::from_items(items));
    h.ledger.check_invariants().unwrap();
    let error = h.err("e1", earn("alice", SKY, 10));
    assert!(matches!(&error, LedgerError::Overflow { what } if what.contains("SKYMILES")), "{error:?}");
    assert_eq!(error.code(), ErrorCode::FailedPrecondition);
    assert_eq!(h.balance("alice", SKY), near);
    assert_eq!(h.ledger.earn_record(&partner(PARTNER), &key("e1")), None);
    // Another member's credit overflows the shared issuance account just the same.
    let error = h.err("e2", earn("bob", SKY, 10));
    assert!(matches!(error, LedgerError::Overflow { .. }));
    assert_eq!(h.ledger.balance(&member("bob"), &currency(SKY)), None);
    h.ok("e3", earn("bob", SKY, 5));
}

#[test]
fn every_error_maps_to_its_status_class() {
    use LedgerError::*;
    assert_eq!(EarnNotFound { earn_key: "k".into() }.code(), ErrorCode::NotFound);
    assert_eq!(
        KeyReusedWithDifferentRequest { key: "k".into(), field: "f".into() }.code(),
        ErrorCode::AlreadyExists
    );
    assert_eq!(insufficient(1, 2).code(), ErrorCode::FailedPrecondition);
    let message = insufficient(1, 2).to_string();
    assert_eq!(message, "insufficient points: 1 available, 2 requested");
}
