//! Exactly once: replays return the stored answer, a reused key names the field that differs,
//! failures are stored like successes, and keys expire by log time only.

mod common;

use common::*;
use tally_ledger::*;

#[test]
fn a_retry_returns_the_original_outcome_marked_as_replay() {
    let mut h = Harness::new();
    let first = h.run("e1", earn("alice", SKY, 100));
    assert!(!first.replay);
    assert_eq!((first.log_index, first.log_time_ms), (1, START_MS));
    h.advance(1_000);
    h.ok("e2", earn("alice", SKY, 1));
    let retry = h.run("e1", earn("alice", SKY, 100));
    assert!(retry.replay);
    assert_eq!(retry.result, first.result, "the original answer, not the current balance");
    assert_eq!((retry.log_index, retry.log_time_ms), (1, START_MS));
    assert_eq!(h.balance("alice", SKY), 101);
    assert_eq!(h.lines("alice", SKY).len(), 2);
    let (operation, stored) = h.ledger.operation(&partner(PARTNER), &key("e1")).unwrap();
    assert_eq!((operation, stored), (earn("alice", SKY, 100), first));
}

#[test]
fn duplicates_inside_one_batch_are_applied_once() {
    let mut h = Harness::new();
    let outcomes = h.batch(vec![
        command(PARTNER, "e1", earn("alice", SKY, 100)),
        command(PARTNER, "e1", earn("alice", SKY, 100)),
        command(PARTNER, "e1", earn("alice", SKY, 7)),
    ]);
    assert!(!outcomes[0].replay && outcomes[1].replay);
    assert_eq!(outcomes[0].result, outcomes[1].result);
    assert_eq!(
        outcomes[2].result,
        Err(LedgerError::KeyReusedWithDifferentRequest { key: "e1".into(), field: "amount_points".into() })
    );
    assert_eq!(h.balance("alice", SKY), 100);
}

#[test]
fn keys_are_scoped_by_partner() {
    let mut h = Harness::new();
    h.run_as("skyair", "k1", earn("alice", SKY, 100));
    let other = h.run_as("hotel", "k1", earn("alice", HOTEL, 5));
    assert!(!other.replay);
    assert!(other.result.is_ok());
    assert_eq!((h.balance("alice", SKY), h.balance("alice", HOTEL)), (100, 5));
}

fn reused_field(h: &mut Harness, idempotency_key: &str, operation: Operation) -> String {
    let outcome = h.run(idempotency_key, operation);
    assert!(!outcome.replay);
    match outcome.result {
        Err(LedgerError::KeyReusedWithDifferentRequest { key, field }) => {
            assert_eq!(key, idempotency_key);
            field
        }
        other => panic!("expected KeyReusedWithDifferentRequest, got {other:?}"),
    }
}

