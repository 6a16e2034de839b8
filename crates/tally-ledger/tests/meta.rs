//! The meta group's state (partners, agreements), agreement validation and the exchange
//! arithmetic with its rounding.

mod common;

use common::*;
use tally_ledger::meta::{exchange_quote, validate_terms};
use tally_ledger::*;

fn create(id: &str, code: &str) -> MetaCommand {
    MetaCommand::CreatePartner {
        partner_id: partner(id),
        display_name: format!("{id} rewards"),
        currency: currency(code),
        api_key_sha256: "a".repeat(64),
    }
}

fn set(from: &str, to: &str, terms: AgreementTerms) -> MetaCommand {
    MetaCommand::SetAgreement { from_currency: currency(from), to_currency: currency(to), terms }
}

fn with_two_partners() -> MetaState {
    let mut meta = MetaState::default();
    meta.apply(10, &create("skyair", SKY)).unwrap();
    meta.apply(11, &create("hotel", HOTEL)).unwrap();
    meta
}

#[test]
fn partners_are_created_once_per_id_and_currency() {
    let mut meta = with_two_partners();
    let partner_record = meta.partners[&partner("skyair")].clone();
    assert_eq!((partner_record.created_at_ms, partner_record.currency.as_str()), (10, SKY));
    assert_eq!(meta.partner_by_currency(&currency(HOTEL)).unwrap().partner_id, partner("hotel"));
    assert_eq!(meta.apply(12, &create("skyair", COFFEE)), Err(MetaError::PartnerExists("skyair".into())));
    assert_eq!(
        meta.apply(12, &create("copycat", SKY)),
        Err(MetaError::CurrencyTaken { currency: SKY.into(), partner_id: "skyair".into() })
    );
    assert_eq!(meta.partners.len(), 2);
}

#[test]
fn rotating_a_key_replaces_the_hash_only() {
    let mut meta = with_two_partners();
    let rotate =
        MetaCommand::RotatePartnerKey { partner_id: partner("hotel"), api_key_sha256: "b".repeat(64) };
    let Ok(MetaResult::PartnerKeyRotated(rotated)) = meta.apply(20, &rotate) else { panic!() };
    assert_eq!((rotated.api_key_sha256, rotated.created_at_ms), ("b".repeat(64), 11));
    let unknown =
        MetaCommand::RotatePartnerKey { partner_id: partner("nope"), api_key_sha256: String::new() };
    assert_eq!(meta.apply(21, &unknown), Err(MetaError::PartnerNotFound("nope".into())));
}

#[test]
fn agreements_need_two_issued_currencies_and_valid_terms() {
    let mut meta = with_two_partners();
    let Ok(MetaResult::AgreementSet(agreement)) = meta.apply(30, &set(SKY, HOTEL, terms(1, 2))) else {
        panic!()
    };
    assert_eq!(agreement.updated_at_ms, 30);
    assert_eq!(meta.agreement(&currency(SKY), &currency(HOTEL)), Some(&agreement));
    assert_eq!(meta.agreement(&currency(HOTEL), &currency(SKY)), None, "agreements are one-way");
    // Setting again replaces the terms.
    meta.apply(31, &set(SKY, HOTEL, terms(3, 4))).unwrap();
    assert_eq!(meta.agreement(&currency(SKY), &currency(HOTEL)).unwrap().terms, terms(3, 4));

    assert_eq!(
        meta.apply(32, &set(SKY, COFFEE, terms(1, 1))),
        Err(MetaError::CurrencyNotFound(COFFEE.into()))
    );
    assert_eq!(
        meta.apply(32, &set(COFFEE, SKY, terms(1, 1))),
        Err(MetaError::CurrencyNotFound(COFFEE.into()))
    );
    assert!(matches!(meta.apply(32, &set(SKY, SKY, terms(1, 1))), Err(MetaError::InvalidAgreement(_))));
    let Err(MetaError::InvalidAgreement(reason)) = meta.apply(32, &set(HOTEL, SKY, terms(0, 1))) else {
        panic!()
    };
    assert!(reason.starts_with("rate_numerator"), "{reason}");
    assert_eq!(meta.agreements.len(), 1);
}

#[test]
fn removing_an_agreement() {
    let mut meta = with_two_partners();
    meta.apply(30, &set(SKY, HOTEL, terms(1, 2))).unwrap();
    let remove = MetaCommand::RemoveAgreement { from_currency: currency(SKY), to_currency: currency(HOTEL) };
    assert!(matches!(meta.apply(40, &remove), Ok(MetaResult::AgreementRemoved(_))));
    assert_eq!(
        meta.apply(41, &remove),
        Err(MetaError::AgreementNotFound { from_currency: SKY.into(), to_currency: HOTEL.into() })
    );
}

fn invalid_field(terms: AgreementTerms) -> String {
    validate_terms(&terms).unwrap_err().field
}

