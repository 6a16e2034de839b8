//! Member-to-member transfers. On one shard a transfer is one posting. Across shards it is
//! three steps, each its own command: `TransferOut` parks the points in the source shard's
//! transit account under a durable open record, `TransferIn` pays them out of the destination
//! shard's transit account at most once per transfer id, and `TransferComplete` (or, on the
//! abandon path, `TransferRefund`) closes the source record. Each shard's transit account
//! carries the points in flight, so every shard stays balanced on its own.

use super::posting::Stage;
use super::{Context, Ledger};
use crate::command::{BalanceView, Operation, OperationResult, TransferStatus};
use crate::error::LedgerError;
use crate::ids::{CurrencyCode, MemberId, TransferId};
use crate::state::{AccountKey, ChangeSet, SystemAccountKind, TransferRecord};

/// The fields every transfer step that moves points shares.
struct Movement<'a> {
    from: AccountKey,
    to: AccountKey,
    transit: AccountKey,
    amount_points: u64,
    from_member_id: &'a MemberId,
    to_member_id: &'a MemberId,
    currency: &'a CurrencyCode,
}

impl<'a> Movement<'a> {
    fn new(from: &'a MemberId, to: &'a MemberId, currency: &'a CurrencyCode, amount_points: u64) -> Self {
        Movement {
            from: AccountKey::member(from, currency),
            to: AccountKey::member(to, currency),
            transit: AccountKey::system(SystemAccountKind::Transit, currency),
            amount_points,
            from_member_id: from,
            to_member_id: to,
            currency,
        }
    }

    fn record(&self, context: &Context<'_>, status: TransferStatus, forget_at_ms: u64) -> TransferRecord {
        TransferRecord {
            partner_id: context.partner_id.clone(),
            from_member_id: self.from_member_id.clone(),
            to_member_id: self.to_member_id.clone(),
            currency: self.currency.clone(),
            amount_points: self.amount_points,
            status,
            opened_at_ms: context.now_ms,
            forget_at_ms,
        }
    }
}

fn closed(transfer_id: &TransferId, status: TransferStatus) -> LedgerError {
    LedgerError::TransferClosed { transfer_id: transfer_id.to_string(), status: status.as_str().to_string() }
}

impl Ledger {
    pub(super) fn apply_transfer(
        &mut self,
        context: &Context<'_>,
        operation: &Operation,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        match operation {
            Operation::Transfer { from_member_id, to_member_id, currency, amount_points } => {
                let movement = Movement::new(from_member_id, to_member_id, currency, *amount_points);
                self.transfer_here(context, &movement, changes)
            }
            Operation::TransferOut { transfer_id, from_member_id, to_member_id, currency, amount_points } => {
                let movement = Movement::new(from_member_id, to_member_id, currency, *amount_points);
                self.transfer_out(context, transfer_id, &movement, changes)
            }
            Operation::TransferIn { transfer_id, from_member_id, to_member_id, currency, amount_points } => {
                let movement = Movement::new(from_member_id, to_member_id, currency, *amount_points);
                self.transfer_in(context, transfer_id, &movement, changes)
            }
            Operation::TransferComplete { transfer_id } => {
                self.transfer_complete(context, transfer_id, changes)
            }
            Operation::TransferRefund { transfer_id } => self.transfer_refund(context, transfer_id, changes),
            _ => panic!("{:?} is not a transfer", operation.kind()),
        }
    }

    fn transfer_here(
        &mut self,
        context: &Context<'_>,
        movement: &Movement<'_>,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        self.ensure_available(&movement.from, movement.amount_points)?;
        let mut stage = Stage::new(self, context);
        stage.post(&movement.from, &movement.to, movement.amount_points)?;
        self.commit(stage.finish(), changes);
        Ok(OperationResult::Transferred { from: self.view(&movement.from), to: self.view(&movement.to) })
    }

