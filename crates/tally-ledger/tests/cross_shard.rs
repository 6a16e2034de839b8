//! Cross-shard transfer: two ledgers stand for the source and destination shards; every step
//! is checked for conservation on each shard and across both.

mod common;

use common::*;
use tally_ledger::*;

fn source_with_alice() -> Harness {
    let mut source = Harness::new();
    source.ok("e1", earn("alice", SKY, 100));
    source
}

fn transit(h: &Harness) -> i128 {
    h.system(SystemAccountKind::Transit, SKY)
}

#[test]
fn out_in_complete_moves_points_exactly_once() {
    let mut source = source_with_alice();
    let mut destination = Harness::new();

    let result = source.ok("t1", transfer_out("skyair:t1", "alice", "bob", SKY, 40));
    let OperationResult::TransferredOut { from, transfer_id: id } = result else { panic!() };
    assert_eq!((from.balance_points, id), (60, transfer_id("skyair:t1")));
    assert_eq!(transit(&source), 40);
    let record = source.ledger.transfer(&transfer_id("skyair:t1")).unwrap();
    assert_eq!(record.status, TransferStatus::Open);
    assert_eq!((record.amount_points, record.forget_at_ms, record.opened_at_ms), (40, u64::MAX, START_MS));
    assert_eq!(source.ledger.open_transfers(), vec![(transfer_id("skyair:t1"), record)]);
    let line = source.lines("alice", SKY).last().unwrap().clone();
    assert_eq!((line.counterparty.as_str(), line.kind), ("transit:SKYMILES", OperationKind::TransferOut));

    let result = destination.ok("t1-in", transfer_in("skyair:t1", "alice", "bob", SKY, 40));
    let OperationResult::TransferredIn { to, .. } = result else { panic!() };
    assert_eq!(to.balance_points, 40);
    assert_eq!(transit(&destination), -40);
    // The resolver retries under another key: deduplicated by transfer id, paid once.
    let result = destination.ok("t1-in-retry", transfer_in("skyair:t1", "alice", "bob", SKY, 40));
    let OperationResult::TransferredIn { to, .. } = result else { panic!() };
    assert_eq!(to.balance_points, 40);
    assert_eq!(destination.lines("bob", SKY).len(), 1);
    let marker = destination.ledger.transfer(&transfer_id("skyair:t1")).unwrap();
    assert_eq!(marker.status, TransferStatus::Completed);
    assert!(destination.ledger.open_transfers().is_empty());

    let result = source.ok("t1-done", complete("skyair:t1"));
    let completed = OperationResult::TransferCompleted {
        transfer_id: transfer_id("skyair:t1"),
        status: TransferStatus::Completed,
    };
    assert_eq!(result, completed);
    assert_eq!(source.ok("t1-done-again", complete("skyair:t1")), completed);
    assert!(source.ledger.open_transfers().is_empty());
    assert_eq!(source.balance("alice", SKY), 60, "completion moves no points");
    // Across both shards the transit accounts cancel out.
    assert_eq!(transit(&source) + transit(&destination), 0);
}

#[test]
fn refund_gives_the_points_back() {
    let mut source = source_with_alice();
    source.ok("t1", transfer_out("x1", "alice", "bob", SKY, 40));
    let result = source.ok("t1-refund", refund("x1"));
    let OperationResult::TransferRefunded { from, .. } = result else { panic!() };
    assert_eq!(from.balance_points, 100);
    assert_eq!(transit(&source), 0);
    let line = source.lines("alice", SKY).last().unwrap().clone();
    assert_eq!((line.kind, line.credit_points), (OperationKind::TransferRefund, 40));
    // Refunding again is idempotent; completing a refunded transfer is not allowed.
    let again = source.ok("t1-refund-2", refund("x1"));
    assert!(
        matches!(again, OperationResult::TransferRefunded { ref from, .. } if from.balance_points == 100)
    );
    assert_eq!(
        source.err("t1-done", complete("x1")),
        LedgerError::TransferClosed { transfer_id: "x1".into(), status: "refunded".into() }
    );
}

#[test]
fn transfer_step_errors() {
    let mut source = source_with_alice();
    let unknown = LedgerError::TransferNotFound { transfer_id: "nope".into() };
    assert_eq!(source.err("a", complete("nope")), unknown);
    assert_eq!(source.err("b", refund("nope")), unknown);
    assert_eq!(
        source.err("c", transfer_out("x1", "alice", "bob", SKY, 101)),
        LedgerError::InsufficientPoints { available_points: 100, requested_points: 101 }
    );
    assert_eq!(
        source.err("d", transfer_out("x1", "zed", "bob", SKY, 1)),
        LedgerError::AccountNotFound { member_id: "zed".into(), currency: SKY.into() }
    );
    assert_eq!(source.ledger.transfer(&transfer_id("x1")), None, "a failed step leaves no record");
    source.ok("e", transfer_out("x1", "alice", "bob", SKY, 10));
    // The same transfer id under a new key is refused, whatever the record's state.
    assert_eq!(
        source.err("f", transfer_out("x1", "alice", "bob", SKY, 10)),
        LedgerError::TransferClosed { transfer_id: "x1".into(), status: "open".into() }
    );
    source.ok("g", complete("x1"));
    assert_eq!(
        source.err("h", refund("x1")),
        LedgerError::TransferClosed { transfer_id: "x1".into(), status: "completed".into() }
    );
    assert_eq!(source.balance("alice", SKY), 90);
}

#[test]
fn open_transfers_never_expire_closed_ones_do() {
    let mut source = source_with_alice();
    source.ok("t1", transfer_out("x1", "alice", "bob", SKY, 10));
    source.ok("t2", transfer_out("x2", "alice", "bob", SKY, 10));
    source.ok("t2-done", complete("x2"));
    source.advance(RETENTION_MS * 10);
    source.batch(vec![]);
    assert_eq!(source.ledger.transfer(&transfer_id("x1")).unwrap().status, TransferStatus::Open);
    assert_eq!(source.ledger.transfer(&transfer_id("x2")), None);
    assert_eq!(source.ledger.open_transfers().len(), 1);
    // The resolver can still finish the old one.
    source.ok("t1-refund", refund("x1"));
    assert_eq!(source.balance("alice", SKY), 90);
}

#[test]
fn transfer_in_markers_are_forgotten_after_the_retention() {
    let mut destination = Harness::new();
    destination.ok("i1", transfer_in("x1", "alice", "bob", SKY, 5));
    let marker = destination.ledger.transfer(&transfer_id("x1")).unwrap();
    assert_eq!(marker.forget_at_ms, START_MS + RETENTION_MS);
    destination.now_ms = START_MS + RETENTION_MS;
    destination.batch(vec![]);
    assert_eq!(destination.ledger.transfer(&transfer_id("x1")), None);
}
