//! Test harness: a ledger plus a model of its storage. Every batch goes through
//! [`Harness::batch`], which persists the change set the way a store would (rewrite dirty
//! items, delete those that are gone) and checks that the stored items equal the ledger's,
//! that statement lines are contiguous and add up to the balances, and that every invariant
//! holds. So every test also tests change tracking.

#![allow(dead_code)]

use std::collections::BTreeMap;

use tally_ledger::*;

pub const SKY: &str = "SKYMILES";
pub const HOTEL: &str = "HOTELPTS";
pub const COFFEE: &str = "BEANS";
pub const PARTNER: &str = "skyair";
pub const START_MS: u64 = 1_700_000_000_000;
pub const RETENTION_MS: u64 = limits::IDEMPOTENCY_RETENTION_MS_DEFAULT;
pub const HOUR_MS: u64 = 3_600_000;

pub fn member(id: &str) -> MemberId {
    MemberId::parse(id).unwrap()
}
pub fn currency(code: &str) -> CurrencyCode {
    CurrencyCode::parse(code).unwrap()
}
pub fn partner(id: &str) -> PartnerId {
    PartnerId::parse(id).unwrap()
}
pub fn key(value: &str) -> IdempotencyKey {
    IdempotencyKey::parse(value).unwrap()
}
pub fn transfer_id(value: &str) -> TransferId {
    TransferId::parse(value).unwrap()
}
pub fn member_account(id: &str, code: &str) -> AccountKey {
    AccountKey::member(&member(id), &currency(code))
}
pub fn system_account(kind: SystemAccountKind, code: &str) -> AccountKey {
    AccountKey::system(kind, &currency(code))
}

pub fn enrol(who: &str, code: &str) -> Operation {
    Operation::Enrol { member_id: member(who), currency: currency(code) }
}
pub fn earn(who: &str, code: &str, amount_points: u64) -> Operation {
    Operation::Earn { member_id: member(who), currency: currency(code), amount_points }
}
pub fn redeem(who: &str, code: &str, amount_points: u64) -> Operation {
    Operation::Redeem { member_id: member(who), currency: currency(code), amount_points }
}
pub fn reverse(earn_key: &str, amount_points: u64) -> Operation {
    Operation::ReverseEarn { earn_key: key(earn_key), amount_points }
}
pub fn authorize(who: &str, code: &str, amount_points: u64, expires_in_ms: u64) -> Operation {
    Operation::AuthorizeHold {
        member_id: member(who),
        currency: currency(code),
        amount_points,
        expires_in_ms,
    }
}
pub fn capture(hold_key: &str, amount_points: u64) -> Operation {
    Operation::CaptureHold { hold_key: key(hold_key), amount_points }
}
pub fn void(hold_key: &str) -> Operation {
    Operation::VoidHold { hold_key: key(hold_key) }
}
pub fn transfer(from: &str, to: &str, code: &str, amount_points: u64) -> Operation {
    Operation::Transfer {
        from_member_id: member(from),
        to_member_id: member(to),
        currency: currency(code),
        amount_points,
    }
}
pub fn transfer_out(id: &str, from: &str, to: &str, code: &str, amount_points: u64) -> Operation {
    Operation::TransferOut {
        transfer_id: transfer_id(id),
        from_member_id: member(from),
        to_member_id: member(to),
        currency: currency(code),
        amount_points,
    }
}
pub fn transfer_in(id: &str, from: &str, to: &str, code: &str, amount_points: u64) -> Operation {
    Operation::TransferIn {
        transfer_id: transfer_id(id),
        from_member_id: member(from),
        to_member_id: member(to),
        currency: currency(code),
        amount_points,
    }
}
pub fn complete(id: &str) -> Operation {
    Operation::TransferComplete { transfer_id: transfer_id(id) }
}
pub fn refund(id: &str) -> Operation {
    Operation::TransferRefund { transfer_id: transfer_id(id) }
}
pub fn terms(rate_numerator: u64, rate_denominator: u64) -> AgreementTerms {
    AgreementTerms {
        rate_numerator,
        rate_denominator,
        minimum_points: 0,
        maximum_points: 0,
        block_size_points: 0,
        fee_points: 0,
    }
}
pub fn exchange(who: &str, from: &str, to: &str, amount_points: u64, terms: AgreementTerms) -> Operation {
    Operation::Exchange {
        member_id: member(who),
        from_currency: currency(from),
        to_currency: currency(to),
        amount_points,
        terms,
    }
}
pub fn command(partner_id: &str, idempotency_key: &str, operation: Operation) -> Command {
    Command { partner_id: partner(partner_id), idempotency_key: key(idempotency_key), operation }
}