/// Each case: a first request, and variations of it, each naming the field it changes.
fn variations() -> Vec<(Operation, Vec<(&'static str, Operation)>)> {
    let base_terms = AgreementTerms {
        rate_numerator: 2,
        rate_denominator: 3,
        minimum_points: 4,
        maximum_points: 500,
        block_size_points: 1,
        fee_points: 1,
    };
    let exchange_with = |terms: AgreementTerms| exchange("m", SKY, HOTEL, 30, terms);
    vec![
        (enrol("m", SKY), vec![("member_id", enrol("n", SKY)), ("currency", enrol("m", HOTEL))]),
        (
            earn("m", SKY, 5),
            vec![
                ("member_id", earn("n", SKY, 5)),
                ("currency", earn("m", HOTEL, 5)),
                ("amount_points", earn("m", SKY, 6)),
                ("operation type", redeem("m", SKY, 5)),
            ],
        ),
        (redeem("m", SKY, 5), vec![("amount_points", redeem("m", SKY, 4))]),
        (
            reverse("k", 5),
            vec![("earn_idempotency_key", reverse("j", 5)), ("amount_points", reverse("k", 0))],
        ),
        (
            authorize("m", SKY, 5, 10),
            vec![
                ("member_id", authorize("n", SKY, 5, 10)),
                ("amount_points", authorize("m", SKY, 6, 10)),
                ("expires_in_ms", authorize("m", SKY, 5, 11)),
            ],
        ),
        (
            capture("k", 5),
            vec![("hold_idempotency_key", capture("j", 5)), ("amount_points", capture("k", 0))],
        ),
        (void("k"), vec![("hold_idempotency_key", void("j")), ("operation type", capture("k", 0))]),
        (
            transfer("m", "n", SKY, 5),
            vec![
                ("from_member_id", transfer("o", "n", SKY, 5)),
                ("to_member_id", transfer("m", "o", SKY, 5)),
                ("currency", transfer("m", "n", HOTEL, 5)),
                ("amount_points", transfer("m", "n", SKY, 6)),
            ],
        ),
        (
            transfer_out("t", "m", "n", SKY, 5),
            vec![
                ("transfer_id", transfer_out("u", "m", "n", SKY, 5)),
                ("from_member_id", transfer_out("t", "o", "n", SKY, 5)),
                ("to_member_id", transfer_out("t", "m", "o", SKY, 5)),
                ("currency", transfer_out("t", "m", "n", HOTEL, 5)),
                ("amount_points", transfer_out("t", "m", "n", SKY, 6)),
                ("operation type", transfer_in("t", "m", "n", SKY, 5)),
            ],
        ),
        (transfer_in("t", "m", "n", SKY, 5), vec![("amount_points", transfer_in("t", "m", "n", SKY, 1))]),
        (complete("t"), vec![("transfer_id", complete("u")), ("operation type", refund("t"))]),
        (refund("t"), vec![("transfer_id", refund("u"))]),
        (
            exchange_with(base_terms.clone()),
            vec![
                ("member_id", exchange("n", SKY, HOTEL, 30, base_terms.clone())),
                ("from_currency", exchange("m", COFFEE, HOTEL, 30, base_terms.clone())),
                ("to_currency", exchange("m", SKY, COFFEE, 30, base_terms.clone())),
                ("amount_points", exchange("m", SKY, HOTEL, 31, base_terms.clone())),
                (
                    "terms.rate_numerator",
                    exchange_with(AgreementTerms { rate_numerator: 1, ..base_terms.clone() }),
                ),
                (
                    "terms.rate_denominator",
                    exchange_with(AgreementTerms { rate_denominator: 1, ..base_terms.clone() }),
                ),
                (
                    "terms.minimum_points",
                    exchange_with(AgreementTerms { minimum_points: 5, ..base_terms.clone() }),
                ),
                (
                    "terms.maximum_points",
                    exchange_with(AgreementTerms { maximum_points: 5, ..base_terms.clone() }),
                ),
                (
                    "terms.block_size_points",
                    exchange_with(AgreementTerms { block_size_points: 2, ..base_terms.clone() }),
                ),
                ("terms.fee_points", exchange_with(AgreementTerms { fee_points: 0, ..base_terms.clone() })),
                (
                    "amount_points",
                    exchange("m", SKY, HOTEL, 31, AgreementTerms { fee_points: 0, ..base_terms.clone() }),
                ),
            ],
        ),
    ]
}

#[test]
fn a_reused_key_names_the_first_field_that_differs() {
    let mut h = Harness::new();
    for (index, (first, changed)) in variations().into_iter().enumerate() {
        let idempotency_key = format!("key{index}");
        let original = h.run(&idempotency_key, first.clone());
        for (field, operation) in changed {
            assert_eq!(reused_field(&mut h, &idempotency_key, operation), field, "{first:?}");
        }
        // Nothing was stored for the rejected requests: the first one still replays.
        let replay = h.run(&idempotency_key, first);
        assert!(replay.replay);
        assert_eq!(replay.result, original.result);
    }
}

#[test]
fn a_failed_first_attempt_fails_the_same_way_forever() {
    let mut h = Harness::new();
    let first = h.run("r1", redeem("alice", SKY, 50));
    let expected = Err(LedgerError::AccountNotFound { member_id: "alice".into(), currency: SKY.into() });
    assert_eq!(first.result, expected);
    // The member could now redeem, but the key is spent on the failure.
    h.ok("e1", earn("alice", SKY, 100));
    h.advance(RETENTION_MS - 1);
    let retry = h.run("r1", redeem("alice", SKY, 50));
    assert!(retry.replay);
    assert_eq!(retry.result, expected);
    assert_eq!((retry.log_index, retry.log_time_ms), (first.log_index, first.log_time_ms));
    assert_eq!(h.balance("alice", SKY), 100);
    // Invalid requests are stored too.
    let invalid = h.run("r2", redeem("alice", SKY, 0));
    assert!(matches!(invalid.result, Err(LedgerError::Invalid(_))));
    let again = h.run("r2", redeem("alice", SKY, 0));
    assert!(again.replay);
    assert_eq!(again.result, invalid.result);
}

#[test]
fn keys_expire_by_log_time_and_are_then_applied_anew() {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 100));
    h.now_ms = START_MS + RETENTION_MS - 1;
    assert!(h.run("e1", earn("alice", SKY, 100)).replay);
    // The earn can still be reversed until the retention ends.
    assert!(h.ledger.earn_record(&partner(PARTNER), &key("e1")).is_some());
    h.now_ms = START_MS + RETENTION_MS;
    let outcome = h.run("e1", earn("alice", SKY, 100));
    assert!(!outcome.replay, "after the retention the key is new again");
    assert_eq!(outcome.log_time_ms, START_MS + RETENTION_MS);
    assert_eq!(h.balance("alice", SKY), 200);
    assert_eq!(h.ledger.operation(&partner(PARTNER), &key("e1")).unwrap().1.log_index, outcome.log_index);
}

