//! Shared by the benches: identifiers, commands and a pre-funded ledger.

#![allow(dead_code)]

use tally_ledger::*;

pub const PARTNER: &str = "skyair";
pub const SKY: &str = "SKYMILES";
pub const HOTEL: &str = "HOTELPTS";
pub const START_MS: u64 = 1_700_000_000_000;
pub const HOUR_MS: u64 = 3_600_000;
/// Commands per batch in the state machine, idempotency and wire benches.
pub const BATCH: usize = 1_000;
/// Members on the pre-funded ledger; command `i` of a batch acts on member `i % MEMBERS`.
pub const MEMBERS: usize = 1_000;
/// What every member holds in every currency on the pre-funded ledger.
pub const FUNDING_POINTS: u64 = 1_000_000_000;

pub fn member(index: usize) -> MemberId {
    MemberId::parse(format!("member-{index:05}")).unwrap()
}
pub fn currency(code: &str) -> CurrencyCode {
    CurrencyCode::parse(code).unwrap()
}
pub fn key(value: &str) -> IdempotencyKey {
    IdempotencyKey::parse(value).unwrap()
}
pub fn command(idempotency_key: &str, operation: Operation) -> Command {
    Command {
        partner_id: PartnerId::parse(PARTNER).unwrap(),
        idempotency_key: key(idempotency_key),
        operation,
    }
}
pub fn batch(log_time_ms: u64, commands: Vec<Command>) -> ShardBatch {
    ShardBatch {
        header: BatchHeader {
            log_time_ms,
            idempotency_retention_ms: limits::IDEMPOTENCY_RETENTION_MS_DEFAULT,
        },
        commands,
    }
}

pub fn earn(index: usize, code: &str, amount_points: u64) -> Operation {
    Operation::Earn { member_id: member(index % MEMBERS), currency: currency(code), amount_points }
}
pub fn redeem(index: usize, amount_points: u64) -> Operation {
    Operation::Redeem { member_id: member(index % MEMBERS), currency: currency(SKY), amount_points }
}
pub fn transfer(index: usize, amount_points: u64) -> Operation {
    Operation::Transfer {
        from_member_id: member(index % MEMBERS),
        to_member_id: member((index + 1) % MEMBERS),
        currency: currency(SKY),
        amount_points,
    }
}
pub fn authorize(index: usize, amount_points: u64) -> Operation {
    Operation::AuthorizeHold {
        member_id: member(index % MEMBERS),
        currency: currency(SKY),
        amount_points,
        expires_in_ms: HOUR_MS,
    }
}
pub fn capture(hold_key: &str) -> Operation {
    Operation::CaptureHold { hold_key: key(hold_key), amount_points: 0 }
}
pub fn exchange(index: usize, amount_points: u64) -> Operation {
    Operation::Exchange {
        member_id: member(index % MEMBERS),
        from_currency: currency(SKY),
        to_currency: currency(HOTEL),
        amount_points,
        terms: AgreementTerms {
            rate_numerator: 1,
            rate_denominator: 2,
            minimum_points: 0,
            maximum_points: 0,
            block_size_points: 0,
            fee_points: 0,
        },
    }
}

/// `BATCH` commands `operation(i)` keyed `"{prefix}-{i}"`.
pub fn commands(prefix: &str, operation: impl Fn(usize) -> Operation) -> Vec<Command> {
    (0..BATCH).map(|i| command(&format!("{prefix}-{i}"), operation(i))).collect()
}

/// Applies `commands` at `log_index` and panics unless every one succeeded as a first attempt.
pub fn apply_ok(ledger: &mut Ledger, log_index: u64, commands: Vec<Command>) {
    let mut changes = ChangeSet::default();
    for outcome in ledger.apply_batch(log_index, &batch(START_MS, commands), &mut changes) {
        assert!(!outcome.replay, "unexpected replay");
        if let Err(error) = outcome.result {
            panic!("setup command failed: {error}");
        }
    }
}

/// A ledger where each of `MEMBERS` members holds `FUNDING_POINTS` SKYMILES and HOTELPTS.
pub fn funded_ledger() -> Ledger {
    let mut ledger = Ledger::new();
    let sky = (0..MEMBERS).map(|i| command(&format!("fund-sky-{i}"), earn(i, SKY, FUNDING_POINTS)));
    let hotel = (0..MEMBERS).map(|i| command(&format!("fund-hotel-{i}"), earn(i, HOTEL, FUNDING_POINTS)));
    apply_ok(&mut ledger, 1, sky.chain(hotel).collect());
    ledger
}
