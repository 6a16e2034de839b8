//! [`Ledger`]: one shard's state machine. Deterministic: the same batches in the same order
//! give the same state and the same outcomes on every replica.
//!
//! Layout:
//! - this file: the state, the public reads, and `apply_batch` with the exactly-once wrapper
//!   around every command;
//! - `validate`: the defensive re-check of request shape against the log time;
//! - `posting`: `posting::Stage`, which computes every account change of one command
//!   before any is written, so a failed command writes nothing;
//! - `records`: writes of records with their expiry indexes, and the expiry sweep;
//! - one module per operation family: `earn` (enrol, earn, redeem), `reversal`, `hold`,
//!   `transfer` (same-shard and cross-shard), `exchange`;
//! - `request_diff`: which field differs when a key is reused for another request;
//! - `retained`: the retained keys, by fingerprint, with their records encoded;
//! - `items`: persisted items, snapshots and the digest; `invariants`: the audit.

mod earn;
mod exchange;
mod hold;
mod invariants;
mod items;
mod posting;
mod records;
mod request_diff;
mod retained;
mod reversal;
mod stored_index;
mod transfer;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::command::{
    BalanceView, BatchHeader, Command, CommandOutcome, HoldView, Operation, OperationKind, OperationResult,
    ShardBatch, TransferStatus,
};
use crate::error::LedgerError;
use crate::ids::{CurrencyCode, IdempotencyKey, MemberId, PartnerId, TransferId};
use crate::keyed::{KeyedMap, KeyedSet};
use crate::state::{
    Account, AccountKey, ChangeSet, EarnRecord, HoldRecord, IdempotencyRecord, ItemKey, KeyFingerprint,
    RetainedRecord, TransferRecord,
};
use retained::RetainedKeys;
pub use retained::{RecordSlot, RecordSource};

/// Sum of debits and credits of one currency over every account of a shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CurrencyTotals {
    pub debits_points: u128,
    pub credits_points: u128,
}

/// The deduplication scope of a command, and the name of the earn or hold it creates.
type Slot = (PartnerId, IdempotencyKey);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Log time of the last applied batch; never goes backwards.
    log_time_ms: u64,
    // Hash lookups, iteration in key order only (see `keyed`).
    accounts: KeyedMap<AccountKey, Account>,
    /// Every key still retained, with its request, answer and earn (see `retained`).
    retained: RetainedKeys,
    holds: KeyedMap<Slot, HoldRecord>,
    transfers: KeyedMap<TransferId, TransferRecord>,
    /// Open holds by expiry log time: the sweep at the start of a batch reads only due holds.
    hold_expiry: BTreeSet<(u64, Slot)>,
    /// Every hold and transfer record that has a forget time, by that time (retained keys keep
    /// their own index). Open transfers are absent: they must outlive any retention until the
    /// resolver closes them.
    /// By time, a hash set: an insert hashes one key instead of comparing it with the others
    /// forgotten at the same log time (often a whole batch's).
    forget: BTreeMap<u64, KeyedSet<ItemKey>>,
}

/// What every operation of one command needs to know besides its own fields.
pub(crate) struct Context<'a> {
    pub log_index: u64,
    pub now_ms: u64,
    pub retention_ms: u64,
    pub partner_id: &'a PartnerId,
    pub key: &'a IdempotencyKey,
    pub kind: OperationKind,
}

