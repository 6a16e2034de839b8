//! The auditor: checks a finished run's history against the final state of every replica.
//! A pure function of [`AuditInput`], so tests can feed it tampered inputs and prove that it
//! catches each kind of bug.
//!
//! What it checks (each failure is one [`Violation`] naming the account or key):
//!
//! 1. **Invariants and conservation**: every shard leader's ledger passes
//!    `Ledger::check_invariants` and balances debits against credits per currency; over all
//!    shards, every currency sums to zero, the transit accounts sum to zero and no cross-shard
//!    transfer is left open.
//! 2. **No negative balance**: no member account has more debits than credits or holds more
//!    than its balance.
//! 3. **Exactly once**: the effects of every operation found in the shards' idempotency
//!    journals (the client keys, and the derived keys of transfer steps and refunds), summed per
//!    account, equal every member account's final balance and held points; an applied-twice
//!    or lost effect shows up as a difference. Each statement line's key appears at most once
//!    per account, each effect has exactly its one line, and the lines add up to the balance.
//! 4. **Acknowledged writes survive**: every acknowledged key is in its shard's journal with
//!    the request that was sent; an acknowledged cross-shard transfer is credited and closed.
//! 5. **Retries answer the same**: all answers a client got for a key (retries, re-sends) have
//!    the same result, log index and log time as each other and as the journal; at most one
//!    of them is not marked as a replay.
//! 6. **Linearizable reads**: a read that started (logical clock) after a write to the same
//!    account was acknowledged shows an applied index at or past that write's log index; and
//!    the balance it returned equals the model's balance of that account at the read's applied
//!    index (the sum of the journaled effects with a log index at or below it).
//! 7. **Replicas agree**: after healing and quiescence every replica of a shard has the
//!    leader's applied index, state digest and statement lines.

use std::collections::BTreeMap;
use std::fmt;

use tally_gateway::transfer::{transfer_complete_key, transfer_in_key, transfer_refund_key};
use tally_ledger::routing::home_shard_of_key;
use tally_ledger::state::{AccountKey, StateItem, StatementLine, SystemAccountKind};
use tally_ledger::{CommandOutcome, CurrencyCode, Ledger, Operation, OperationResult, TransferStatus};
use tally_raft::NodeId;

use crate::history::{History, Sent, Slot};

/// One replica's final state of one shard.
#[derive(Clone, Debug)]
pub struct ReplicaView {
    pub node_id: NodeId,
    pub applied_index: u64,
    pub digest: [u8; 32],
    pub ledger: Ledger,
    /// Every member account's statement lines, read from the replica's tree.
    pub statements: BTreeMap<AccountKey, Vec<StatementLine>>,
}

#[derive(Clone, Debug)]
pub struct AuditInput {
    pub seed: u64,
    pub shard_count: u32,
    pub history: History,
    /// Per shard: the leader's replica first, then the others.
    pub shards: Vec<Vec<ReplicaView>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    Invariant,
    Conservation,
    NegativeBalance,
    OpenTransfer,
    AckedMissing,
    RequestDiffers,
    AnswerDiffers,
    AppliedTwice,
    ModelMismatch,
    Statement,
    StaleRead,
    ReadValue,
    ReplicaDiverged,
    /// The cluster did not finish or converge after the faults stopped.
    Liveness,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.kind, self.detail)
    }
}

/// One change of one member account by one journaled command.
#[derive(Clone, Debug)]
struct Effect {
    account: AccountKey,
    log_index: u64,
    balance_points: i128,
    held_points: i128,
    slot: Slot,
    /// When the client was told about it, if it was.
    acked_at: Option<u64>,
}

struct Audit<'a> {
    input: &'a AuditInput,
    violations: Vec<Violation>,
    effects: Vec<Effect>,
}

