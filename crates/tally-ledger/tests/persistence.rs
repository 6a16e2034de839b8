//! Persisted items: snapshot and restore round trip exactly (indexes included), the digest is
//! reproducible from the items alone, and a ledger restored mid-stream carries on identically.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use tally_ledger::*;

/// A little of everything: accounts, earns, holds in every state, transfers, exchanges.
fn busy_harness() -> Harness {
    let mut h = Harness::new();
    h.ok("e1", earn("alice", SKY, 500));
    h.ok("e2", earn("bob", SKY, 300));
    h.ok("n1", enrol("carol", HOTEL));
    h.ok("h1", authorize("alice", SKY, 50, HOUR_MS));
    h.ok("h2", authorize("alice", SKY, 20, 2 * HOUR_MS));
    h.ok("h3", authorize("bob", SKY, 10, 3 * HOUR_MS));
    h.ok("c1", capture("h2", 5));
    h.ok("t1", transfer_out("x1", "alice", "zed", SKY, 30));
    h.ok("t2", transfer_in("y1", "mallory", "bob", SKY, 7));
    h.ok("x1", exchange("bob", SKY, HOTEL, 100, terms(2, 1)));
    h.err("r1", redeem("carol", SKY, 1));
    h.advance(HOUR_MS);
    h.ok("v1", reverse("e2", 3));
    h
}

fn hash_items(items: &[StateItem]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for item in items {
        hasher.update(item.canonical_bytes());
    }
    hasher.finalize().into()
}

#[test]
fn items_round_trip_exactly() {
    let h = busy_harness();
    let items = h.ledger.items();
    let restored = Ledger::from_items(items.clone());
    assert_eq!(restored, h.ledger);
    assert_eq!(restored.digest(), h.ledger.digest());
    assert_eq!(restored.items(), items);
    restored.check_invariants().unwrap();
    // Any order restores the same ledger.
    let reversed = Ledger::from_items(items.iter().rev().cloned());
    assert_eq!(reversed, h.ledger);
}

#[test]
fn items_come_out_in_key_order_and_match_item_lookups() {
    let h = busy_harness();
    let items = h.ledger.items();
    let keys: Vec<ItemKey> = items.iter().map(StateItem::key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted);
    for item in &items {
        assert_eq!(h.ledger.item(&item.key()).as_ref(), Some(item));
    }
    assert_eq!(h.ledger.item(&ItemKey::Clock), Some(StateItem::Clock { log_time_ms: START_MS + HOUR_MS }));
    assert_eq!(h.ledger.item(&ItemKey::Transfer(transfer_id("nope"))), None);
}

#[test]
fn the_digest_is_sha256_over_the_canonical_items() {
    let h = busy_harness();
    assert_eq!(h.ledger.digest(), hash_items(&h.ledger.items()));
    assert_eq!(Ledger::new().digest(), hash_items(&[StateItem::Clock { log_time_ms: 0 }]));
    let mut other = busy_harness();
    other.ok("e9", earn("alice", SKY, 1));
    assert_ne!(other.ledger.digest(), h.ledger.digest());
}

#[test]
fn a_ledger_restored_mid_stream_carries_on_identically() {
    let mut straight = busy_harness();
    let mut restarted = Harness::with_ledger(Ledger::from_items(straight.ledger.items()));
    restarted.log_index = straight.log_index;
    restarted.now_ms = straight.now_ms;
    // Statement lines live in the store, not in the ledger's items.
    restarted.statements = straight.statements.clone();
    let steps: Vec<(u64, Vec<Command>)> = vec![
        (0, vec![command(PARTNER, "c2", capture("h1", 0)), command(PARTNER, "e1", earn("alice", SKY, 500))]),
        (HOUR_MS, vec![command(PARTNER, "t1-done", complete("x1"))]),
        (RETENTION_MS, vec![command(PARTNER, "e1", earn("alice", SKY, 500))]),
        (10 * RETENTION_MS, vec![]),
    ];
    for (advance_ms, commands) in steps {
        straight.advance(advance_ms);
        restarted.advance(advance_ms);
        let expected = straight.batch(commands.clone());
        assert_eq!(restarted.batch(commands), expected);
        assert_eq!(restarted.ledger, straight.ledger);
        assert_eq!(restarted.ledger.digest(), straight.ledger.digest());
    }
    // Everything with a retention is gone; accounts and the clock remain.
    let remaining = straight.ledger.items();
    assert!(remaining.iter().all(|item| matches!(item, StateItem::Account(..) | StateItem::Clock { .. })));
}

#[test]
fn change_sets_accumulate_across_batches_and_name_deletions() {
    let mut ledger = Ledger::new();
    let mut changes = ChangeSet::default();
    let header = BatchHeader { log_time_ms: START_MS, idempotency_retention_ms: HOUR_MS };
    let batch = ShardBatch { header, commands: vec![command(PARTNER, "e1", earn("alice", SKY, 10))] };
    ledger.apply_batch(1, &batch, &mut changes);
    let later = BatchHeader { log_time_ms: START_MS + HOUR_MS, ..header };
    ledger.apply_batch(2, &ShardBatch { header: later, commands: vec![] }, &mut changes);
    let expected: Vec<ItemKey> = vec![
        ItemKey::Account(member_account("alice", SKY)),
        ItemKey::Account(system_account(SystemAccountKind::Issuance, SKY)),
        ItemKey::Retained(KeyFingerprint::of(&partner(PARTNER), &key("e1"))),
        ItemKey::Clock,
    ];
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    // An item changed twice may be named twice: the store deduplicates.
    let mut dirty: Vec<ItemKey> = changes.dirty.to_vec();
    dirty.sort();
    dirty.dedup();
    assert_eq!(dirty, expected_sorted);
    assert_eq!(
        ledger.item(&ItemKey::Retained(KeyFingerprint::of(&partner(PARTNER), &key("e1")))),
        None,
        "deleted"
    );
    assert_eq!(changes.statement_lines.len(), 1);
    changes.clear();
    assert!(changes.dirty.is_empty() && changes.statement_lines.is_empty());
    // A batch that changes nothing names nothing, not even the clock.
    ledger.apply_batch(3, &ShardBatch { header: later, commands: vec![] }, &mut changes);
    assert!(changes.dirty.is_empty());
}
