//! Ledger apply under arbitrary command sequences.
//!
//! The input bytes are read by [`arbitrary::Unstructured`] into a sequence of batches. Ids come
//! from small pools so that keys collide (replays, reuse with another request), members run out
//! of points, holds expire and transfers close; amounts mix the interesting edges (0, 1, the
//! per-operation maximum, one above it, `u64::MAX`) with arbitrary values, because a batch in
//! the log was written by a leader the state machine must not trust. Every id is valid: the id
//! types deserialize through `parse`, so not even bincode can hand apply an invalid one
//! (`command_decode` fuzzes that).
//!
//! Three ledgers apply the sequence: `primary`; `twin`, which must end with the same digest;
//! and a model of what a replica persists (only the items each batch's `ChangeSet` names),
//! from which a restarted replica must rebuild the very same state. After every batch:
//! - the ledger's own audit (`check_invariants`: per-currency conservation, no negative
//!   member balance, holds and indexes consistent);
//! - per-currency debits equal credits, computed here again from `currency_totals`;
//! - for every member account, `available = balance - held` and `held <= balance`;
//! - a command whose key was applied before, with the same operation, answers the stored
//!   outcome marked as a replay; with another operation it is refused as a key reuse.

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use tally_ledger::limits::{AMOUNT_POINTS_MAX, HOLD_DURATION_MS_MAX};
use tally_ledger::state::{ChangeSet, ItemKey, StateItem};
use tally_ledger::{
    AgreementTerms, BatchHeader, Command, CommandOutcome, CurrencyCode, IdempotencyKey, Ledger, LedgerError,
    MemberId, Operation, PartnerId, ShardBatch, TransferId,
};

/// Most batches in one input, and commands in one batch: enough to reach expiry and
/// replays, small enough to keep thousands of executions per second.
const BATCHES_MAX: usize = 24;
const BATCH_COMMANDS_MAX: usize = 12;
/// Longer than any log time the input can reach (24 batches of at most 2^32 ms), so every
/// idempotency record is still retained when a replay is checked.
const RETENTION_MS: u64 = 1 << 40;
const START_LOG_TIME_MS: u64 = 1_700_000_000_000;

/// The pools every command draws from.
struct Pools {
    partners: Vec<(PartnerId, CurrencyCode)>,
    members: Vec<MemberId>,
    keys: Vec<IdempotencyKey>,
    transfers: Vec<TransferId>,
}

impl Pools {
    fn new() -> Self {
        let partner = |id: &str, currency: &str| {
            (PartnerId::parse(id).expect("valid"), CurrencyCode::parse(currency).expect("valid"))
        };
        let members: Vec<MemberId> = ["alice", "bob", "carol", "dave", "erin"]
            .iter()
            .map(|id| MemberId::parse(*id).expect("valid"))
            .collect();
        let keys: Vec<IdempotencyKey> =
            (0..11).map(|index| IdempotencyKey::parse(format!("k{index}")).expect("valid")).collect();
        let transfers = (0..3).map(|index| TransferId::parse(format!("t{index}")).expect("valid")).collect();
        Pools {
            partners: vec![
                partner("sky", "SKYMILES"),
                partner("hotel", "HOTELPTS"),
                partner("cafe", "BEANS"),
            ],
            members,
            keys,
            transfers,
        }
    }

    fn member(&self, input: &mut Unstructured) -> Result<MemberId> {
        Ok(input.choose(&self.members)?.clone())
    }

    fn key(&self, input: &mut Unstructured) -> Result<IdempotencyKey> {
        Ok(input.choose(&self.keys)?.clone())
    }

    fn transfer(&self, input: &mut Unstructured) -> Result<TransferId> {
        Ok(input.choose(&self.transfers)?.clone())
    }

    /// Mostly the partner's own currency (as the gateway admits), sometimes another.
    fn currency(&self, input: &mut Unstructured, own: &CurrencyCode) -> Result<CurrencyCode> {
        Ok(if input.ratio(1, 5)? { input.choose(&self.partners)?.1.clone() } else { own.clone() })
    }
}

fn amount(input: &mut Unstructured) -> Result<u64> {
    Ok(match input.int_in_range(0..=9u8)? {
        0 => 0,
        1 => 1,
        2 => AMOUNT_POINTS_MAX,
        3 => AMOUNT_POINTS_MAX + 1,
        4 => u64::MAX,
        5 => input.arbitrary()?,
        _ => input.int_in_range(1..=2_000)?,
    })
}