#[test]
fn the_retention_is_taken_from_the_batch_that_applied_the_key() {
    let mut h = Harness::new();
    h.retention_ms = HOUR_MS;
    h.ok("e1", earn("alice", SKY, 10));
    h.retention_ms = RETENTION_MS;
    h.advance(HOUR_MS);
    h.batch(vec![]);
    assert_eq!(h.ledger.operation(&partner(PARTNER), &key("e1")), None);
    assert_eq!(h.ledger.earn_record(&partner(PARTNER), &key("e1")), None);
    assert_eq!(h.err("v1", reverse("e1", 0)), LedgerError::EarnNotFound { earn_key: "e1".into() });
}

#[test]
fn keys_do_not_expire_while_log_time_stands_still() {
    let mut h = Harness::new();
    h.retention_ms = HOUR_MS;
    h.ok("e1", earn("alice", SKY, 10));
    // Hundreds of batches stamped with an old time: nothing expires.
    h.now_ms = START_MS - 5 * HOUR_MS;
    for _ in 0..300 {
        h.batch(vec![]);
    }
    assert!(h.run("e1", earn("alice", SKY, 10)).replay);
    assert_eq!(h.ledger.log_time_ms(), START_MS);
}

#[test]
fn zero_retention_keeps_a_key_for_its_own_batch_only() {
    let mut h = Harness::new();
    h.retention_ms = 0;
    let outcomes = h.batch(vec![
        command(PARTNER, "e1", earn("alice", SKY, 10)),
        command(PARTNER, "e1", earn("alice", SKY, 10)),
    ]);
    assert!(outcomes[1].replay);
    let outcome = h.run("e1", earn("alice", SKY, 10));
    assert!(!outcome.replay);
    assert_eq!(h.balance("alice", SKY), 20);
}

#[test]
fn huge_retention_saturates_instead_of_overflowing() {
    let mut h = Harness::new();
    h.retention_ms = u64::MAX;
    h.ok("e1", earn("alice", SKY, 10));
    h.ok("h1", authorize("alice", SKY, 5, HOUR_MS));
    let (_, outcome) = h.ledger.operation(&partner(PARTNER), &key("e1")).unwrap();
    assert!(!outcome.replay);
    assert_eq!(h.ledger.earn_record(&partner(PARTNER), &key("e1")).unwrap().expires_at_ms, u64::MAX);
    h.advance(2 * HOUR_MS);
    h.batch(vec![]);
    assert_eq!(h.view("alice", SKY).held_points, 0);
}

// ---- key claims: one key, one request, across shards ----------------------------------

fn claim(who: &str, request: Operation) -> Operation {
    Operation::claim_key(member(who), request)
}

fn reuse_field(outcome: &CommandOutcome) -> &str {
    match &outcome.result {
        Err(LedgerError::KeyReusedWithDifferentRequest { field, .. }) => field,
        other => panic!("expected a refused key reuse, got {other:?}"),
    }
}

