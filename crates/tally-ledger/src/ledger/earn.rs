//! Points in and out of a member account: enrol, earn, redeem.

use super::posting::Stage;
use super::{Context, Ledger};
use crate::command::OperationResult;
use crate::error::LedgerError;
use crate::ids::{CurrencyCode, MemberId};
use crate::state::{AccountKey, ChangeSet, EarnRecord, SystemAccountKind};

impl Ledger {
    pub(super) fn enrol(
        &mut self,
        context: &Context<'_>,
        member_id: &MemberId,
        currency: &CurrencyCode,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let member = AccountKey::member(member_id, currency);
        let mut stage = Stage::new(self, context);
        stage.open(&member);
        self.commit(stage.finish(), changes);
        Ok(OperationResult::Enrolled { balance: self.view(&member) })
    }

    /// Issues points; the earn record lets the partner reverse them within the key's retention.
    pub(super) fn earn(
        &mut self,
        context: &Context<'_>,
        member_id: &MemberId,
        currency: &CurrencyCode,
        amount_points: u64,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let member = AccountKey::member(member_id, currency);
        let issuance = AccountKey::system(SystemAccountKind::Issuance, currency);
        let mut stage = Stage::new(self, context);
        stage.post(&issuance, &member, amount_points)?;
        self.commit(stage.finish(), changes);
        let slot = context.slot();
        // The earn's key is new (its idempotency record was absent), and an earn record never
        // outlives the idempotency record of its key.
        assert!(!self.earns.contains_key(&slot), "earn key {} already names an earn", context.key);
        let record = EarnRecord {
            member_id: member_id.clone(),
            currency: currency.clone(),
            earned_points: amount_points,
            reversed_points: 0,
            expires_at_ms: context.retained_until_ms(),
        };
        self.put_earn(slot, record, changes);
        Ok(OperationResult::Earned { balance: self.view(&member) })
    }

    pub(super) fn redeem(
        &mut self,
        context: &Context<'_>,
        member_id: &MemberId,
        currency: &CurrencyCode,
        amount_points: u64,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let member = AccountKey::member(member_id, currency);
        let redemption = AccountKey::system(SystemAccountKind::Redemption, currency);
        self.ensure_available(&member, amount_points)?;
        let mut stage = Stage::new(self, context);
        stage.post(&member, &redemption, amount_points)?;
        self.commit(stage.finish(), changes);
        Ok(OperationResult::Redeemed { balance: self.view(&member) })
    }
}