fn terms(input: &mut Unstructured) -> Result<AgreementTerms> {
    let small = |input: &mut Unstructured| -> Result<u64> {
        Ok(if input.ratio(1, 8)? { input.arbitrary()? } else { input.int_in_range(0..=20)? })
    };
    Ok(AgreementTerms {
        rate_numerator: small(input)?,
        rate_denominator: small(input)?,
        minimum_points: small(input)?,
        maximum_points: small(input)?,
        block_size_points: small(input)?,
        fee_points: small(input)?,
    })
}

/// A ledger operation, or now and then a key claim of one (and rarely a claim of a claim,
/// which must be refused as invalid).
fn operation(input: &mut Unstructured, pools: &Pools, own: &CurrencyCode) -> Result<Operation> {
    Ok(match input.int_in_range(0..=15u8)? {
        14 => Operation::claim_key(pools.member(input)?, ledger_operation(input, pools, own)?),
        15 => Operation::ClaimKey {
            member_id: pools.member(input)?,
            request: Box::new(Operation::claim_key(
                pools.member(input)?,
                ledger_operation(input, pools, own)?,
            )),
        },
        _ => ledger_operation(input, pools, own)?,
    })
}

fn ledger_operation(input: &mut Unstructured, pools: &Pools, own: &CurrencyCode) -> Result<Operation> {
    Ok(match input.int_in_range(0..=12u8)? {
        0 => Operation::Enrol { member_id: pools.member(input)?, currency: pools.currency(input, own)? },
        1 => Operation::Earn {
            member_id: pools.member(input)?,
            currency: pools.currency(input, own)?,
            amount_points: amount(input)?,
        },
        2 => Operation::Redeem {
            member_id: pools.member(input)?,
            currency: pools.currency(input, own)?,
            amount_points: amount(input)?,
        },
        3 => Operation::ReverseEarn { earn_key: pools.key(input)?, amount_points: amount(input)? },
        4 => {
            // Around the valid durations 1 ms ..= 90 days, edges included.
            let expires_in_ms: u64 = match input.int_in_range(0..=4u8)? {
                0 => 0,
                1 => HOLD_DURATION_MS_MAX,
                2 => HOLD_DURATION_MS_MAX + 1,
                3 => u64::MAX,
                _ => input.int_in_range(1..=1u64 << 31)?,
            };
            Operation::AuthorizeHold {
                member_id: pools.member(input)?,
                currency: pools.currency(input, own)?,
                amount_points: amount(input)?,
                expires_in_ms,
            }
        }
        5 => Operation::CaptureHold { hold_key: pools.key(input)?, amount_points: amount(input)? },
        6 => Operation::VoidHold { hold_key: pools.key(input)? },
        7 => Operation::Transfer {
            from_member_id: pools.member(input)?,
            to_member_id: pools.member(input)?,
            currency: pools.currency(input, own)?,
            amount_points: amount(input)?,
        },
        8 => Operation::TransferOut {
            transfer_id: pools.transfer(input)?,
            from_member_id: pools.member(input)?,
            to_member_id: pools.member(input)?,
            currency: pools.currency(input, own)?,
            amount_points: amount(input)?,
        },
        9 => Operation::TransferIn {
            transfer_id: pools.transfer(input)?,
            from_member_id: pools.member(input)?,
            to_member_id: pools.member(input)?,
            currency: pools.currency(input, own)?,
            amount_points: amount(input)?,
        },
        10 => Operation::TransferComplete { transfer_id: pools.transfer(input)? },
        11 => Operation::TransferRefund { transfer_id: pools.transfer(input)? },
        _ => {
            let other = input.choose(&pools.partners)?.1.clone();
            let (from_currency, to_currency) =
                if input.arbitrary()? { (own.clone(), other) } else { (other, own.clone()) };
            Operation::Exchange {
                member_id: pools.member(input)?,
                from_currency,
                to_currency,
                amount_points: amount(input)?,
                terms: terms(input)?,
            }
        }
    })
}

/// Reads the batches of one input. The log time moves forward by arbitrary steps (sometimes
/// backwards in the header: the ledger must keep its own time monotonic).
pub fn batches(data: &[u8]) -> Vec<ShardBatch> {
    let pools = Pools::new();
    let mut input = Unstructured::new(data);
    let mut batches = Vec::new();
    let mut now_ms = START_LOG_TIME_MS;
    while batches.len() < BATCHES_MAX && !input.is_empty() {
        let Ok(batch) = batch(&mut input, &pools, &mut now_ms) else { break };
        batches.push(batch);
    }
    batches
}