pub fn audit(input: &AuditInput) -> Vec<Violation> {
    let mut audit = Audit { input, violations: Vec::new(), effects: Vec::new() };
    audit.invariants_and_conservation();
    audit.journal();
    audit.answers();
    audit.model();
    audit.statements();
    audit.reads();
    audit.replicas();
    audit.violations
}

fn slot_name(slot: &Slot) -> String {
    format!("{}/{}", slot.0, slot.1)
}

fn account_of(member_id: &tally_ledger::MemberId, currency: &CurrencyCode) -> AccountKey {
    AccountKey::member(member_id, currency)
}

/// The member-account changes an applied operation made, from its request and answer.
fn effects_of(operation: &Operation, outcome: &CommandOutcome) -> Vec<(AccountKey, i128, i128)> {
    let Ok(result) = &outcome.result else { return Vec::new() };
    let points = |amount: u64| i128::from(amount);
    match (operation, result) {
        (Operation::Earn { member_id, currency, amount_points }, _) => {
            vec![(account_of(member_id, currency), points(*amount_points), 0)]
        }
        (Operation::Redeem { member_id, currency, amount_points }, _) => {
            vec![(account_of(member_id, currency), -points(*amount_points), 0)]
        }
        (Operation::AuthorizeHold { member_id, currency, amount_points, .. }, _) => {
            vec![(account_of(member_id, currency), 0, points(*amount_points))]
        }
        (Operation::CaptureHold { .. }, OperationResult::HoldCaptured { hold, .. }) => vec![(
            account_of(&hold.member_id, &hold.currency),
            -points(hold.captured_points),
            -points(hold.authorized_points),
        )],
        (Operation::VoidHold { .. }, OperationResult::HoldVoided { hold, .. }) => {
            vec![(account_of(&hold.member_id, &hold.currency), 0, -points(hold.authorized_points))]
        }
        (Operation::Transfer { from_member_id, to_member_id, currency, amount_points }, _) => vec![
            (account_of(from_member_id, currency), -points(*amount_points), 0),
            (account_of(to_member_id, currency), points(*amount_points), 0),
        ],
        (Operation::TransferOut { from_member_id, currency, amount_points, .. }, _) => {
            vec![(account_of(from_member_id, currency), -points(*amount_points), 0)]
        }
        (Operation::TransferIn { to_member_id, currency, amount_points, .. }, _) => {
            vec![(account_of(to_member_id, currency), points(*amount_points), 0)]
        }
        (Operation::TransferRefund { .. }, OperationResult::TransferRefunded { .. }) => Vec::new(),
        (
            Operation::Exchange { member_id, from_currency, to_currency, .. },
            OperationResult::Exchanged { debited_points, credited_points, .. },
        ) => vec![
            (account_of(member_id, from_currency), -points(*debited_points), 0),
            (account_of(member_id, to_currency), points(*credited_points), 0),
        ],
        _ => Vec::new(),
    }
}

