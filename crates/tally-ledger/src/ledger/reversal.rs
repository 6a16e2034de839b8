//! Reversal of an earn (goods returned): points go back to the issuance account, never more
//! than the earn gave and never more than the member can spend now.

use super::posting::Stage;
use super::{Context, Ledger};
use crate::command::OperationResult;
use crate::error::LedgerError;
use crate::ids::IdempotencyKey;
use crate::state::{AccountKey, ChangeSet, SystemAccountKind};

impl Ledger {
    pub(super) fn reverse_earn(
        &mut self,
        context: &Context<'_>,
        earn_key: &IdempotencyKey,
        amount_points: u64,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let Some(mut record) = self.retained_record(context.partner_id, earn_key) else {
            return Err(LedgerError::EarnNotFound { earn_key: earn_key.to_string() });
        };
        let Some(mut earn) = record.earn.take() else {
            return Err(LedgerError::EarnNotFound { earn_key: earn_key.to_string() });
        };
        let remaining_points = earn.earned_points - earn.reversed_points;
        // Zero asks for whatever is left; asking when nothing is left is an error too, so a
        // partner is told the earn is already fully reversed.
        let requested_points = if amount_points == 0 { remaining_points } else { amount_points };
        if requested_points == 0 || requested_points > remaining_points {
            return Err(LedgerError::ReversalExceedsEarn {
                earn_key: earn_key.to_string(),
                requested_points,
                remaining_points,
            });
        }
        let member = AccountKey::member(&earn.member_id, &earn.currency);
        let available_points = self.available(&member)?;
        if available_points < requested_points {
            return Err(LedgerError::InsufficientPointsForReversal {
                earn_key: earn_key.to_string(),
                member_id: earn.member_id.to_string(),
                available_points,
                requested_points,
            });
        }
        let issuance = AccountKey::system(SystemAccountKind::Issuance, &earn.currency);
        let mut stage = Stage::new(self, context);
        stage.post(&member, &issuance, requested_points)?;
        self.commit(stage.finish(), changes);
        earn.reversed_points += requested_points;
        record.earn = Some(earn);
        self.put_retained(record, changes);
        Ok(OperationResult::EarnReversed {
            balance: self.view(&member),
            reversed_points: requested_points,
            earn_remaining_points: remaining_points - requested_points,
        })
    }
}
