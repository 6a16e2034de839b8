//! Holds: authorize, capture (whole and partial), void, and expiry by log time only.

mod common;

use common::*;
use tally_ledger::*;

fn hold_result(result: OperationResult) -> (BalanceView, HoldView) {
    match result {
        OperationResult::HoldAuthorized { balance, hold }
        | OperationResult::HoldCaptured { balance, hold }
        | OperationResult::HoldVoided { balance, hold } => (balance, hold),
        other => panic!("not a hold result: {other:?}"),
    }
}

fn funded() -> Harness {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 100));
    h
}

#[test]
fn authorize_reserves_points_without_moving_them() {
    let mut h = funded();
    let expires = START_MS + HOUR_MS;
    let result = h.ok("h1", authorize("alice", SKY, 70, expires - h.now_ms));
    assert!(matches!(result, OperationResult::HoldAuthorized { .. }));
    let (balance, hold) = hold_result(result);
    assert_eq!((balance.balance_points, balance.held_points, balance.available_points), (100, 70, 30));
    assert_eq!(
        hold,
        HoldView {
            hold_key: key("h1"),
            member_id: member("alice"),
            currency: currency(SKY),
            authorized_points: 70,
            captured_points: 0,
            expires_at_ms: expires,
            status: HoldStatus::Open,
        }
    );
    assert_eq!(h.ledger.hold(&partner(PARTNER), &key("h1")), Some(hold));
    assert_eq!(h.lines("alice", SKY).len(), 1, "a hold writes no statement line");
    // Holds stack up to the balance.
    h.ok("h2", authorize("alice", SKY, 30, expires - h.now_ms));
    assert_eq!(
        h.err("h3", authorize("alice", SKY, 1, expires - h.now_ms)),
        LedgerError::InsufficientPoints { available_points: 0, requested_points: 1 }
    );
    assert_eq!(
        h.err("h4", authorize("bob", SKY, 1, expires - h.now_ms)),
        LedgerError::AccountNotFound { member_id: "bob".into(), currency: SKY.into() }
    );
}

#[test]
fn full_capture_moves_the_held_points_to_redemption() {
    let mut h = funded();
    h.ok("h1", authorize("alice", SKY, 70, HOUR_MS));
    let (balance, hold) = hold_result(h.ok("c1", capture("h1", 0)));
    assert_eq!((balance.balance_points, balance.held_points, balance.available_points), (30, 0, 30));
    assert_eq!((hold.status, hold.captured_points), (HoldStatus::Captured, 70));
    assert_eq!(h.system(SystemAccountKind::Redemption, SKY), 70);
    let line = h.lines("alice", SKY).last().unwrap().clone();
    assert_eq!(line.kind, OperationKind::CaptureHold);
    assert_eq!(line.idempotency_key, key("c1"));
    assert_eq!((line.counterparty.as_str(), line.debit_points), ("redemption:SKYMILES", 70));
}

#[test]
fn partial_capture_releases_the_rest_and_closes_the_hold() {
    let mut h = funded();
    h.ok("h1", authorize("alice", SKY, 70, HOUR_MS));
    let (balance, hold) = hold_result(h.ok("c1", capture("h1", 20)));
    assert_eq!((balance.balance_points, balance.held_points, balance.available_points), (80, 0, 80));
    assert_eq!((hold.status, hold.captured_points, hold.authorized_points), (HoldStatus::Captured, 20, 70));
    let closed = LedgerError::HoldClosed { hold_key: "h1".into(), status: "captured".into() };
    assert_eq!(h.err("c2", capture("h1", 10)), closed);
    assert_eq!(h.err("v1", void("h1")), closed);
}

#[test]
fn capture_errors() {
    let mut h = funded();
    assert_eq!(h.err("c0", capture("nope", 0)), LedgerError::HoldNotFound { hold_key: "nope".into() });
    h.ok("h1", authorize("alice", SKY, 70, HOUR_MS));
    assert_eq!(
        h.err("c1", capture("h1", 71)),
        LedgerError::CaptureExceedsHold { requested_points: 71, authorized_points: 70 }
    );
    assert_eq!(h.view("alice", SKY).held_points, 70, "a failed capture keeps the hold");
    // Holds are scoped by partner.
    let error = h.run_as("hotel", "c2", capture("h1", 0)).result.unwrap_err();
    assert_eq!(error, LedgerError::HoldNotFound { hold_key: "h1".into() });
    h.ok("c3", capture("h1", 70));
}

#[test]
fn void_releases_everything() {
    let mut h = funded();
    h.ok("h1", authorize("alice", SKY, 70, HOUR_MS));
    let (balance, hold) = hold_result(h.ok("v1", void("h1")));
    assert_eq!((balance.balance_points, balance.available_points), (100, 100));
    assert_eq!((hold.status, hold.captured_points), (HoldStatus::Voided, 0));
    let closed = LedgerError::HoldClosed { hold_key: "h1".into(), status: "voided".into() };
    assert_eq!(h.err("c1", capture("h1", 0)), closed);
    assert_eq!(h.err("v2", void("h1")), closed);
    assert_eq!(h.err("v3", void("nope")), LedgerError::HoldNotFound { hold_key: "nope".into() });
    assert_eq!(h.lines("alice", SKY).len(), 1);
}