impl Audit<'_> {
    fn violation(&mut self, kind: ViolationKind, detail: String) {
        self.violations.push(Violation { kind, detail });
    }

    fn leader(&self, shard: u32) -> &ReplicaView {
        &self.input.shards[shard as usize][0]
    }

    fn invariants_and_conservation(&mut self) {
        let mut net_by_currency: BTreeMap<CurrencyCode, i128> = BTreeMap::new();
        let mut transit_by_currency: BTreeMap<CurrencyCode, i128> = BTreeMap::new();
        for shard in 0..self.input.shard_count {
            let ledger = self.leader(shard).ledger.clone();
            if let Err(broken) = ledger.check_invariants() {
                self.violation(ViolationKind::Invariant, format!("shard {shard}: {broken}"));
            }
            for (currency, totals) in ledger.currency_totals() {
                if totals.debits_points != totals.credits_points {
                    self.violation(
                        ViolationKind::Conservation,
                        format!(
                            "shard {shard}: {currency} debits {} != credits {}",
                            totals.debits_points, totals.credits_points
                        ),
                    );
                }
            }
            for item in ledger.items() {
                let StateItem::Account(key, account) = item else { continue };
                *net_by_currency.entry(key.currency().clone()).or_default() += account.net_points();
                match &key {
                    AccountKey::Member { .. } => {
                        if account.debits_points > account.credits_points
                            || account.held_points > account.balance_points()
                        {
                            self.violation(
                                ViolationKind::NegativeBalance,
                                format!("shard {shard}: {key}: {account:?}"),
                            );
                        }
                    }
                    AccountKey::System { kind: SystemAccountKind::Transit, currency } => {
                        *transit_by_currency.entry(currency.clone()).or_default() += account.net_points();
                    }
                    AccountKey::System { .. } => {}
                }
            }
            for (transfer_id, record) in ledger.open_transfers() {
                self.violation(
                    ViolationKind::OpenTransfer,
                    format!("shard {shard}: transfer {transfer_id} still open after quiescence: {record:?}"),
                );
            }
        }
        for (currency, net) in net_by_currency {
            if net != 0 {
                self.violation(
                    ViolationKind::Conservation,
                    format!("{currency}: all accounts of all shards sum to {net}, not 0"),
                );
            }
        }
        for (currency, net) in transit_by_currency {
            if net != 0 {
                self.violation(
                    ViolationKind::Conservation,
                    format!("{currency}: transit accounts sum to {net} over the shards, not 0"),
                );
            }
        }
    }

    /// Looks up a key in a shard's journal, checks it holds the request sent, and records the
    /// effects. Returns the stored outcome.
    fn journaled(
        &mut self,
        shard: u32,
        slot: Slot,
        operation: &Operation,
        acked_at: Option<u64>,
    ) -> Option<CommandOutcome> {
        let (stored_operation, outcome) = self.leader(shard).ledger.operation(&slot.0, &slot.1)?;
        if &stored_operation != operation {
            self.violation(
                ViolationKind::RequestDiffers,
                format!(
                    "shard {shard}: key {} holds {stored_operation:?}, but {operation:?} was sent",
                    slot_name(&slot)
                ),
            );
        }
        for (account, balance_points, held_points) in effects_of(operation, &outcome) {
            self.effects.push(Effect {
                account,
                log_index: outcome.log_index,
                balance_points,
                held_points,
                slot: slot.clone(),
                acked_at,
            });
        }
        Some(outcome)
    }

    /// An acknowledged request applied on another shard than its key's home shard must have
    /// claimed the key there, for that same request: otherwise the key could serve a second,
    /// different request on a third shard.
    fn claimed(&mut self, shard: u32, slot: &Slot, operation: &Operation) {
        let home = home_shard_of_key(&slot.0, &slot.1, self.input.shard_count);
        if home == shard {
            return;
        }
        match self.leader(home).ledger.operation(&slot.0, &slot.1) {
            Some((Operation::ClaimKey { request, .. }, _))
                if *request == Operation::claimed_request(operation.clone()) => {}
            Some((stored, _)) => self.violation(
                ViolationKind::RequestDiffers,
                format!(
                    "shard {home}: the home shard of acknowledged key {} holds {stored:?}, not its claim \
                     for {operation:?}",
                    slot_name(slot)
                ),
            ),
            None => self.violation(
                ViolationKind::AckedMissing,
                format!(
                    "shard {home}: acknowledged key {} (applied on shard {shard}) was never claimed on \
                     its home shard",
                    slot_name(slot)
                ),
            ),
        }
    }

    fn journal(&mut self) {
        let sent: Vec<(Slot, Sent)> =
            self.input.history.sent.iter().map(|(slot, sent)| (slot.clone(), sent.clone())).collect();
        for (slot, sent) in sent {
            let acked_at = self.input.history.acked.get(&slot).copied();
            match sent {
                Sent::Single { shard, command } => {
                    if acked_at.is_some() {
                        self.claimed(shard, &slot, &command.operation);
                    }
                    let found = self.journaled(shard, slot.clone(), &command.operation, acked_at);
                    if found.is_none() && acked_at.is_some() {
                        self.violation(
                            ViolationKind::AckedMissing,
                            format!(
                                "shard {shard}: acknowledged key {} is not in the journal",
                                slot_name(&slot)
                            ),
                        );
                    }
                }
                Sent::CrossShard(transfer) => {
                    let out = transfer.out_command();
                    if acked_at.is_some() {
                        self.claimed(transfer.from_shard, &slot, &out.operation);
                    }
                    let first = self.journaled(transfer.from_shard, slot.clone(), &out.operation, acked_at);
                    let Some(first) = first else {
                        if acked_at.is_some() {
                            self.violation(
                                ViolationKind::AckedMissing,
                                format!(
                                    "shard {}: acknowledged transfer key {} is not in the journal",
                                    transfer.from_shard,
                                    slot_name(&slot)
                                ),
                            );
                        }
                        continue;
                    };
                    let sent_out = matches!(first.result, Ok(OperationResult::TransferredOut { .. }));
                    let partner = transfer.partner_id.clone();
                    let in_slot = (partner.clone(), transfer_in_key(&transfer.transfer_id));
                    let credited = self
                        .journaled(
                            transfer.to_shard,
                            in_slot.clone(),
                            &transfer.in_command().operation,
                            acked_at,
                        )
                        .is_some_and(|outcome| outcome.result.is_ok());
                    let refund_slot = (partner.clone(), transfer_refund_key(&transfer.transfer_id));
                    let refund = transfer.refund_command().operation;
                    let refunded = self.journaled(transfer.from_shard, refund_slot, &refund, None);
                    let refunded = refunded.is_some_and(|outcome| outcome.result.is_ok());
                    if refunded {
                        // The refund's own answer names no amount: it gives back step 1's.
                        self.effects.push(Effect {
                            account: account_of(&transfer.from_member_id, &transfer.currency),
                            log_index: self
                                .leader(transfer.from_shard)
                                .ledger
                                .operation(&partner, &transfer_refund_key(&transfer.transfer_id))
                                .map(|(_, outcome)| outcome.log_index)
                                .unwrap_or(0),
                            balance_points: i128::from(transfer.amount_points),
                            held_points: 0,
                            slot: (partner.clone(), transfer_refund_key(&transfer.transfer_id)),
                            acked_at: None,
                        });
                    }
                    let complete_slot = (partner, transfer_complete_key(&transfer.transfer_id));
                    let complete = transfer.complete_command().operation;
                    self.journaled(transfer.from_shard, complete_slot, &complete, None);
                    if sent_out && credited && refunded {
                        self.violation(
                            ViolationKind::AppliedTwice,
                            format!("transfer {} was both credited and refunded", transfer.transfer_id),
                        );
                    }
                    if sent_out && acked_at.is_some() {
                        let status = self.leader(transfer.from_shard).ledger.transfer(&transfer.transfer_id);
                        let closed = status.as_ref().map(|record| record.status);
                        if !credited || closed != Some(TransferStatus::Completed) {
                            self.violation(
                                ViolationKind::AckedMissing,
                                format!(
                                    "acknowledged transfer {}: credited={credited}, record {closed:?}",
                                    transfer.transfer_id
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    fn answers(&mut self) {
        let mut by_slot: BTreeMap<&Slot, Vec<&CommandOutcome>> = BTreeMap::new();
        for answer in &self.input.history.answers {
            by_slot.entry(&answer.slot).or_default().push(&answer.outcome);
        }
        let mut found = Vec::new();
        for (slot, outcomes) in by_slot {
            let first = outcomes[0];
            for other in &outcomes[1..] {
                if (&other.result, other.log_index, other.log_time_ms)
                    != (&first.result, first.log_index, first.log_time_ms)
                {
                    found.push(Violation {
                        kind: ViolationKind::AnswerDiffers,
                        detail: format!("key {}: answered {first:?}, then {other:?}", slot_name(slot)),
                    });
                }
            }
            let fresh = outcomes.iter().filter(|outcome| !outcome.replay).count();
            if fresh > 1 {
                found.push(Violation {
                    kind: ViolationKind::AppliedTwice,
                    detail: format!("key {}: {fresh} answers were not replays", slot_name(slot)),
                });
            }
            let shard = match self.input.history.sent.get(slot) {
                Some(Sent::Single { shard, .. }) => *shard,
                Some(Sent::CrossShard(transfer)) => transfer.from_shard,
                None => continue,
            };
            if let Some((_, stored)) = self.leader(shard).ledger.operation(&slot.0, &slot.1) {
                if (&stored.result, stored.log_index, stored.log_time_ms)
                    != (&first.result, first.log_index, first.log_time_ms)
                {
                    found.push(Violation {
                        kind: ViolationKind::AnswerDiffers,
                        detail: format!(
                            "key {}: the client was answered {first:?}, the journal holds {stored:?}",
                            slot_name(slot)
                        ),
                    });
                }
            }
        }
        self.violations.extend(found);
    }

    /// The model's (balance, held) of every account after all journaled effects.
    fn model_totals(&self) -> BTreeMap<AccountKey, (i128, i128)> {
        let mut totals: BTreeMap<AccountKey, (i128, i128)> = BTreeMap::new();
        for effect in &self.effects {
            let entry = totals.entry(effect.account.clone()).or_default();
            entry.0 += effect.balance_points;
            entry.1 += effect.held_points;
        }
        totals
    }

    fn model(&mut self) {
        let mut found = Vec::new();
        let mut actual: BTreeMap<AccountKey, (i128, i128)> = BTreeMap::new();
        for shard in 0..self.input.shard_count {
            for item in self.leader(shard).ledger.items() {
                if let StateItem::Account(key @ AccountKey::Member { .. }, account) = item {
                    actual.insert(key, (account.net_points(), i128::from(account.held_points)));
                }
            }
        }
        let model = self.model_totals();
        let accounts: std::collections::BTreeSet<&AccountKey> = model.keys().chain(actual.keys()).collect();
        for account in accounts {
            let expected = model.get(account).copied().unwrap_or_default();
            let found_points = actual.get(account).copied().unwrap_or_default();
            if expected != found_points {
                found.push(Violation {
                    kind: ViolationKind::ModelMismatch,
                    detail: format!(
                        "{account}: the journaled operations give (balance, held) = {expected:?}, \
                         the ledger holds {found_points:?}"
                    ),
                });
            }
        }
        self.violations.extend(found);
    }

    fn statements(&mut self) {
        let mut found = Vec::new();
        let mut lines_by_account: BTreeMap<&AccountKey, &Vec<StatementLine>> = BTreeMap::new();
        for shard in 0..self.input.shard_count {
            lines_by_account.extend(self.leader(shard).statements.iter());
        }
        let model = self.model_totals();
        for (account, lines) in &lines_by_account {
            let mut per_slot: BTreeMap<Slot, usize> = BTreeMap::new();
            let mut running: i128 = 0;
            for (position, line) in lines.iter().enumerate() {
                running += i128::from(line.credit_points) - i128::from(line.debit_points);
                if line.sequence != position as u64 || i128::from(line.balance_after_points) != running {
                    found.push(Violation {
                        kind: ViolationKind::Statement,
                        detail: format!("{account}: line {position} is {line:?}, running balance {running}"),
                    });
                }
                *per_slot.entry((line.partner_id.clone(), line.idempotency_key.clone())).or_default() += 1;
            }
            for (slot, count) in per_slot {
                if count > 1 {
                    found.push(Violation {
                        kind: ViolationKind::AppliedTwice,
                        detail: format!("{account}: key {} has {count} statement lines", slot_name(&slot)),
                    });
                }
            }
            let expected = model.get(*account).map_or(0, |(balance, _)| *balance);
            if running != expected {
                found.push(Violation {
                    kind: ViolationKind::Statement,
                    detail: format!(
                        "{account}: statement lines add up to {running}, the model to {expected}"
                    ),
                });
            }
        }
        for effect in self.effects.iter().filter(|effect| effect.balance_points != 0) {
            let lines = lines_by_account.get(&effect.account).map(|lines| lines.as_slice()).unwrap_or(&[]);
            let matching = lines
                .iter()
                .filter(|line| {
                    line.partner_id == effect.slot.0
                        && line.idempotency_key == effect.slot.1
                        && line.log_index == effect.log_index
                })
                .count();
            if matching != 1 {
                found.push(Violation {
                    kind: ViolationKind::Statement,
                    detail: format!(
                        "{}: key {} (log index {}) has {matching} statement lines, not 1",
                        effect.account,
                        slot_name(&effect.slot),
                        effect.log_index
                    ),
                });
            }
        }
        self.violations.extend(found);
    }

    fn reads(&mut self) {
        let mut found = Vec::new();
        for read in &self.input.history.reads {
            let account = account_of(&read.member_id, &read.currency);
            let effects: Vec<&Effect> =
                self.effects.iter().filter(|effect| effect.account == account).collect();
            if let Some(missed) = effects.iter().find(|effect| {
                effect.acked_at.is_some_and(|acked_at| acked_at < read.started_at)
                    && effect.log_index > read.applied_log_index
            }) {
                found.push(Violation {
                    kind: ViolationKind::StaleRead,
                    detail: format!(
                        "{account}: a linearizable read started at t{} saw applied index {}, but key {} \
                         (log index {}) was acknowledged at t{}",
                        read.started_at,
                        read.applied_log_index,
                        slot_name(&missed.slot),
                        missed.log_index,
                        missed.acked_at.unwrap_or(0)
                    ),
                });
            }
            let (balance, held) = effects
                .iter()
                .filter(|effect| effect.log_index <= read.applied_log_index)
                .fold((0i128, 0i128), |(balance, held), effect| {
                    (balance + effect.balance_points, held + effect.held_points)
                });
            let seen = read
                .balance
                .as_ref()
                .map_or((0, 0), |view| (i128::from(view.balance_points), i128::from(view.held_points)));
            if seen != (balance, held) {
                found.push(Violation {
                    kind: ViolationKind::ReadValue,
                    detail: format!(
                        "{account}: a read at applied index {} returned (balance, held) = {seen:?}, \
                         the journaled operations up to that index give {:?}",
                        read.applied_log_index,
                        (balance, held)
                    ),
                });
            }
        }
        self.violations.extend(found);
    }

    fn replicas(&mut self) {
        let mut found = Vec::new();
        for (shard, replicas) in self.input.shards.iter().enumerate() {
            let Some((leader, others)) = replicas.split_first() else { continue };
            for replica in others {
                let mut differs = Vec::new();
                if replica.applied_index != leader.applied_index {
                    differs
                        .push(format!("applied index {} vs {}", replica.applied_index, leader.applied_index));
                }
                if replica.digest != leader.digest {
                    differs.push("state digest".to_string());
                }
                if replica.statements != leader.statements {
                    differs.push("statement lines".to_string());
                }
                if !differs.is_empty() {
                    found.push(Violation {
                        kind: ViolationKind::ReplicaDiverged,
                        detail: format!(
                            "shard {shard}: node {} differs from leader node {}: {}",
                            replica.node_id,
                            leader.node_id,
                            differs.join(", ")
                        ),
                    });
                }
            }
        }
        self.violations.extend(found);
    }
}
