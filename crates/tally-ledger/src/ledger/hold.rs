//! Holds: authorize reserves points until an expiry log time, capture moves some of them to
//! the partner and releases the rest, void releases them all, expiry releases them by itself.

use super::posting::Stage;
use super::{Context, Ledger, Slot};
use crate::command::{HoldStatus, HoldView, OperationResult};
use crate::error::LedgerError;
use crate::ids::IdempotencyKey;
use crate::state::{AccountKey, ChangeSet, HoldRecord, SystemAccountKind};

impl Ledger {
    pub(super) fn authorize_hold(
        &mut self,
        context: &Context<'_>,
        member: &AccountKey,
        amount_points: u64,
        expires_at_ms: u64,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let AccountKey::Member { member_id, currency } = member else {
            panic!("holds reserve member points only");
        };
        self.ensure_available(member, amount_points)?;
        let mut stage = Stage::new(self, context);
        stage.reserve(member, amount_points)?;
        self.commit(stage.finish(), changes);
        let slot = context.slot();
        assert!(!self.holds.contains_key(&slot), "hold key {} already names a hold", context.key);
        let hold = HoldView {
            hold_key: context.key.clone(),
            member_id: member_id.clone(),
            currency: currency.clone(),
            authorized_points: amount_points,
            captured_points: 0,
            expires_at_ms,
            status: HoldStatus::Open,
        };
        let forget_at_ms = expires_at_ms.max(context.now_ms).saturating_add(context.retention_ms);
        self.put_hold(slot, HoldRecord { hold: hold.clone(), forget_at_ms }, changes);
        Ok(OperationResult::HoldAuthorized { balance: self.view(member), hold })
    }

    /// A partial capture closes the hold: what is not captured goes back to the member.
    pub(super) fn capture_hold(
        &mut self,
        context: &Context<'_>,
        hold_key: &IdempotencyKey,
        amount_points: u64,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let slot = (context.partner_id.clone(), hold_key.clone());
        let mut record = self.open_hold(&slot, changes)?;
        let authorized_points = record.hold.authorized_points;
        let captured_points = if amount_points == 0 { authorized_points } else { amount_points };
        if captured_points > authorized_points {
            return Err(LedgerError::CaptureExceedsHold {
                requested_points: captured_points,
                authorized_points,
            });
        }
        let member = AccountKey::member(&record.hold.member_id, &record.hold.currency);
        let redemption = AccountKey::system(SystemAccountKind::Redemption, &record.hold.currency);
        let mut stage = Stage::new(self, context);
        stage.release(&member, authorized_points);
        stage.post(&member, &redemption, captured_points)?;
        self.commit(stage.finish(), changes);
        record.hold.status = HoldStatus::Captured;
        record.hold.captured_points = captured_points;
        let hold = record.hold.clone();
        self.put_hold(slot, record, changes);
        Ok(OperationResult::HoldCaptured { balance: self.view(&member), hold })
    }

    pub(super) fn void_hold(
        &mut self,
        context: &Context<'_>,
        hold_key: &IdempotencyKey,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let slot = (context.partner_id.clone(), hold_key.clone());
        let mut record = self.open_hold(&slot, changes)?;
        let member = AccountKey::member(&record.hold.member_id, &record.hold.currency);
        self.release_held(&member, record.hold.authorized_points, changes);
        record.hold.status = HoldStatus::Voided;
        let hold = record.hold.clone();
        self.put_hold(slot, record, changes);
        Ok(OperationResult::HoldVoided { balance: self.view(&member), hold })
    }

    /// The hold named by `slot` if it is still open, or why it cannot be captured or voided.
    fn open_hold(&mut self, slot: &Slot, changes: &mut ChangeSet) -> Result<HoldRecord, LedgerError> {
        let hold_key = slot.1.to_string();
        let Some(record) = self.holds.get(slot) else {
            return Err(LedgerError::HoldNotFound { hold_key });
        };
        let expires_at_ms = record.hold.expires_at_ms;
        match record.hold.status {
            // The sweep at the start of the batch expires due holds first, so this is only a
            // second line of defence: a due hold is never captured.
            HoldStatus::Open if expires_at_ms <= self.log_time_ms => {
                self.expire_hold(slot, changes);
                Err(LedgerError::HoldExpired { hold_key, expires_at_ms })
            }
            HoldStatus::Open => Ok(record.clone()),
            HoldStatus::Expired => Err(LedgerError::HoldExpired { hold_key, expires_at_ms }),
            HoldStatus::Captured | HoldStatus::Voided => {
                Err(LedgerError::HoldClosed { hold_key, status: record.hold.status.as_str().to_string() })
            }
        }
    }
}