fn batch(input: &mut Unstructured, pools: &Pools, now_ms: &mut u64) -> Result<ShardBatch> {
    let step_ms: u64 = match input.int_in_range(0..=3u8)? {
        0 => 0,
        1 => input.int_in_range(0..=10_000)?,
        _ => input.int_in_range(0..=1u64 << 32)?,
    };
    *now_ms += step_ms;
    // A header time behind the ledger's clock happens after a leader change.
    let header_ms = if input.ratio(1, 10)? { now_ms.saturating_sub(step_ms * 2) } else { *now_ms };
    let count = input.int_in_range(0..=BATCH_COMMANDS_MAX)?;
    let mut commands = Vec::with_capacity(count);
    for _ in 0..count {
        let (partner_id, currency) = input.choose(&pools.partners)?.clone();
        let idempotency_key = pools.key(input)?;
        let operation = operation(input, pools, &currency)?;
        commands.push(Command { partner_id, idempotency_key, operation });
    }
    let header = BatchHeader { log_time_ms: header_ms, idempotency_retention_ms: RETENTION_MS };
    Ok(ShardBatch { header, commands })
}

/// What a replica has on disk: the items its change sets named, nothing else.
#[derive(Default)]
struct Persisted {
    items: BTreeMap<ItemKey, StateItem>,
}

impl Persisted {
    fn absorb(&mut self, ledger: &Ledger, changes: &ChangeSet) {
        for key in &changes.dirty {
            match ledger.item(key) {
                Some(item) => self.items.insert(key.clone(), item),
                None => self.items.remove(key),
            };
        }
    }

    fn restart(&self) -> Ledger {
        Ledger::from_items(self.items.values().cloned())
    }
}

/// Applies every batch of `data` and checks the ledger's promises; panics on a broken one.
/// The cheap checks run after every batch; the digests (SHA-256 over the whole state) and the
/// restart from persisted items run at the middle and at the end of the sequence.
pub fn apply_all(data: &[u8]) {
    let batches = batches(data);
    let pools = Pools::new();
    let middle = batches.len() / 2;
    let mut primary = Ledger::new();
    let mut twin = Ledger::new();
    let mut persisted = Persisted::default();
    let mut first_outcomes: BTreeMap<(PartnerId, IdempotencyKey), (Operation, CommandOutcome)> =
        BTreeMap::new();
    for (position, batch) in batches.iter().enumerate() {
        let log_index = position as u64 + 1;
        let mut changes = ChangeSet::default();
        let outcomes = primary.apply_batch(log_index, batch, &mut changes);
        assert_eq!(outcomes.len(), batch.commands.len(), "one outcome per command");
        check_exactly_once(batch, &outcomes, &mut first_outcomes);
        audit(&primary, &pools, log_index);
        persisted.absorb(&primary, &changes);
        let twin_outcomes = twin.apply_batch(log_index, batch, &mut ChangeSet::default());
        assert_eq!(twin_outcomes, outcomes, "two replicas answered log index {log_index} differently");
        if position == middle || position + 1 == batches.len() {
            let digest = primary.digest();
            assert_eq!(twin.digest(), digest, "two replicas differ after log index {log_index}");
            assert_eq!(
                persisted.restart().digest(),
                digest,
                "a replica restarted from its persisted items differs after log index {log_index}"
            );
        }
    }
}

fn check_exactly_once(
    batch: &ShardBatch,
    outcomes: &[CommandOutcome],
    first_outcomes: &mut BTreeMap<(PartnerId, IdempotencyKey), (Operation, CommandOutcome)>,
) {
    for (command, outcome) in batch.commands.iter().zip(outcomes) {
        let slot = (command.partner_id.clone(), command.idempotency_key.clone());
        match first_outcomes.get(&slot) {
            None => {
                assert!(!outcome.replay, "the first use of key {slot:?} is not a replay");
                first_outcomes.insert(slot, (command.operation.clone(), outcome.clone()));
            }
            Some((operation, first)) if *operation == command.operation => {
                let expected = CommandOutcome { replay: true, ..first.clone() };
                assert_eq!(outcome, &expected, "a replay of key {slot:?} changed its answer");
            }
            Some(_) => assert!(
                matches!(outcome.result, Err(LedgerError::KeyReusedWithDifferentRequest { .. })),
                "key {slot:?} reused for another request was not refused: {outcome:?}"
            ),
        }
    }
}

fn audit(ledger: &Ledger, pools: &Pools, log_index: u64) {
    if let Err(broken) = ledger.check_invariants() {
        panic!("ledger invariant broken after log index {log_index}: {broken}");
    }
    for (currency, totals) in ledger.currency_totals() {
        assert_eq!(totals.debits_points, totals.credits_points, "{currency} is not conserved");
    }
    for member_id in &pools.members {
        for (_, currency) in &pools.partners {
            let Some(view) = ledger.balance(member_id, currency) else { continue };
            assert!(view.held_points <= view.balance_points, "{view:?} holds more than its balance");
            assert_eq!(view.available_points, view.balance_points - view.held_points, "{view:?}");
        }
    }
}