    fn transfer_out(
        &mut self,
        context: &Context<'_>,
        transfer_id: &TransferId,
        movement: &Movement<'_>,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        if let Some(existing) = self.transfers.get(transfer_id) {
            return Err(closed(transfer_id, existing.status));
        }
        self.ensure_available(&movement.from, movement.amount_points)?;
        let mut stage = Stage::new(self, context);
        stage.post(&movement.from, &movement.transit, movement.amount_points)?;
        self.commit(stage.finish(), changes);
        // An open record has no forget time: it lives until the resolver completes or refunds it.
        let record = movement.record(context, TransferStatus::Open, u64::MAX);
        self.put_transfer(transfer_id.clone(), record, changes);
        Ok(OperationResult::TransferredOut {
            from: self.view(&movement.from),
            transfer_id: transfer_id.clone(),
        })
    }

    /// Deduplicated by transfer id, whatever the idempotency key: the resolver may retry the
    /// step under a new key after a crash, and the recipient must be paid once.
    fn transfer_in(
        &mut self,
        context: &Context<'_>,
        transfer_id: &TransferId,
        movement: &Movement<'_>,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        if self.transfers.contains_key(transfer_id) {
            let account = self.accounts.get(&movement.to).cloned().unwrap_or_default();
            let to = BalanceView::of(movement.to_member_id, movement.currency, &account);
            return Ok(OperationResult::TransferredIn { to, transfer_id: transfer_id.clone() });
        }
        let mut stage = Stage::new(self, context);
        stage.post(&movement.transit, &movement.to, movement.amount_points)?;
        self.commit(stage.finish(), changes);
        let record = movement.record(context, TransferStatus::Completed, context.retained_until_ms());
        self.put_transfer(transfer_id.clone(), record, changes);
        Ok(OperationResult::TransferredIn { to: self.view(&movement.to), transfer_id: transfer_id.clone() })
    }

    /// Moves no points: the recipient's shard has paid, so the transit points are theirs.
    fn transfer_complete(
        &mut self,
        context: &Context<'_>,
        transfer_id: &TransferId,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let mut record = self.transfer_record(transfer_id)?;
        match record.status {
            TransferStatus::Open => {}
            TransferStatus::Completed => {
                let status = TransferStatus::Completed;
                return Ok(OperationResult::TransferCompleted { transfer_id: transfer_id.clone(), status });
            }
            TransferStatus::Refunded => return Err(closed(transfer_id, record.status)),
        }
        record.status = TransferStatus::Completed;
        record.forget_at_ms = context.retained_until_ms();
        self.put_transfer(transfer_id.clone(), record, changes);
        let status = TransferStatus::Completed;
        Ok(OperationResult::TransferCompleted { transfer_id: transfer_id.clone(), status })
    }

    fn transfer_refund(
        &mut self,
        context: &Context<'_>,
        transfer_id: &TransferId,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let mut record = self.transfer_record(transfer_id)?;
        let movement = Movement::new(
            &record.from_member_id,
            &record.to_member_id,
            &record.currency,
            record.amount_points,
        );
        match record.status {
            TransferStatus::Open => {}
            TransferStatus::Refunded => {
                let from = self.view(&movement.from);
                return Ok(OperationResult::TransferRefunded { from, transfer_id: transfer_id.clone() });
            }
            TransferStatus::Completed => return Err(closed(transfer_id, record.status)),
        }
        let mut stage = Stage::new(self, context);
        stage.post(&movement.transit, &movement.from, movement.amount_points)?;
        let staged = stage.finish();
        let from = movement.from.clone();
        self.commit(staged, changes);
        record.status = TransferStatus::Refunded;
        record.forget_at_ms = context.retained_until_ms();
        self.put_transfer(transfer_id.clone(), record, changes);
        Ok(OperationResult::TransferRefunded { from: self.view(&from), transfer_id: transfer_id.clone() })
    }

    fn transfer_record(&self, transfer_id: &TransferId) -> Result<TransferRecord, LedgerError> {
        self.transfers
            .get(transfer_id)
            .cloned()
            .ok_or_else(|| LedgerError::TransferNotFound { transfer_id: transfer_id.to_string() })
    }
}