#[test]
fn a_claim_reserves_the_key_and_moves_nothing() {
    let mut h = Harness::new();
    h.ok("e0", earn("carol", SKY, 10));
    let items_before = h.ledger.items().len();
    let first = h.run("k1", claim("alice", earn("alice", SKY, 100)));
    assert_eq!(first.result, Ok(OperationResult::KeyClaimed));
    assert!(!first.replay);
    // Only the claim's own record is new: no account, no statement line, no points.
    assert_eq!(h.ledger.items().len(), items_before + 1);
    assert!(h.lines("alice", SKY).is_empty());
    assert_eq!(h.balance("carol", SKY), 10);
    h.advance(1_000);
    let retry = h.run("k1", claim("alice", earn("alice", SKY, 100)));
    assert!(retry.replay);
    assert_eq!((retry.result, retry.log_index), (Ok(OperationResult::KeyClaimed), first.log_index));
}

#[test]
fn a_claimed_key_refuses_any_other_request() {
    let mut h = Harness::new();
    h.ok("k1", claim("alice", earn("alice", SKY, 100)));
    let before = h.ledger.items();
    // Another member on a third shard (another claim) and another member on this shard (the
    // operation itself, since this shard is the key's home): both refused, naming the field.
    assert_eq!(reuse_field(&h.run("k1", claim("bob", earn("bob", SKY, 100)))), "member_id");
    assert_eq!(reuse_field(&h.run("k1", claim("alice", earn("alice", SKY, 99)))), "amount_points");
    assert_eq!(reuse_field(&h.run("k1", earn("dave", SKY, 100))), "member_id");
    assert_eq!(reuse_field(&h.run("k1", redeem("dave", SKY, 100))), "operation type");
    // Even the very request claimed, arriving here as an operation, is refused: its member
    // lives on another shard, where it is applied.
    assert_eq!(reuse_field(&h.run("k1", earn("alice", SKY, 100))), "member_id");
    let mut after = h.ledger.items();
    after.retain(|item| !matches!(item, state::StateItem::Clock { .. }));
    let mut before = before;
    before.retain(|item| !matches!(item, state::StateItem::Clock { .. }));
    assert_eq!(after, before, "a refused request changes nothing");
}

#[test]
fn an_applied_key_refuses_claims_for_other_requests() {
    let mut h = Harness::new();
    h.ok("k1", earn("alice", SKY, 100));
    assert_eq!(reuse_field(&h.run("k1", claim("bob", earn("bob", SKY, 100)))), "member_id");
    assert_eq!(reuse_field(&h.run("k1", claim("alice", earn("alice", SKY, 100)))), "member_id");
    assert_eq!(h.balance("alice", SKY), 100);
}

#[test]
fn an_exchange_claim_leaves_the_terms_to_the_members_shard() {
    let mut h = Harness::new();
    h.ok("x1", claim("alice", exchange("alice", SKY, HOTEL, 40, terms(1, 2))));
    // The agreement changed between the attempts: the claim still matches the retry.
    let retry = h.run("x1", claim("alice", exchange("alice", SKY, HOTEL, 40, terms(1, 1))));
    assert!(retry.replay, "{retry:?}");
    assert_eq!(
        reuse_field(&h.run("x1", claim("alice", exchange("alice", SKY, HOTEL, 41, terms(1, 1))))),
        "amount_points"
    );
}

#[test]
fn a_claim_of_a_claim_is_invalid() {
    let mut h = Harness::new();
    let nested = Operation::ClaimKey {
        member_id: member("alice"),
        request: Box::new(claim("alice", earn("alice", SKY, 1))),
    };
    let outcome = h.run("k1", nested);
    assert!(matches!(outcome.result, Err(LedgerError::Invalid(_))), "{outcome:?}");
}

#[test]
fn claims_survive_persistence_and_keep_the_digest_deterministic() {
    let mut first = Harness::new();
    let mut second = Harness::new();
    for h in [&mut first, &mut second] {
        h.ok("k1", claim("alice", earn("alice", SKY, 100)));
        h.ok("k2", earn("bob", SKY, 5));
    }
    assert_eq!(first.ledger.digest(), second.ledger.digest());
    let mut h = Harness::with_ledger(Ledger::from_items(first.ledger.items()));
    assert_eq!(h.ledger.digest(), first.ledger.digest());
    assert_eq!(reuse_field(&h.run("k1", earn("dave", SKY, 100))), "member_id");
}