pub struct Harness {
    pub ledger: Ledger,
    pub log_index: u64,
    pub now_ms: u64,
    pub retention_ms: u64,
    /// What a store would hold after writing every change set.
    pub store: BTreeMap<ItemKey, StateItem>,
    /// Every statement line ever produced, per account, in order.
    pub statements: BTreeMap<AccountKey, Vec<StatementLine>>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with_ledger(Ledger::new())
    }

    /// Starts from a given state, as after a restart from storage.
    pub fn with_ledger(ledger: Ledger) -> Self {
        let store = ledger.items().into_iter().map(|item| (item.key(), item)).collect();
        Harness {
            log_index: 0,
            now_ms: START_MS.max(ledger.log_time_ms()),
            retention_ms: RETENTION_MS,
            store,
            statements: BTreeMap::new(),
            ledger,
        }
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    pub fn header(&self) -> BatchHeader {
        BatchHeader { log_time_ms: self.now_ms, idempotency_retention_ms: self.retention_ms }
    }

    pub fn batch(&mut self, commands: Vec<Command>) -> Vec<CommandOutcome> {
        let batch = ShardBatch { header: self.header(), commands };
        self.log_index += 1;
        let mut changes = ChangeSet::default();
        let outcomes = self.ledger.apply_batch(self.log_index, &batch, &mut changes);
        assert_eq!(outcomes.len(), batch.commands.len());
        self.persist(&changes);
        outcomes
    }

    /// Writes a change set as a store would and checks it against the ledger.
    pub fn persist(&mut self, changes: &ChangeSet) {
        for key in &changes.dirty {
            match self.ledger.item(key) {
                Some(item) => {
                    assert_eq!(&item.key(), key);
                    self.store.insert(key.clone(), item);
                }
                None => {
                    self.store.remove(key);
                }
            }
        }
        let stored: Vec<StateItem> = self.store.values().cloned().collect();
        assert_eq!(stored, self.ledger.items(), "the change set missed a changed item");
        for (account, line) in &changes.statement_lines {
            let lines = self.statements.entry(account.clone()).or_default();
            assert_eq!(line.sequence, lines.len() as u64, "statement of {account} has a gap");
            lines.push(line.clone());
        }
        for (account, lines) in &self.statements {
            let net: i128 =
                lines.iter().map(|line| i128::from(line.credit_points) - i128::from(line.debit_points)).sum();
            let stored = self.ledger.account(account).expect("an account with lines exists");
            assert_eq!(net, stored.net_points(), "statement of {account} does not add up");
            assert_eq!(stored.statement_lines, lines.len() as u64);
            let last = lines.last().expect("at least one line");
            assert_eq!(last.balance_after_points, stored.balance_points());
        }
        self.ledger.check_invariants().unwrap();
    }

    pub fn run_as(
        &mut self,
        partner_id: &str,
        idempotency_key: &str,
        operation: Operation,
    ) -> CommandOutcome {
        self.batch(vec![command(partner_id, idempotency_key, operation)]).remove(0)
    }

    pub fn run(&mut self, idempotency_key: &str, operation: Operation) -> CommandOutcome {
        self.run_as(PARTNER, idempotency_key, operation)
    }

    #[track_caller]
    pub fn ok(&mut self, idempotency_key: &str, operation: Operation) -> OperationResult {
        let outcome = self.run(idempotency_key, operation);
        assert!(!outcome.replay, "{idempotency_key} was a replay");
        match outcome.result {
            Ok(result) => result,
            Err(error) => panic!("{idempotency_key} failed: {error}"),
        }
    }

    #[track_caller]
    pub fn err(&mut self, idempotency_key: &str, operation: Operation) -> LedgerError {
        let outcome = self.run(idempotency_key, operation);
        match outcome.result {
            Ok(result) => panic!("{idempotency_key} succeeded: {result:?}"),
            Err(error) => error,
        }
    }

    pub fn balance(&self, who: &str, code: &str) -> u64 {
        self.view(who, code).balance_points
    }

    #[track_caller]
    pub fn view(&self, who: &str, code: &str) -> BalanceView {
        self.ledger.balance(&member(who), &currency(code)).expect("account exists")
    }

    /// Net points (credits - debits) of a system account, 0 if it does not exist.
    pub fn system(&self, kind: SystemAccountKind, code: &str) -> i128 {
        self.ledger.account(&system_account(kind, code)).map_or(0, Account::net_points)
    }

    pub fn lines(&self, who: &str, code: &str) -> &[StatementLine] {
        self.statements.get(&member_account(who, code)).map_or(&[], Vec::as_slice)
    }
}
