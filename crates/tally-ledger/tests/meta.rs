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
