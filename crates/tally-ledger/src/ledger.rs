//! [`Ledger`]: one shard's state machine. Deterministic: the same batches in the same order
//! give the same state and the same outcomes on every replica.

use std::collections::BTreeMap;

use crate::command::{BalanceView, CommandOutcome, HoldView, Operation, ShardBatch};
use crate::ids::{CurrencyCode, IdempotencyKey, MemberId, PartnerId, TransferId};
use crate::state::{ChangeSet, ItemKey, StateItem, TransferRecord};

/// Sum of debits and credits of one currency over every account of a shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CurrencyTotals {
    pub debits_points: u128,
    pub credits_points: u128,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    // filled in by the implementation
}

impl Ledger {
    pub fn new() -> Self {
        todo!()
    }

    /// Rebuilds a ledger from persisted items (any order).
    pub fn from_items(items: impl IntoIterator<Item = StateItem>) -> Self {
        let _ = items;
        todo!()
    }

    /// Every item of the state, in a deterministic order (for snapshots and digests).
    pub fn items(&self) -> Vec<StateItem> {
        todo!()
    }

    /// The current value of one item, or `None` if it no longer exists.
    pub fn item(&self, key: &ItemKey) -> Option<StateItem> {
        let _ = key;
        todo!()
    }

    /// Applies one Raft entry's batch. Returns exactly one outcome per command, in order,
    /// and records in `changes` what must be persisted.
    pub fn apply_batch(&mut self, log_index: u64, batch: &ShardBatch, changes: &mut ChangeSet) -> Vec<CommandOutcome> {
        let _ = (log_index, batch, changes);
        todo!()
    }

    pub fn balance(&self, member_id: &MemberId, currency: &CurrencyCode) -> Option<BalanceView> {
        let _ = (member_id, currency);
        todo!()
    }

    /// The stored request and answer of `(partner, key)`, if still retained.
    pub fn operation(&self, partner_id: &PartnerId, key: &IdempotencyKey) -> Option<(Operation, CommandOutcome)> {
        let _ = (partner_id, key);
        todo!()
    }

    pub fn hold(&self, partner_id: &PartnerId, hold_key: &IdempotencyKey) -> Option<HoldView> {
        let _ = (partner_id, hold_key);
        todo!()
    }

    pub fn transfer(&self, transfer_id: &TransferId) -> Option<TransferRecord> {
        let _ = transfer_id;
        todo!()
    }

    /// Source-side transfer records still open (for the resolver).
    pub fn open_transfers(&self) -> Vec<(TransferId, TransferRecord)> {
        todo!()
    }

    /// Number of statement lines of a member account (0 if it does not exist).
    pub fn statement_lines(&self, member_id: &MemberId, currency: &CurrencyCode) -> u64 {
        let _ = (member_id, currency);
        todo!()
    }

    pub fn currency_totals(&self) -> BTreeMap<CurrencyCode, CurrencyTotals> {
        todo!()
    }

    /// SHA-256 over every item in order: equal on replicas at the same applied index.
    pub fn digest(&self) -> [u8; 32] {
        todo!()
    }

    /// Log time of the last applied batch.
    pub fn log_time_ms(&self) -> u64 {
        todo!()
    }

    /// Checks every invariant; `Err` names the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        todo!()
    }
}