#[test]
fn a_hold_expires_when_log_time_reaches_its_expiry() {
    let mut h = funded();
    let expires = START_MS + HOUR_MS;
    h.ok("h1", authorize("alice", SKY, 70, expires - h.now_ms));
    // Many batches before the expiry time leave it open, however many there are.
    for round in 0..5 {
        h.advance(HOUR_MS / 10);
        h.ok(&format!("n{round}"), enrol("bob", SKY));
    }
    assert_eq!(h.ledger.hold(&partner(PARTNER), &key("h1")).unwrap().status, HoldStatus::Open);
    // A batch whose log time is one millisecond short keeps it open too.
    h.now_ms = expires - 1;
    h.batch(vec![]);
    assert_eq!(h.view("alice", SKY).held_points, 70);
    // The first batch at the expiry time releases it, before its commands run.
    h.now_ms = expires;
    let outcomes = h.batch(vec![command(PARTNER, "r1", redeem("alice", SKY, 100))]);
    assert!(outcomes[0].result.is_ok(), "{:?}", outcomes[0]);
    let hold = h.ledger.hold(&partner(PARTNER), &key("h1")).unwrap();
    assert_eq!(hold.status, HoldStatus::Expired);
    assert_eq!(h.view("alice", SKY).held_points, 0);
    assert_eq!(
        h.err("c1", capture("h1", 0)),
        LedgerError::HoldExpired { hold_key: "h1".into(), expires_at_ms: expires }
    );
    assert_eq!(
        h.err("v1", void("h1")),
        LedgerError::HoldExpired { hold_key: "h1".into(), expires_at_ms: expires }
    );
}

#[test]
fn a_leader_clock_behind_the_log_time_does_not_expire_or_revive_holds() {
    let mut h = funded();
    let expires = START_MS + HOUR_MS;
    h.ok("h1", authorize("alice", SKY, 70, expires - h.now_ms));
    h.now_ms = expires + 10;
    h.batch(vec![]);
    assert_eq!(h.ledger.log_time_ms(), expires + 10);
    // A new leader with a slow clock stamps an earlier time: log time does not go back.
    h.now_ms = START_MS;
    h.batch(vec![]);
    assert_eq!(h.ledger.log_time_ms(), expires + 10);
    assert_eq!(h.ledger.hold(&partner(PARTNER), &key("h1")).unwrap().status, HoldStatus::Expired);
    // A new hold lasts its duration from the log time, not from the stamped time.
    match h.ok("h2", authorize("alice", SKY, 1, HOUR_MS)) {
        OperationResult::HoldAuthorized { hold, .. } => {
            assert_eq!(hold.expires_at_ms, expires + 10 + HOUR_MS)
        }
        other => panic!("{other:?}"),
    }
    // A zero duration would be born expired.
    let error = h.err("h3", authorize("alice", SKY, 1, 0));
    assert!(
        matches!(error, LedgerError::Invalid(ValidationError { ref field, .. }) if field == "expires_in_ms")
    );
}

#[test]
fn expired_holds_are_kept_until_their_retention_ends_then_forgotten() {
    let mut h = funded();
    let expires = START_MS + HOUR_MS;
    h.ok("h1", authorize("alice", SKY, 70, expires - h.now_ms));
    h.now_ms = expires + RETENTION_MS - 1;
    h.batch(vec![]);
    assert!(h.ledger.hold(&partner(PARTNER), &key("h1")).is_some());
    // The authorize's key stays taken as long as the hold it names.
    assert!(h.ledger.operation(&partner(PARTNER), &key("h1")).is_some());
    h.now_ms = expires + RETENTION_MS;
    h.batch(vec![]);
    assert_eq!(h.ledger.hold(&partner(PARTNER), &key("h1")), None);
    assert_eq!(h.ledger.operation(&partner(PARTNER), &key("h1")), None);
    assert_eq!(h.err("c1", capture("h1", 0)), LedgerError::HoldNotFound { hold_key: "h1".into() });
    // The key can now name a new hold.
    h.ok("h1", authorize("alice", SKY, 5, HOUR_MS));
}

#[test]
fn a_hold_outliving_the_retention_keeps_its_key_taken() {
    let mut h = funded();
    let duration_ms = 30 * 24 * HOUR_MS;
    h.ok("h1", authorize("alice", SKY, 70, duration_ms));
    h.advance(RETENTION_MS + HOUR_MS);
    // The retry of the authorize replays instead of reserving the points twice.
    let outcome = h.run("h1", authorize("alice", SKY, 70, duration_ms));
    assert!(outcome.replay);
    assert_eq!(h.view("alice", SKY).held_points, 70);
    h.ok("c1", capture("h1", 0));
}

#[test]
fn many_holds_expire_in_one_batch_deterministically() {
    let mut h = Harness::new();
    for who in ["a", "b", "c", "d"] {
        h.ok(&format!("e-{who}"), earn(who, SKY, 10));
    }
    for (index, who) in ["d", "c", "b", "a"].iter().enumerate() {
        let expires = START_MS + 1 + index as u64;
        h.ok(&format!("h-{who}"), authorize(who, SKY, 10, expires - h.now_ms));
    }
    h.advance(100);
    h.batch(vec![]);
    for who in ["a", "b", "c", "d"] {
        assert_eq!(h.view(who, SKY).available_points, 10);
        let hold = h.ledger.hold(&partner(PARTNER), &key(&format!("h-{who}"))).unwrap();
        assert_eq!(hold.status, HoldStatus::Expired);
    }
}