impl Context<'_> {
    /// Log time until which this command's key (and what it names) is remembered.
    pub fn retained_until_ms(&self) -> u64 {
        self.now_ms.saturating_add(self.retention_ms)
    }

    pub fn slot(&self) -> Slot {
        (self.partner_id.clone(), self.key.clone())
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one Raft entry's batch. Returns exactly one outcome per command, in order,
    /// and records in `changes` what must be persisted. `changes` is added to, not cleared,
    /// so a caller may gather several entries into one storage write.
    pub fn apply_batch(
        &mut self,
        log_index: u64,
        batch: &ShardBatch,
        changes: &mut ChangeSet,
    ) -> Vec<CommandOutcome> {
        let now_ms = self.log_time_ms.max(batch.header.log_time_ms);
        if now_ms != self.log_time_ms {
            self.log_time_ms = now_ms;
            changes.dirty.push(ItemKey::Clock);
        }
        self.expire_due(changes);
        let outcomes: Vec<CommandOutcome> = batch
            .commands
            .iter()
            .map(|command| self.apply_command(log_index, &batch.header, command, changes))
            .collect();
        assert_eq!(outcomes.len(), batch.commands.len());
        // The full audit is linear in the state, so release builds rely on the cheap
        // per-posting assertions in `posting` instead.
        if cfg!(debug_assertions) {
            if let Err(broken) = self.check_invariants() {
                panic!("ledger invariant broken after log index {log_index}: {broken}");
            }
        }
        outcomes
    }

    /// Exactly once: the answer of a key already seen is the stored one, and the first answer,
    /// failure or success, is stored in the same apply as the effect.
    fn apply_command(
        &mut self,
        log_index: u64,
        header: &BatchHeader,
        command: &Command,
        changes: &mut ChangeSet,
    ) -> CommandOutcome {
        let now_ms = self.log_time_ms;
        let fingerprint = KeyFingerprint::of(&command.partner_id, &command.idempotency_key);
        if let Some(record) = self.retained.get(&fingerprint) {
            let refused =
                |error| CommandOutcome { result: Err(error), replay: false, log_index, log_time_ms: now_ms };
            // Two keys with one fingerprint: the new one is refused, never answered for the other.
            if record.partner_id != command.partner_id || record.key != command.idempotency_key {
                return refused(LedgerError::KeyFingerprintCollision {
                    key: command.idempotency_key.to_string(),
                });
            }
            return match request_diff::first_difference(&record.answer.operation, &command.operation) {
                None => CommandOutcome { replay: true, ..record.answer.outcome },
                // Not stored: the key keeps answering for the request that first used it.
                Some(field) => refused(LedgerError::KeyReusedWithDifferentRequest {
                    key: command.idempotency_key.to_string(),
                    field: field.to_string(),
                }),
            };
        }
        let context = Context {
            log_index,
            now_ms,
            retention_ms: header.idempotency_retention_ms,
            partner_id: &command.partner_id,
            key: &command.idempotency_key,
            kind: command.operation.kind(),
        };
        let result = self.apply_operation(&context, &command.operation, changes);
        let outcome = CommandOutcome { result, replay: false, log_index, log_time_ms: now_ms };
        // A hold is named by its key, so the key must stay taken while the hold is remembered:
        // a reused key would otherwise overwrite a hold that still reserves points.
        let base_ms = context.retained_until_ms();
        let slot = context.slot();
        let expires_at_ms = self.holds.get(&slot).map_or(base_ms, |hold| hold.forget_at_ms.max(base_ms));
        // The earn record lets the partner reverse the earn while its key is retained.
        let earn = match (&command.operation, &outcome.result) {
            (Operation::Earn { member_id, currency, amount_points }, Ok(_)) => Some(EarnRecord {
                member_id: member_id.clone(),
                currency: currency.clone(),
                earned_points: *amount_points,
                reversed_points: 0,
                expires_at_ms,
            }),
            _ => None,
        };
        let (partner_id, key) = slot;
        let answer = IdempotencyRecord {
            operation: command.operation.clone(),
            outcome: outcome.clone(),
            expires_at_ms,
        };
        self.put_retained(RetainedRecord { partner_id, key, answer, earn }, changes);
        outcome
    }

    fn apply_operation(
        &mut self,
        context: &Context<'_>,
        operation: &Operation,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        validate::operation(operation)?;
        match operation {
            Operation::Enrol { member_id, currency } => self.enrol(context, member_id, currency, changes),
            Operation::Earn { member_id, currency, amount_points } => {
                self.earn(context, member_id, currency, *amount_points, changes)
            }
            Operation::Redeem { member_id, currency, amount_points } => {
                self.redeem(context, member_id, currency, *amount_points, changes)
            }
            Operation::ReverseEarn { earn_key, amount_points } => {
                self.reverse_earn(context, earn_key, *amount_points, changes)
            }
            Operation::AuthorizeHold { member_id, currency, amount_points, expires_in_ms } => {
                let account_key = AccountKey::member(member_id, currency);
                let expires_at_ms = context.now_ms.saturating_add(*expires_in_ms);
                self.authorize_hold(context, &account_key, *amount_points, expires_at_ms, changes)
            }
            Operation::CaptureHold { hold_key, amount_points } => {
                self.capture_hold(context, hold_key, *amount_points, changes)
            }
            Operation::VoidHold { hold_key } => self.void_hold(context, hold_key, changes),
            Operation::Transfer { .. }
            | Operation::TransferOut { .. }
            | Operation::TransferIn { .. }
            | Operation::TransferComplete { .. }
            | Operation::TransferRefund { .. } => self.apply_transfer(context, operation, changes),
            Operation::Exchange { .. } => self.exchange(context, operation, changes),
            // The idempotency record that `apply_command` stores is the whole effect.
            Operation::ClaimKey { .. } => Ok(OperationResult::KeyClaimed),
        }
    }

    pub fn balance(&self, member_id: &MemberId, currency: &CurrencyCode) -> Option<BalanceView> {
        let account = self.accounts.get(&AccountKey::member(member_id, currency))?;
        Some(BalanceView::of(member_id, currency, account))
    }

    /// Any account of the shard, member or system.
    pub fn account(&self, key: &AccountKey) -> Option<&Account> {
        self.accounts.get(key)
    }

    /// The stored request and answer of `(partner, key)`, if still retained.
    pub fn operation(
        &self,
        partner_id: &PartnerId,
        key: &IdempotencyKey,
    ) -> Option<(Operation, CommandOutcome)> {
        let record = self.retained_record(partner_id, key)?;
        Some((record.answer.operation, record.answer.outcome))
    }

    /// The earn named by `(partner, key)`, while it can still be reversed.
    pub fn earn_record(&self, partner_id: &PartnerId, key: &IdempotencyKey) -> Option<EarnRecord> {
        self.retained_record(partner_id, key)?.earn
    }

    /// The record of `(partner, key)`, if that key (not merely its fingerprint) is retained.
    fn retained_record(&self, partner_id: &PartnerId, key: &IdempotencyKey) -> Option<RetainedRecord> {
        let record = self.retained.get(&KeyFingerprint::of(partner_id, key))?;
        (record.partner_id == *partner_id && record.key == *key).then_some(record)
    }

    /// How many idempotency keys the shard retains (each until its retention ends).
    pub fn retained_keys(&self) -> usize {
        self.retained.len()
    }

    /// How many retained keys' records are held in memory (the others are in journals).
    pub fn resident_retained_records(&self) -> usize {
        self.retained.resident_len()
    }

    /// A copy of the ledger with every retained record in memory and no record source (tests
    /// and tools that keep a ledger after its storage is closed).
    pub fn in_memory_copy(&self) -> Ledger {
        Ledger {
            log_time_ms: self.log_time_ms,
            accounts: self.accounts.clone(),
            retained: self.retained.in_memory_copy(),
            holds: self.holds.clone(),
            transfers: self.transfers.clone(),
            hold_expiry: self.hold_expiry.clone(),
            forget: self.forget.clone(),
        }
    }

    /// From now on, records that left memory are read back through `source`.
    pub fn set_record_source(&mut self, source: std::sync::Arc<dyn RecordSource>) {
        self.retained.set_source(source);
    }

    /// The expiry and canonical bytes of a retained key's record while it is held in memory
    /// (what a checkpoint writes to its journal).
    pub fn resident_retained(&self, fingerprint: &KeyFingerprint) -> Option<(u64, &Arc<[u8]>)> {
        self.retained.resident(fingerprint)
    }

    /// Lets records that a checkpoint wrote leave memory (see `retained`); returns how many did.
    /// Needs a record source.
    pub fn evict_retained<Bytes: AsRef<[u8]>>(
        &mut self,
        written: impl IntoIterator<Item = (KeyFingerprint, RecordSlot, Bytes)>,
    ) -> usize {
        self.retained.evict(written)
    }

    /// After records left memory: lists by prefix, in the expiry index, the keys whose records
    /// left, looking at up to `entries_max` listed keys; returns whether it got through them
    /// all (see `retained`). Call it in slices under the state lock after
    /// [`Ledger::evict_retained`], until it returns true.
    pub fn compact_retained_expiry(&mut self, entries_max: usize) -> bool {
        self.retained.compact_expiry(entries_max)
    }

    /// Adds retained keys whose records are in storage at their slots (loading a checkpoint),
    /// in the order given: a later slot for the same key replaces an earlier one. Needs a
    /// record source to read them, and [`Ledger::finish_loading_retained`] after the last
    /// key, before any other use of the ledger.
    pub fn load_stored_retained(
        &mut self,
        keys: impl IntoIterator<Item = (KeyFingerprint, u64, RecordSlot)>,
    ) {
        self.retained.load_stored(keys);
    }

    /// Ends [`Ledger::load_stored_retained`]: sorts what was loaded.
    pub fn finish_loading_retained(&mut self) {
        self.retained.finish_loading();
    }

    pub fn hold(&self, partner_id: &PartnerId, hold_key: &IdempotencyKey) -> Option<HoldView> {
        let record = self.holds.get(&(partner_id.clone(), hold_key.clone()))?;
        Some(record.hold.clone())
    }

    pub fn transfer(&self, transfer_id: &TransferId) -> Option<TransferRecord> {
        self.transfers.get(transfer_id).cloned()
    }

    /// Source-side transfer records still open (for the resolver).
    pub fn open_transfers(&self) -> Vec<(TransferId, TransferRecord)> {
        self.transfers
            .sorted_where(|_, record| record.status == TransferStatus::Open)
            .into_iter()
            .map(|(id, record)| (id.clone(), record.clone()))
            .collect()
    }

    /// Number of statement lines of a member account (0 if it does not exist).
    pub fn statement_lines(&self, member_id: &MemberId, currency: &CurrencyCode) -> u64 {
        let key = AccountKey::member(member_id, currency);
        self.accounts.get(&key).map_or(0, |account| account.statement_lines)
    }

    /// Log time of the last applied batch.
    pub fn log_time_ms(&self) -> u64 {
        self.log_time_ms
    }

    /// The earliest expiry log time of an open hold. Expiry happens only when a batch is
    /// applied, so the leader proposes an empty batch once this time has come (a batch's log
    /// time is the leader's clock), and every replica releases the hold at the same entry.
    pub fn next_hold_expiry_ms(&self) -> Option<u64> {
        self.hold_expiry.first().map(|(expires_at_ms, _)| *expires_at_ms)
    }

    /// The balance view of a member account that the operation has just written.
    fn view(&self, key: &AccountKey) -> BalanceView {
        let AccountKey::Member { member_id, currency } = key else {
            panic!("balance views exist for member accounts only, not {key}");
        };
        let account = self.accounts.get(key).unwrap_or_else(|| panic!("account {key} was just written"));
        BalanceView::of(member_id, currency, account)
    }

    /// Points the member can spend, or `AccountNotFound`.
    fn available(&self, key: &AccountKey) -> Result<u64, LedgerError> {
        match (key, self.accounts.get(key)) {
            (_, Some(account)) => Ok(account.available_points()),
            (AccountKey::Member { member_id, currency }, None) => Err(LedgerError::AccountNotFound {
                member_id: member_id.to_string(),
                currency: currency.to_string(),
            }),
            (AccountKey::System { .. }, None) => {
                panic!("only member accounts are looked up for spending")
            }
        }
    }

    /// Fails with `InsufficientPoints` unless the member can spend `requested_points` now.
    fn ensure_available(&self, key: &AccountKey, requested_points: u64) -> Result<(), LedgerError> {
        let available_points = self.available(key)?;
        if available_points < requested_points {
            return Err(LedgerError::InsufficientPoints { available_points, requested_points });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{BatchHeader, Command, ShardBatch};

    fn earn_command(key: &str, amount_points: u64) -> Command {
        Command {
            partner_id: PartnerId::parse("skyair").unwrap(),
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            operation: Operation::Earn {
                member_id: MemberId::parse("alice").unwrap(),
                currency: CurrencyCode::parse("SKYMILES").unwrap(),
                amount_points,
            },
        }
    }

    fn apply(ledger: &mut Ledger, log_index: u64, command: Command) -> CommandOutcome {
        let header = BatchHeader { log_time_ms: 1_700_000_000_000, idempotency_retention_ms: 3_600_000 };
        let batch = ShardBatch { header, commands: vec![command] };
        ledger.apply_batch(log_index, &batch, &mut ChangeSet::default()).remove(0)
    }

    /// A hit on a fingerprint is checked against the stored partner and key: a key whose
    /// fingerprint equals another retained key's is refused, never answered with the other's
    /// outcome, and changes nothing.
    #[test]
    fn a_fingerprint_collision_is_refused_not_answered_for_another_key() {
        let mut ledger = Ledger::new();
        assert!(apply(&mut ledger, 1, earn_command("e1", 10)).result.is_ok());
        let stored = ledger
            .retained_record(&PartnerId::parse("skyair").unwrap(), &IdempotencyKey::parse("e1").unwrap());
        let stored = stored.expect("e1 is retained");
        // e2's fingerprint now names e1's record, as a collision would.
        let e2 =
            KeyFingerprint::of(&PartnerId::parse("skyair").unwrap(), &IdempotencyKey::parse("e2").unwrap());
        ledger.retained.put_under(e2, &stored);
        let before = ledger.clone();
        // Straight to the command: the audit after a batch would (rightly) refuse the forged
        // entry itself.
        let header = BatchHeader { log_time_ms: 1_700_000_000_000, idempotency_retention_ms: 3_600_000 };
        let outcome = ledger.apply_command(2, &header, &earn_command("e2", 10), &mut ChangeSet::default());
        assert_eq!(outcome.result, Err(LedgerError::KeyFingerprintCollision { key: "e2".to_string() }));
        assert!(!outcome.replay);
        assert_eq!(ledger.accounts, before.accounts, "no points moved");
        assert_eq!(
            ledger.operation(&PartnerId::parse("skyair").unwrap(), &IdempotencyKey::parse("e2").unwrap()),
            None
        );
    }

    /// Keeps evicted records in memory, as a journal would on disk; counts reads.
    #[derive(Default)]
    struct MemorySource {
        records: std::sync::Mutex<Vec<Vec<u8>>>,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl RecordSource for MemorySource {
        fn read_record(&self, slot: RecordSlot) -> Result<Vec<u8>, String> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let records = self.records.lock().unwrap();
            records.get(slot.journal as usize).cloned().ok_or_else(|| format!("no record in slot {slot:?}"))
        }
    }

    impl MemorySource {
        /// "Writes" every resident record of `ledger` and lets it leave memory.
        fn evict_all(&self, ledger: &mut Ledger) -> usize {
            let written: Vec<(KeyFingerprint, RecordSlot, Vec<u8>)> = ledger
                .retained
                .sorted_encoded()
                .into_iter()
                .filter(|(fingerprint, _)| ledger.resident_retained(fingerprint).is_some())
                .map(|(fingerprint, bytes)| {
                    let mut records = self.records.lock().unwrap();
                    records.push(bytes.to_vec());
                    let slot = RecordSlot { journal: records.len() as u32 - 1, offset_bytes: 0 };
                    (fingerprint, slot, bytes.to_vec())
                })
                .collect();
            ledger.evict_retained(
                written.iter().map(|(fingerprint, slot, bytes)| (*fingerprint, *slot, &bytes[..])),
            )
        }
    }

    fn reverse_command(key: &str, earn_key: &str, amount_points: u64) -> Command {
        Command {
            partner_id: PartnerId::parse("skyair").unwrap(),
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            operation: Operation::ReverseEarn {
                earn_key: IdempotencyKey::parse(earn_key).unwrap(),
                amount_points,
            },
        }
    }

    /// Two keys whose fingerprints share their first four bytes, found by trying keys.
    fn keys_sharing_a_prefix() -> (String, String) {
        let partner = PartnerId::parse("skyair").unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for number in 0.. {
            let key = format!("c{number}");
            let fingerprint = KeyFingerprint::of(&partner, &IdempotencyKey::parse(&key).unwrap());
            let prefix = u32::from_be_bytes(fingerprint.0[..4].try_into().unwrap());
            if let Some(first) = seen.insert(prefix, key.clone()) {
                return (first, key);
            }
        }
        unreachable!("a 32-bit prefix repeats within a few hundred thousand keys")
    }

    fn apply_at(ledger: &mut Ledger, log_index: u64, log_time_ms: u64, commands: Vec<Command>) {
        let header = BatchHeader { log_time_ms, idempotency_retention_ms: 3_600_000 };
        let outcomes =
            ledger.apply_batch(log_index, &ShardBatch { header, commands }, &mut ChangeSet::default());
        assert!(outcomes.iter().all(|outcome| outcome.result.is_ok()), "{outcomes:?}");
    }

    /// Keys whose records left memory are listed by a 4-byte prefix in the expiry index; two
    /// stored keys sharing a prefix but not an expiry each expire at their own time, and the
    /// ledger stays equal to one that kept everything in memory.
    #[test]
    fn stored_keys_sharing_a_prefix_expire_each_at_its_own_time() {
        let (first, second) = keys_sharing_a_prefix();
        let source = std::sync::Arc::new(MemorySource::default());
        let mut evicting = Ledger::new();
        evicting.set_record_source(source.clone());
        let mut resident = Ledger::new();
        let start_ms = 1_700_000_000_000;
        for ledger in [&mut evicting, &mut resident] {
            apply_at(ledger, 1, start_ms, vec![earn_command(&first, 10), earn_command("other-a", 1)]);
            apply_at(
                ledger,
                2,
                start_ms + 1_000,
                vec![earn_command(&second, 20), earn_command("other-b", 2)],
            );
        }
        assert_eq!(source.evict_all(&mut evicting), 4);
        assert!(!evicting.compact_retained_expiry(1), "one list per call at most");
        while !evicting.compact_retained_expiry(1) {}
        evicting.check_invariants().unwrap();
        assert_eq!(evicting.retained.listed_by_prefix(), 4);

        // A reversal brings `first` back into memory, listed whole again; written again, by prefix.
        for ledger in [&mut evicting, &mut resident] {
            apply_at(ledger, 3, start_ms + 2_000, vec![reverse_command("r1", &first, 3)]);
        }
        evicting.check_invariants().unwrap();
        source.evict_all(&mut evicting);
        while !evicting.compact_retained_expiry(1_024) {}
        evicting.check_invariants().unwrap();

        // Past the first expiry only: `first` and `other-a` go, `second` stays.
        let partner = PartnerId::parse("skyair").unwrap();
        for ledger in [&mut evicting, &mut resident] {
            apply_at(ledger, 4, start_ms + 3_600_000, vec![]);
            assert_eq!(ledger.retained_keys(), 3, "first and other-a expired");
            assert!(ledger.operation(&partner, &IdempotencyKey::parse(&first).unwrap()).is_none());
            assert!(ledger.operation(&partner, &IdempotencyKey::parse(&second).unwrap()).is_some());
        }
        evicting.check_invariants().unwrap();
        assert_eq!(evicting, resident);
        assert_eq!(evicting.digest(), resident.digest());
        for ledger in [&mut evicting, &mut resident] {
            apply_at(ledger, 5, start_ms + 3_601_000, vec![]);
            assert!(ledger.operation(&partner, &IdempotencyKey::parse(&second).unwrap()).is_none());
            assert_eq!(ledger.retained_keys(), 1, "only r1 is left");
        }
        assert_eq!(evicting, resident);
    }

    /// Records that left memory answer replays and reversals exactly as before, the state and
    /// its digest are those of a ledger that kept everything in memory, and a record changed
    /// after it was written stays in memory until it is written again.
    #[test]
    fn evicted_records_answer_as_resident_ones_do() {
        let source = std::sync::Arc::new(MemorySource::default());
        let mut evicting = Ledger::new();
        evicting.set_record_source(source.clone());
        let mut resident = Ledger::new();
        for ledger in [&mut evicting, &mut resident] {
            for (index, key) in ["e1", "e2", "e3"].into_iter().enumerate() {
                assert!(apply(ledger, index as u64 + 1, earn_command(key, 100)).result.is_ok());
            }
        }
        assert_eq!(source.evict_all(&mut evicting), 3);
        assert_eq!((evicting.resident_retained_records(), evicting.retained_keys()), (0, 3));
        assert_eq!(evicting, resident);
        assert_eq!(evicting.digest(), resident.digest());
        evicting.check_invariants().unwrap();

        // A replay is answered from the record read back; a reuse with another amount refused.
        let reads = source.reads.load(std::sync::atomic::Ordering::Relaxed);
        let replay = apply(&mut evicting, 4, earn_command("e2", 100));
        assert!(replay.replay && replay.result.is_ok());
        assert!(source.reads.load(std::sync::atomic::Ordering::Relaxed) > reads, "the record was read back");
        assert_eq!(replay, CommandOutcome { ..apply(&mut resident, 4, earn_command("e2", 100)) });
        let reused = apply(&mut evicting, 5, earn_command("e2", 7));
        assert!(matches!(reused.result, Err(LedgerError::KeyReusedWithDifferentRequest { .. })));
        apply(&mut resident, 5, earn_command("e2", 7));

        // A reversal rewrites e1's earn record: it comes back into memory, changed.
        for ledger in [&mut evicting, &mut resident] {
            assert!(apply(ledger, 6, reverse_command("r1", "e1", 40)).result.is_ok());
        }
        assert_eq!(evicting.resident_retained_records(), 2, "e1 changed and r1 is new");
        assert_eq!(evicting, resident);
        let partner = PartnerId::parse("skyair").unwrap();
        let e1 = IdempotencyKey::parse("e1").unwrap();
        assert_eq!(evicting.earn_record(&partner, &e1).unwrap().reversed_points, 40);

        // An eviction naming bytes that are no longer the record's leaves the record in memory.
        let e1_fingerprint = KeyFingerprint::of(&partner, &e1);
        let stale_slot = RecordSlot { journal: 0, offset_bytes: 1 };
        assert_eq!(evicting.evict_retained([(e1_fingerprint, stale_slot, &b"old bytes"[..])]), 0);
        assert_eq!(evicting.earn_record(&partner, &e1).unwrap().reversed_points, 40);

        // Expiry forgets stored and resident keys alike.
        source.evict_all(&mut evicting);
        let later =
            BatchHeader { log_time_ms: 1_700_000_000_000 + 3_600_001, idempotency_retention_ms: 3_600_000 };
        for ledger in [&mut evicting, &mut resident] {
            ledger.apply_batch(7, &ShardBatch { header: later, commands: vec![] }, &mut ChangeSet::default());
            assert_eq!(ledger.retained_keys(), 0);
        }
        assert_eq!(evicting, resident);
        assert_eq!(evicting.digest(), resident.digest());
    }
}
