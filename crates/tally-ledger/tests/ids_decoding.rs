//! Ids decoded from bincode pass the same checks as `parse`: the node API, Raft entries and
//! stored values are all bincode, and none of them may carry an id `parse` would refuse.

use tally_ledger::{CurrencyCode, IdempotencyKey, MemberId, PartnerId, TransferId};

/// The bytes bincode writes for a string, which is also what it writes for every id.
fn bincode_string(text: &str) -> Vec<u8> {
    bincode::serialize(text).expect("a string encodes")
}

fn refusal<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
    bincode::deserialize::<T>(&bincode_string(text)).expect_err("an invalid id must not decode").to_string()
}

#[test]
fn an_invalid_member_id_in_bincode_is_refused() {
    assert!(refusal::<MemberId>("").contains("member_id must not be empty"));
    assert!(refusal::<MemberId>("bell\u{7}").contains("member_id contains a control character at position 4"));
    assert!(refusal::<MemberId>(&"m".repeat(10_000)).contains("member_id is 10000 bytes long"));
}

#[test]
fn every_id_type_refuses_what_its_parse_refuses() {
    assert!(refusal::<IdempotencyKey>("").contains("idempotency_key must not be empty"));
    assert!(refusal::<IdempotencyKey>("k\n1").contains("idempotency_key contains a control character"));
    assert!(refusal::<TransferId>("\u{0}").contains("transfer_id contains a control character"));
    assert!(refusal::<PartnerId>("SkyAir").contains("partner_id may contain only lower-case letters"));
    assert!(refusal::<PartnerId>("").contains("partner_id must not be empty"));
    assert!(refusal::<CurrencyCode>("X").contains("currency must be 2 to 16"));
    assert!(refusal::<CurrencyCode>("sky").contains("currency may contain only upper-case letters"));
}

#[test]
fn an_invalid_id_inside_a_larger_value_fails_the_whole_value() {
    // A tuple stands for any struct or enum that holds ids: the decoder stops at the bad id.
    let bytes = bincode::serialize(&("alice", "", 5_u64)).unwrap();
    let decoded = bincode::deserialize::<(MemberId, MemberId, u64)>(&bytes);
    assert!(decoded.unwrap_err().to_string().contains("member_id must not be empty"));
}

#[test]
fn valid_ids_round_trip_through_bincode_unchanged() {
    let member = MemberId::parse("alice-ü-42").unwrap();
    let key = IdempotencyKey::parse("order 1/2").unwrap();
    let transfer = TransferId::parse("sky/order-9").unwrap();
    let partner = PartnerId::parse("sky_air-2").unwrap();
    let currency = CurrencyCode::parse("SKY_MILES2").unwrap();
    let value = (member, key, transfer, partner, currency);
    let bytes = bincode::serialize(&value).unwrap();
    // The encoding is still the plain string, so data stored before this check reads back.
    assert_eq!(&bytes[..bincode_string("alice-ü-42").len()], bincode_string("alice-ü-42").as_slice());
    let decoded: (MemberId, IdempotencyKey, TransferId, PartnerId, CurrencyCode) =
        bincode::deserialize(&bytes).unwrap();
    assert_eq!(decoded, value);
}