#[test]
fn terms_validation_names_the_field() {
    let max = limits::RATE_PART_MAX;
    assert!(validate_terms(&terms(1, 1)).is_ok());
    assert!(validate_terms(&terms(max, max)).is_ok());
    assert_eq!(invalid_field(terms(0, 1)), "rate_numerator");
    assert_eq!(invalid_field(terms(max + 1, 1)), "rate_numerator");
    assert_eq!(invalid_field(terms(1, 0)), "rate_denominator");
    assert_eq!(invalid_field(terms(1, max + 1)), "rate_denominator");
    let bounded = |minimum_points, maximum_points, fee_points| AgreementTerms {
        minimum_points,
        maximum_points,
        fee_points,
        ..terms(1, 1)
    };
    assert_eq!(invalid_field(bounded(10, 9, 0)), "maximum_points");
    assert!(validate_terms(&bounded(10, 10, 9)).is_ok());
    assert!(validate_terms(&bounded(10, 0, 0)).is_ok());
    assert!(validate_terms(&bounded(0, 10, 0)).is_ok());
    assert_eq!(invalid_field(bounded(10, 0, 10)), "fee_points");
    assert_eq!(invalid_field(bounded(0, 10, 10)), "fee_points");
    assert!(validate_terms(&bounded(0, 0, 500)).is_ok(), "with no bounds the fee is checked per amount");
}

#[test]
fn quote_arithmetic_rounds_down() {
    // 1:1, no fee.
    assert_eq!(exchange_quote(&terms(1, 1), 250), Ok((0, 250)));
    // 3 target points per 2 source points: 101 * 3 / 2 = 151.5 -> 151.
    assert_eq!(exchange_quote(&terms(3, 2), 101), Ok((0, 151)));
    // 1 per 100: 199 -> 1, 200 -> 2.
    assert_eq!(exchange_quote(&terms(1, 100), 199), Ok((0, 1)));
    assert_eq!(exchange_quote(&terms(1, 100), 200), Ok((0, 2)));
    // The fee is taken before conversion: (1000 - 50) * 7 / 10 = 665.
    let with_fee = AgreementTerms { fee_points: 50, ..terms(7, 10) };
    assert_eq!(exchange_quote(&with_fee, 1_000), Ok((50, 665)));
    // Large amounts do not overflow: the product is computed in u128.
    let max = limits::AMOUNT_POINTS_MAX;
    let huge = terms(limits::RATE_PART_MAX - 1, limits::RATE_PART_MAX);
    assert_eq!(exchange_quote(&huge, max), Ok((0, max - max / limits::RATE_PART_MAX)));
}

#[test]
fn quote_refusals_say_why() {
    let bounded = AgreementTerms {
        minimum_points: 200,
        maximum_points: 1_000,
        block_size_points: 100,
        fee_points: 10,
        ..terms(1, 1)
    };
    let refuse = |amount| exchange_quote(&bounded, amount).unwrap_err();
    assert_eq!(refuse(150), "amount 150 is below the agreement's minimum of 200");
    assert_eq!(refuse(1_100), "amount 1100 is above the agreement's maximum of 1000");
    assert_eq!(refuse(250), "amount 250 is not a multiple of the agreement's block size of 100");
    assert_eq!(exchange_quote(&bounded, 300), Ok((10, 290)));
    assert_eq!(exchange_quote(&bounded, 1_000), Ok((10, 990)));

    let fee_only = AgreementTerms { fee_points: 10, ..terms(1, 1) };
    assert_eq!(
        exchange_quote(&fee_only, 10).unwrap_err(),
        "amount 10 does not exceed the agreement's fee of 10 points"
    );
    assert_eq!(exchange_quote(&fee_only, 11), Ok((10, 1)));
    let reason = exchange_quote(&terms(1, 100), 99).unwrap_err();
    assert!(reason.contains("less than one point at the rate 1/100"), "{reason}");
    let reason = exchange_quote(&terms(2, 1), limits::AMOUNT_POINTS_MAX).unwrap_err();
    assert!(reason.contains("above the largest amount"), "{reason}");
    let reason = exchange_quote(&terms(1, 0), 10).unwrap_err();
    assert!(reason.contains("rate_denominator"), "{reason}");
    // Block sizes 0 and 1 accept any amount.
    for block_size_points in [0, 1] {
        assert_eq!(exchange_quote(&AgreementTerms { block_size_points, ..terms(1, 1) }, 7), Ok((0, 7)));
    }
}

fn nodes(count: u64) -> Vec<NodeInfo> {
    (1..=count)
        .map(|node_id| NodeInfo { node_id, address: format!("127.0.0.1:{}", 7100 + node_id) })
        .collect()
}

