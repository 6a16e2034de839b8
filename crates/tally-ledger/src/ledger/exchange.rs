//! Exchange: a member's points of one currency become points of another at the rate of the
//! agreement the gateway copied into the command. Each currency balances on its own through
//! its partner's settlement account: the source partner's settlement account receives the
//! whole source amount (fee included) and the target partner's pays out the converted points.

use super::posting::Stage;
use super::{Context, Ledger};
use crate::command::{Operation, OperationResult};
use crate::error::LedgerError;
use crate::meta::exchange_quote;
use crate::state::{AccountKey, ChangeSet, SystemAccountKind};

impl Ledger {
    pub(super) fn exchange(
        &mut self,
        context: &Context<'_>,
        operation: &Operation,
        changes: &mut ChangeSet,
    ) -> Result<OperationResult, LedgerError> {
        let Operation::Exchange { member_id, from_currency, to_currency, amount_points, terms } = operation
        else {
            panic!("{:?} is not an exchange", operation.kind());
        };
        let amount_points = *amount_points;
        let from = AccountKey::member(member_id, from_currency);
        let to = AccountKey::member(member_id, to_currency);
        self.available(&from)?;
        let (fee_points, credited_points) = exchange_quote(terms, amount_points)
            .map_err(|reason| LedgerError::ExchangeOutsideAgreement { amount_points, reason })?;
        self.ensure_available(&from, amount_points)?;
        let from_settlement = AccountKey::system(SystemAccountKind::Settlement, from_currency);
        let to_settlement = AccountKey::system(SystemAccountKind::Settlement, to_currency);
        let mut stage = Stage::new(self, context);
        stage.post(&from, &from_settlement, amount_points)?;
        stage.post(&to_settlement, &to, credited_points)?;
        self.commit(stage.finish(), changes);
        Ok(OperationResult::Exchanged {
            from: self.view(&from),
            to: self.view(&to),
            debited_points: amount_points,
            fee_points,
            credited_points,
        })
    }
}
