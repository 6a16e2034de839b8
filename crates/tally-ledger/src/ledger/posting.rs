//! Double-entry postings, staged. An operation first checks its business rules, then stages
//! every account change in a [`Stage`]; only overflow can still fail there. Nothing reaches the
//! ledger until [`Ledger::commit`], so a command that fails at any point writes nothing.

use super::{Context, Ledger};
use crate::error::LedgerError;
use crate::keyed::KeyedMap;
use crate::state::{Account, AccountKey, ChangeSet, ItemKey, StatementLine};

pub(crate) struct Stage<'a> {
    accounts: &'a KeyedMap<AccountKey, Account>,
    context: &'a Context<'a>,
    /// The new value of every account this command touches. A command touches at most four
    /// accounts, so a vector beats a map.
    touched: Vec<(AccountKey, Account)>,
    lines: Vec<(AccountKey, StatementLine)>,
}

/// The staged changes of one command, detached from the ledger so they can be committed.
pub(crate) struct Staged {
    touched: Vec<(AccountKey, Account)>,
    lines: Vec<(AccountKey, StatementLine)>,
}

fn overflow(what: &str, key: &AccountKey) -> LedgerError {
    LedgerError::Overflow { what: format!("{what} of account {key}") }
}

impl<'a> Stage<'a> {
    pub fn new(ledger: &'a Ledger, context: &'a Context<'a>) -> Self {
        Stage { accounts: &ledger.accounts, context, touched: Vec::new(), lines: Vec::new() }
    }

    /// Index of the staged copy of `key`, loading it (or a new empty account) on first use.
    fn slot(&mut self, key: &AccountKey) -> usize {
        if let Some(index) = self.touched.iter().position(|(touched, _)| touched == key) {
            return index;
        }
        let account = self.accounts.get(key).cloned().unwrap_or_default();
        self.touched.push((key.clone(), account));
        self.touched.len() - 1
    }

    /// Opens the account if it does not exist yet.
    pub fn open(&mut self, key: &AccountKey) {
        assert!(key.is_member(), "system accounts open implicitly with their first posting");
        self.slot(key);
    }

    /// Reserves points of a member account for a hold.
    pub fn reserve(&mut self, key: &AccountKey, amount_points: u64) -> Result<(), LedgerError> {
        let index = self.slot(key);
        let account = &mut self.touched[index].1;
        account.held_points =
            account.held_points.checked_add(amount_points).ok_or_else(|| overflow("held points", key))?;
        assert!(account.held_points <= account.balance_points(), "a hold reserves more than {key} has");
        Ok(())
    }

    /// Gives back points a hold reserved.
    pub fn release(&mut self, key: &AccountKey, amount_points: u64) {
        let index = self.slot(key);
        let account = &mut self.touched[index].1;
        assert!(account.held_points >= amount_points, "releasing more than {key} holds");
        account.held_points -= amount_points;
    }

    /// One balanced entry: `amount_points` from `debit` to `credit`, in one currency.
    pub fn post(
        &mut self,
        debit: &AccountKey,
        credit: &AccountKey,
        amount_points: u64,
    ) -> Result<(), LedgerError> {
        assert!(amount_points > 0, "a posting moves at least one point");
        assert_ne!(debit, credit, "a posting moves points between two accounts");
        assert_eq!(debit.currency(), credit.currency(), "a posting stays in one currency");
        let debit_index = self.slot(debit);
        let credit_index = self.slot(credit);
        let debits_points = self.touched[debit_index]
            .1
            .debits_points
            .checked_add(amount_points)
            .ok_or_else(|| overflow("debits", debit))?;
        let credits_points = self.touched[credit_index]
            .1
            .credits_points
            .checked_add(amount_points)
            .ok_or_else(|| overflow("credits", credit))?;
        self.touched[debit_index].1.debits_points = debits_points;
        self.touched[credit_index].1.credits_points = credits_points;
        let debited = &self.touched[debit_index].1;
        if debit.is_member() {
            // Business checks run before staging; reaching here in debit means they missed a case.
            assert!(debited.credits_points >= debited.debits_points, "member account {debit} in debit");
            assert!(debited.held_points <= debited.balance_points(), "{debit} spent points a hold reserves");
        }
        self.line(debit_index, credit, 0, amount_points)?;
        self.line(credit_index, debit, amount_points, 0)
    }

    /// Appends a statement line to a member account; system accounts have none.
    fn line(
        &mut self,
        index: usize,
        counterparty: &AccountKey,
        credit_points: u64,
        debit_points: u64,
    ) -> Result<(), LedgerError> {
        let (key, account) = &mut self.touched[index];
        if !key.is_member() {
            return Ok(());
        }
        let sequence = account.statement_lines;
        account.statement_lines = sequence.checked_add(1).ok_or_else(|| overflow("statement lines", key))?;
        let line = StatementLine {
            sequence,
            log_index: self.context.log_index,
            log_time_ms: self.context.now_ms,
            partner_id: self.context.partner_id.clone(),
            idempotency_key: self.context.key.clone(),
            kind: self.context.kind,
            counterparty: counterparty.name(),
            credit_points,
            debit_points,
            balance_after_points: account.balance_points(),
        };
        self.lines.push((key.clone(), line));
        Ok(())
    }

    pub fn finish(self) -> Staged {
        Staged { touched: self.touched, lines: self.lines }
    }
}

impl Ledger {
    /// Writes staged changes; infallible, because staging already checked everything.
    pub(super) fn commit(&mut self, staged: Staged, changes: &mut ChangeSet) {
        for (key, account) in staged.touched {
            if self.accounts.get(&key) == Some(&account) {
                continue;
            }
            changes.dirty.push(ItemKey::Account(key.clone()));
            self.accounts.insert(key, account);
        }
        changes.statement_lines.extend(staged.lines);
    }
}