#[test]
fn initial_placement_spreads_replicas_and_first_leaders_evenly() {
    let layout = ClusterLayout::initial(nodes(3), 8, 3).unwrap();
    assert_eq!(layout.shards[0].replicas, vec![1, 2, 3]);
    assert_eq!(layout.shards[1].replicas, vec![2, 3, 1]);
    assert_eq!(layout.shards[5].replicas, vec![3, 1, 2]);
    let mut first_replicas = [0usize; 4];
    for placement in &layout.shards {
        first_replicas[placement.replicas[0] as usize] += 1;
    }
    assert_eq!(&first_replicas[1..], &[3, 3, 2], "first leaders differ by at most one shard");
    // Fewer nodes than the replication factor: every node holds every shard.
    let small = ClusterLayout::initial(nodes(1), 4, 3).unwrap();
    assert!(small.shards.iter().all(|placement| placement.replicas == vec![1]));
    let five = ClusterLayout::initial(nodes(5), 10, 3).unwrap();
    for node_id in 1..=5 {
        assert_eq!(five.shards_on(node_id).len(), 6, "30 replicas over 5 nodes");
    }
    let mut twice = nodes(2);
    twice[1].node_id = 1;
    assert!(
        matches!(ClusterLayout::initial(twice, 4, 3), Err(MetaError::Layout(message)) if message.contains("used by both"))
    );
    assert!(ClusterLayout::initial(Vec::new(), 4, 3).is_err());
    assert!(ClusterLayout::initial(nodes(3), 4, 0).is_err());
}

#[test]
fn the_layout_is_initialized_once_and_changed_only_by_checked_commands() {
    let mut meta = MetaState::default();
    let not_initialized = meta.apply(1, &MetaCommand::AddNode { node_id: 4, address: "a:1".into() });
    assert!(matches!(not_initialized, Err(MetaError::Layout(message)) if message.contains("cluster init")));

    let layout = ClusterLayout::initial(nodes(3), 4, 3).unwrap();
    meta.apply(2, &MetaCommand::InitCluster { layout: layout.clone() }).unwrap();
    // Re-running init with the same layout is harmless; another layout is refused.
    assert_eq!(
        meta.apply(3, &MetaCommand::InitCluster { layout: layout.clone() }),
        Ok(MetaResult::Layout(layout.clone()))
    );
    let other = ClusterLayout::initial(nodes(4), 4, 3).unwrap();
    assert!(meta.apply(4, &MetaCommand::InitCluster { layout: other }).is_err());

    meta.apply(5, &MetaCommand::AddNode { node_id: 4, address: "127.0.0.1:7104".into() }).unwrap();
    let moved = MetaCommand::SetShardReplicas { shard: 2, replicas: vec![4, 1, 2], expected_version: 0 };
    meta.apply(6, &moved).unwrap();
    let current = meta.layout.clone().unwrap();
    assert_eq!((current.shards[2].replicas.clone(), current.shards[2].version), (vec![4, 1, 2], 1));
    // A second move computed from the old version loses the race.
    assert!(
        matches!(meta.apply(7, &moved), Err(MetaError::Layout(message)) if message.contains("version 1"))
    );
    for bad in [
        MetaCommand::SetShardReplicas { shard: 9, replicas: vec![1], expected_version: 1 },
        MetaCommand::SetShardReplicas { shard: 2, replicas: vec![], expected_version: 1 },
        MetaCommand::SetShardReplicas { shard: 2, replicas: vec![1, 1], expected_version: 1 },
        MetaCommand::SetShardReplicas { shard: 2, replicas: vec![1, 9], expected_version: 1 },
    ] {
        let before = meta.clone();
        assert!(matches!(meta.apply(8, &bad), Err(MetaError::Layout(_))), "{bad:?}");
        assert_eq!(meta, before, "a refused command changes nothing");
    }
    // A node holding replicas cannot leave; once its replicas moved, it can.
    let held = meta.apply(9, &MetaCommand::RemoveNode { node_id: 3 });
    assert!(matches!(held, Err(MetaError::Layout(message)) if message.contains("move them first")));
    for shard in current.shards_on(3) {
        let placement = &meta.layout.as_ref().unwrap().shards[shard as usize];
        let replicas = placement.replicas.iter().map(|id| if *id == 3 { 4 } else { *id }).collect();
        let version = placement.version;
        meta.apply(10, &MetaCommand::SetShardReplicas { shard, replicas, expected_version: version })
            .unwrap();
    }
    meta.apply(11, &MetaCommand::RemoveNode { node_id: 3 }).unwrap();
    assert!(!meta.layout.as_ref().unwrap().nodes.contains_key(&3));
    // A removed node's id is never given to another node.
    let reused = meta.apply(12, &MetaCommand::AddNode { node_id: 3, address: "elsewhere:1".into() });
    assert!(matches!(reused, Err(MetaError::Layout(message)) if message.contains("new id")));
    // Init re-run for the same nodes after placement changes: accepted, nothing changes.
    let mut same_nodes = MetaState::default();
    let initial = ClusterLayout::initial(nodes(3), 4, 3).unwrap();
    same_nodes.apply(1, &MetaCommand::InitCluster { layout: initial.clone() }).unwrap();
    same_nodes
        .apply(2, &MetaCommand::SetShardReplicas { shard: 0, replicas: vec![2, 3], expected_version: 0 })
        .unwrap();
    let moved = same_nodes.clone();
    assert_eq!(
        same_nodes.apply(3, &MetaCommand::InitCluster { layout: initial }),
        Ok(MetaResult::Layout(moved.layout.clone().unwrap()))
    );
    assert_eq!(same_nodes, moved);
}
