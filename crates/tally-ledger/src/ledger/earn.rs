//! Points in and out of a member account: enrol, earn, redeem.

use super::posting::Stage;
use super::{Context, Ledger};
use crate::command::OperationResult;
use crate::error::LedgerError;
use crate::ids::{CurrencyCode, MemberId};
use crate::state::{AccountKey, ChangeSet, SystemAccountKind};

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
        // `apply_command` stores the earn record with the key's answer.
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
