//! Transfers between members on different shards.
//!
//! Members on one shard get a plain `Transfer` command. Otherwise the gateway drives three
//! idempotent steps, all under the partner's id (transfer id `"{partner}:{key}"`):
//!
//! 1. `TransferOut` on the sender's shard, with the partner's own idempotency key: debits the
//!    sender into the shard's transit account and opens a durable record. If it fails, the
//!    transfer fails with its error and nothing else happens.
//! 2. `TransferIn` on the recipient's shard with key [`transfer_in_key`]: credits the
//!    recipient, at most once per transfer id.
//! 3. `TransferComplete` on the sender's shard with key [`transfer_complete_key`]: closes the
//!    record.
//!
//! The step keys are derived from the transfer id only, so a retried request (whose step 1 is
//! a replay) drives steps 2 and 3 again and gets their stored answers: the request converges
//! however often it is retried. If step 2 or 3 cannot finish before the deadline the caller
//! gets UNAVAILABLE "transfer ... is in progress"; a retry with the same key finishes it, and
//! the resolver on the sender shard's leader finishes any record still open after a crash.
//!
//! # The resolver
//!
//! A gateway can stop between any two steps (crash, deadline, lost connection) and its caller
//! may never retry, so a record stays open on the sender's shard until something closes it.
//! [`resolve_open_transfers`] runs on the sender shard's leader, round after round, over that
//! shard's open records (`Ledger::open_transfers`). It rebuilds each transfer from its record
//! ([`CrossShardTransfer::from_record`]) and drives steps 2 and 3 with the very commands and
//! keys the gateway uses, so a step the gateway already did is replayed, never repeated:
//!
//! - the recipient is credited (now or earlier) → step 3 closes the record: *completed*. A
//!   caller retrying the transfer then gets its successful answer as a replay.
//! - the recipient's shard refused step 2 (a ledger error, stored under the step's key, so the
//!   step can never succeed) → `TransferRefund` on the sender's shard, under
//!   [`transfer_refund_key`], gives the sender the points back and closes the record:
//!   *refunded*. A caller retrying the transfer gets that same refusal.
//! - a shard unreachable or the deadline passed → *still open*, with the reason; the next round
//!   tries again. So does a record the resolver cannot decide safely: a step key answering
//!   "used for a different request" (that request may have credited the recipient, so neither
//!   completing nor refunding is known to be right), or an answer that contradicts the record.
//!   These are logged as errors for an operator.
//!
//! Completing and refunding exclude each other: both follow from the one stored answer of step
//! 2's key, whoever asks. So the resolver may race a gateway (or another resolver) finishing the
//! same transfer: every step is idempotent and the outcome is the same. Steps are batched like
//! the gateway's: step 2 in one submission per recipient shard (shards concurrently), then the
//! completions and refunds in one submission to the sender's shard.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tally_ledger::routing::shard_of_member;
use tally_ledger::{
    BalanceView, Command, CommandOutcome, CurrencyCode, IdempotencyKey, LedgerError, MemberId, Operation,
    OperationResult, PartnerId, TransferId, TransferRecord, TransferStatus,
};
use tally_proto::v1::OperationReply;

use crate::backend::Backend;
use crate::convert;
use crate::status::ApiError;
use crate::submit::{submit_grouped, Deadline};

/// Key prefix of step 2 (`TransferIn`).
pub const TRANSFER_IN_KEY_PREFIX: &str = "xfer-in:";
/// Key prefix of step 3 (`TransferComplete`).
pub const TRANSFER_COMPLETE_KEY_PREFIX: &str = "xfer-done:";
/// Key prefix of the resolver's `TransferRefund`.
pub const TRANSFER_REFUND_KEY_PREFIX: &str = "xfer-refund:";
/// Partners may not use these prefixes for their own keys, so a partner's key can never
/// collide with a step of one of its transfers.
pub const RESERVED_KEY_PREFIXES: [&str; 3] =
    [TRANSFER_IN_KEY_PREFIX, TRANSFER_COMPLETE_KEY_PREFIX, TRANSFER_REFUND_KEY_PREFIX];

/// The id of the cross-shard transfer a partner's request starts: `"{partner}:{key}"`.
pub fn transfer_id(partner_id: &PartnerId, idempotency_key: &IdempotencyKey) -> Result<TransferId, ApiError> {
    TransferId::parse(format!("{partner_id}:{idempotency_key}")).map_err(ApiError::Invalid)
}

fn step_key(prefix: &str, transfer_id: &TransferId) -> IdempotencyKey {
    let digest = hex::encode(Sha256::digest(transfer_id.as_str().as_bytes()));
    IdempotencyKey::parse(format!("{prefix}{}", &digest[..32])).expect("a derived key is short and printable")
}

/// Idempotency key of step 2: `"xfer-in:"` and the first 32 hex digits of SHA-256 of the id.
pub fn transfer_in_key(transfer_id: &TransferId) -> IdempotencyKey {
    step_key(TRANSFER_IN_KEY_PREFIX, transfer_id)
}

/// Idempotency key of step 3: `"xfer-done:"` and the first 32 hex digits of SHA-256 of the id.
pub fn transfer_complete_key(transfer_id: &TransferId) -> IdempotencyKey {
    step_key(TRANSFER_COMPLETE_KEY_PREFIX, transfer_id)
}

/// Idempotency key of the resolver's refund: `"xfer-refund:"` and the first 32 hex digits of
/// SHA-256 of the id.
pub fn transfer_refund_key(transfer_id: &TransferId) -> IdempotencyKey {
    step_key(TRANSFER_REFUND_KEY_PREFIX, transfer_id)
}

/// One admitted transfer whose members live on different shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossShardTransfer {
    pub transfer_id: TransferId,
    pub partner_id: PartnerId,
    /// The partner's key: the key of step 1.
    pub idempotency_key: IdempotencyKey,
    pub from_member_id: MemberId,
    pub to_member_id: MemberId,
    pub currency: CurrencyCode,
    pub amount_points: u64,
    pub from_shard: u32,
    pub to_shard: u32,
}

impl CrossShardTransfer {
    /// The transfer that opened `record` on shard `from_shard`, as the gateway built it: the
    /// partner's key is the transfer id after `"{partner}:"`, the shards follow the routing
    /// rule. `Err` says why the record cannot be a cross-shard transfer from that shard.
    pub fn from_record(
        transfer_id: TransferId,
        record: &TransferRecord,
        from_shard: u32,
        shard_count: u32,
    ) -> Result<Self, String> {
        let key = transfer_id
            .as_str()
            .strip_prefix(record.partner_id.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .ok_or_else(|| format!("the transfer id is not \"{}:<idempotency key>\"", record.partner_id))?;
        let idempotency_key = IdempotencyKey::parse(key)
            .map_err(|error| format!("the transfer id does not end with an idempotency key: {error}"))?;
        let sender_shard = shard_of_member(&record.from_member_id, shard_count);
        if sender_shard != from_shard {
            return Err(format!(
                "its sender {} lives on shard {sender_shard}, not on shard {from_shard}",
                record.from_member_id
            ));
        }
        let to_shard = shard_of_member(&record.to_member_id, shard_count);
        if to_shard == from_shard {
            return Err(format!(
                "its recipient {} lives on the sender's shard {from_shard}",
                record.to_member_id
            ));
        }
        Ok(Self {
            transfer_id,
            partner_id: record.partner_id.clone(),
            idempotency_key,
            from_member_id: record.from_member_id.clone(),
            to_member_id: record.to_member_id.clone(),
            currency: record.currency.clone(),
            amount_points: record.amount_points,
            from_shard,
            to_shard,
        })
    }

    fn command(&self, idempotency_key: IdempotencyKey, operation: Operation) -> Command {
        Command { partner_id: self.partner_id.clone(), idempotency_key, operation }
    }

    /// Step 1, for the sender's shard.
    pub fn out_command(&self) -> Command {
        self.command(
            self.idempotency_key.clone(),
            Operation::TransferOut {
                transfer_id: self.transfer_id.clone(),
                from_member_id: self.from_member_id.clone(),
                to_member_id: self.to_member_id.clone(),
                currency: self.currency.clone(),
                amount_points: self.amount_points,
            },
        )
    }

    /// Step 2, for the recipient's shard.
    pub fn in_command(&self) -> Command {
        self.command(
            transfer_in_key(&self.transfer_id),
            Operation::TransferIn {
                transfer_id: self.transfer_id.clone(),
                from_member_id: self.from_member_id.clone(),
                to_member_id: self.to_member_id.clone(),
                currency: self.currency.clone(),
                amount_points: self.amount_points,
            },
        )
    }

    /// Step 3, for the sender's shard.
    pub fn complete_command(&self) -> Command {
        self.command(
            transfer_complete_key(&self.transfer_id),
            Operation::TransferComplete { transfer_id: self.transfer_id.clone() },
        )
    }

    /// The resolver's alternative to step 3 when step 2 was refused, for the sender's shard.
    pub fn refund_command(&self) -> Command {
        self.command(
            transfer_refund_key(&self.transfer_id),
            Operation::TransferRefund { transfer_id: self.transfer_id.clone() },
        )
    }
}

/// Failures of steps 2 and 3 that a retry can fix.
fn in_progress(error: &ApiError) -> bool {
    matches!(error, ApiError::Backend(_) | ApiError::DeadlinePassed)
}

/// What the recipient's shard answered step 2 with.
enum Credit {
    /// The recipient has the points (credited now, or earlier): their balance.
    Credited(BalanceView),
    /// The shard refused the step.
    Refused(LedgerError),
}

/// Step 2 of each transfer: one submission per recipient shard, shards concurrently. `Err`:
/// the step was not answered (see [`in_progress`]), or answered something it never should.
async fn credit_recipients<B: Backend>(
    backend: &Arc<B>,
    deadline: Deadline,
    transfers: &[&CrossShardTransfer],
) -> Vec<Result<Credit, ApiError>> {
    let commands = transfers.iter().map(|transfer| (transfer.to_shard, transfer.in_command()));
    let answers = submit_grouped(backend, deadline, commands.collect()).await;
    transfers
        .iter()
        .zip(answers)
        .map(|(transfer, answer)| match answer?.result {
            Ok(OperationResult::TransferredIn { to, .. }) => Ok(Credit::Credited(to)),
            Ok(other) => {
                Err(ApiError::Internal(format!("transfer-in of {} answered {other:?}", transfer.transfer_id)))
            }
            Err(error) => Ok(Credit::Refused(error)),
        })
        .collect()
}

/// How a record on the sender's shard is to be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// Step 3: the recipient has the points.
    Complete,
    /// The recipient's shard refused step 2: the sender gets the points back.
    Refund,
}

impl Closing {
    fn command(self, transfer: &CrossShardTransfer) -> Command {
        match self {
            Closing::Complete => transfer.complete_command(),
            Closing::Refund => transfer.refund_command(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Closing::Complete => "transfer-complete",
            Closing::Refund => "transfer-refund",
        }
    }

    /// `Ok` when the shard's answer says the record is closed this way (now or earlier);
    /// otherwise what it said instead.
    fn closed(self, outcome: &CommandOutcome) -> Result<(), String> {
        let wanted = match self {
            Closing::Complete => TransferStatus::Completed,
            Closing::Refund => TransferStatus::Refunded,
        };
        match (&outcome.result, self) {
            (Ok(OperationResult::TransferCompleted { .. }), Closing::Complete)
            | (Ok(OperationResult::TransferRefunded { .. }), Closing::Refund) => Ok(()),
            (Err(LedgerError::TransferClosed { status, .. }), _) if status == wanted.as_str() => Ok(()),
            (Ok(other), _) => Err(format!("{} answered {other:?}", self.name())),
            (Err(error), _) => Err(format!("{} failed: {error}", self.name())),
        }
    }
}

/// Closes records on their senders' shards (steps 3 or refunds): one submission per shard.
async fn close_records<B: Backend>(
    backend: &Arc<B>,
    deadline: Deadline,
    closings: &[(&CrossShardTransfer, Closing)],
) -> Vec<Result<CommandOutcome, ApiError>> {
    let commands =
        closings.iter().map(|(transfer, closing)| (transfer.from_shard, closing.command(transfer)));
    submit_grouped(backend, deadline, commands.collect()).await
}

/// Runs steps 2 and 3 of transfers whose step 1 has an outcome (batched per shard, shards
/// concurrently) and returns one reply per transfer, in order: balances of the sender (after
/// step 1) and the recipient (after step 2), the replay flag and log position of step 1.
pub async fn finish<B: Backend>(
    backend: &Arc<B>,
    deadline: Deadline,
    started: Vec<(CrossShardTransfer, CommandOutcome)>,
) -> Vec<Result<OperationReply, ApiError>> {
    let mut results: Vec<Option<Result<OperationReply, ApiError>>> =
        (0..started.len()).map(|_| None).collect();

    // Step 1's answers.
    let mut sent: Vec<(usize, BalanceView)> = Vec::new();
    for (index, (transfer, outcome)) in started.iter().enumerate() {
        match &outcome.result {
            Ok(OperationResult::TransferredOut { from, .. }) => sent.push((index, from.clone())),
            Ok(other) => {
                results[index] = Some(Err(ApiError::Internal(format!(
                    "transfer-out of {} answered {other:?}",
                    transfer.transfer_id
                ))))
            }
            Err(error) => results[index] = Some(Err(ApiError::Ledger(error.clone()))),
        }
    }

    // Step 2.
    let transfers: Vec<&CrossShardTransfer> = sent.iter().map(|(index, _)| &started[*index].0).collect();
    let credits = credit_recipients(backend, deadline, &transfers).await;
    let mut received: Vec<(usize, BalanceView, BalanceView)> = Vec::new();
    for ((index, from), credit) in sent.into_iter().zip(credits) {
        let transfer = &started[index].0;
        results[index] = match credit {
            Err(error) if in_progress(&error) => {
                Some(Err(ApiError::TransferInProgress(transfer.transfer_id.clone())))
            }
            Err(error) => Some(Err(error)),
            Ok(Credit::Credited(to)) => {
                received.push((index, from, to));
                None
            }
            Ok(Credit::Refused(error)) => {
                tracing::error!(
                    transfer_id = %transfer.transfer_id, %error,
                    "transfer-in refused; the record stays open for the resolver"
                );
                Some(Err(ApiError::Ledger(error)))
            }
        };
    }

    // Step 3.
    let closings: Vec<(&CrossShardTransfer, Closing)> =
        received.iter().map(|(index, ..)| (&started[*index].0, Closing::Complete)).collect();
    let answers = close_records(backend, deadline, &closings).await;
    for ((index, from, to), answer) in received.into_iter().zip(answers) {
        let (transfer, first) = &started[index];
        results[index] = Some(match answer {
            Err(error) if in_progress(&error) => {
                Err(ApiError::TransferInProgress(transfer.transfer_id.clone()))
            }
            Err(error) => Err(error),
            Ok(outcome) => {
                // Already completed (by the resolver, say) counts as done: the recipient is
                // credited either way.
                if let Err(error) = Closing::Complete.closed(&outcome) {
                    tracing::error!(
                        transfer_id = %transfer.transfer_id, %error,
                        "transfer-complete failed after the recipient was credited"
                    );
                }
                Ok(OperationReply {
                    replay: first.replay,
                    log_index: first.log_index,
                    log_time_ms: first.log_time_ms,
                    operation: "transfer".to_string(),
                    balances: vec![convert::balance(&from), convert::balance(&to)],
                    transfer_id: transfer.transfer_id.to_string(),
                    ..Default::default()
                })
            }
        });
    }

    results
        .into_iter()
        .map(|result| result.unwrap_or_else(|| Err(ApiError::Internal("transfer step lost".to_string()))))
        .collect()
}

/// What one round of [`resolve_open_transfers`] did, per transfer id, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolveReport {
    /// The recipient is credited and the record closed as completed.
    pub completed: Vec<TransferId>,
    /// The recipient's shard refused the credit; the sender has the points back and the record
    /// is closed as refunded.
    pub refunded: Vec<TransferId>,
    /// Not resolved in this round, and why: a shard or the deadline (the next round retries),
    /// or a state the resolver must not decide alone (logged as an error for an operator).
    pub still_open: Vec<(TransferId, String)>,
}

impl ResolveReport {
    fn completed(&mut self, transfer_id: TransferId, how: &str) {
        tracing::info!(%transfer_id, outcome = "completed", "open transfer resolved: {how}");
        self.completed.push(transfer_id);
    }

    fn refunded(&mut self, transfer_id: TransferId, how: &str) {
        tracing::info!(%transfer_id, outcome = "refunded", "open transfer resolved: {how}");
        self.refunded.push(transfer_id);
    }

    /// `retry`: a later round can resolve it without help (a shard or the deadline).
    fn still_open(&mut self, transfer_id: TransferId, why: String, retry: bool) {
        if retry {
            tracing::warn!(%transfer_id, outcome = "still_open", why = %why, "open transfer not resolved yet");
        } else {
            tracing::error!(
                %transfer_id, outcome = "still_open", why = %why,
                "open transfer cannot be resolved automatically; an operator must look at it"
            );
        }
        self.still_open.push((transfer_id, why));
    }
}

/// Whether step 2's refusal is its stored, final answer. A key "used for a different request"
/// is not: that request is unknown (it may even have credited the recipient), so refunding
/// could create points.
fn refusal_is_final(error: &LedgerError) -> bool {
    !matches!(error, LedgerError::KeyReusedWithDifferentRequest { .. })
}

/// One round of the resolver over the open transfer records of shard `source_shard` (read
/// from its ledger, `Ledger::open_transfers`): completes every transfer whose recipient is or
/// can be credited, refunds every transfer whose recipient's shard refused the credit, and
/// leaves the rest open with the reason (see the module documentation). Idempotent: a second
/// round over the same records changes nothing. Records given that are already closed are
/// reported as they are, and no command is sent for them.
pub async fn resolve_open_transfers<B: Backend>(
    backend: &Arc<B>,
    deadline: Deadline,
    source_shard: u32,
    open: Vec<(TransferId, TransferRecord)>,
) -> ResolveReport {
    let mut report = ResolveReport::default();
    let shard_count = backend.shard_count();
    let mut transfers: Vec<CrossShardTransfer> = Vec::with_capacity(open.len());
    for (transfer_id, record) in open {
        match record.status {
            TransferStatus::Open => {}
            TransferStatus::Completed => {
                report.completed(transfer_id, "the record was already completed");
                continue;
            }
            TransferStatus::Refunded => {
                report.refunded(transfer_id, "the record was already refunded");
                continue;
            }
        }
        match CrossShardTransfer::from_record(transfer_id.clone(), &record, source_shard, shard_count) {
            Ok(transfer) => transfers.push(transfer),
            Err(why) => report.still_open(transfer_id, format!("not a cross-shard transfer: {why}"), false),
        }
    }
    if transfers.is_empty() {
        return report;
    }

    // Step 2, replayed where the gateway already did it.
    let all: Vec<&CrossShardTransfer> = transfers.iter().collect();
    let credits = credit_recipients(backend, deadline, &all).await;
    let mut closings: Vec<(&CrossShardTransfer, Closing)> = Vec::with_capacity(all.len());
    for (transfer, credit) in all.into_iter().zip(credits) {
        let id = || transfer.transfer_id.clone();
        match credit {
            Ok(Credit::Credited(_)) => closings.push((transfer, Closing::Complete)),
            Ok(Credit::Refused(error)) if refusal_is_final(&error) => {
                tracing::warn!(
                    transfer_id = %transfer.transfer_id, %error,
                    "transfer-in was refused for good; refunding the sender"
                );
                closings.push((transfer, Closing::Refund));
            }
            Ok(Credit::Refused(error)) => {
                report.still_open(id(), format!("transfer-in on shard {}: {error}", transfer.to_shard), false)
            }
            Err(error) => {
                let retry = in_progress(&error);
                report.still_open(id(), format!("transfer-in on shard {}: {error}", transfer.to_shard), retry)
            }
        }
    }

    // Step 3, or the refund.
    let answers = close_records(backend, deadline, &closings).await;
    for ((transfer, closing), answer) in closings.into_iter().zip(answers) {
        let id = transfer.transfer_id.clone();
        let shard = transfer.from_shard;
        match answer {
            Err(error) => {
                let retry = in_progress(&error);
                report.still_open(id, format!("{} on shard {shard}: {error}", closing.name()), retry)
            }
            Ok(outcome) => match (closing.closed(&outcome), closing) {
                (Ok(()), Closing::Complete) => report.completed(id, "recipient credited, record completed"),
                (Ok(()), Closing::Refund) => report.refunded(id, "transfer-in refused, sender refunded"),
                (Err(why), _) => report.still_open(id, format!("on shard {shard}: {why}"), false),
            },
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_are_short_and_deterministic() {
        let id =
            transfer_id(&PartnerId::parse("sky").unwrap(), &IdempotencyKey::parse("k".repeat(128)).unwrap())
                .unwrap();
        let first = transfer_in_key(&id);
        assert_eq!(first, transfer_in_key(&id));
        assert!(first.as_str().starts_with("xfer-in:"));
        assert_eq!(first.as_str().len(), "xfer-in:".len() + 32);
        assert_ne!(transfer_complete_key(&id).as_str(), first.as_str());
        assert!(transfer_complete_key(&id).as_str().len() <= 128);
        let refund = transfer_refund_key(&id);
        assert_eq!(refund, transfer_refund_key(&id));
        assert!(refund.as_str().starts_with("xfer-refund:"));
        assert_eq!(refund.as_str().len(), "xfer-refund:".len() + 32);
        for key in [&first, &transfer_complete_key(&id), &refund] {
            assert!(RESERVED_KEY_PREFIXES.iter().any(|prefix| key.as_str().starts_with(prefix)), "{key}");
        }
    }

    fn record(partner: &str, from: &str, to: &str) -> TransferRecord {
        TransferRecord {
            partner_id: PartnerId::parse(partner).unwrap(),
            from_member_id: MemberId::parse(from).unwrap(),
            to_member_id: MemberId::parse(to).unwrap(),
            currency: CurrencyCode::parse("SKYMILES").unwrap(),
            amount_points: 30,
            status: TransferStatus::Open,
            opened_at_ms: 1,
            forget_at_ms: u64::MAX,
        }
    }

    /// A member on a shard other than `from`'s, and `from`'s shard.
    fn apart(from: &str, shard_count: u32) -> (String, u32) {
        let from_shard = shard_of_member(&MemberId::parse(from).unwrap(), shard_count);
        let to = (0..1_000)
            .map(|n| format!("m-{n}"))
            .find(|member| {
                shard_of_member(&MemberId::parse(member.as_str()).unwrap(), shard_count) != from_shard
            })
            .unwrap();
        (to, from_shard)
    }

    #[test]
    fn a_record_rebuilds_the_gateway_transfer() {
        let partner = PartnerId::parse("sky").unwrap();
        let key = IdempotencyKey::parse("t:1").unwrap();
        let id = transfer_id(&partner, &key).unwrap();
        let (to, from_shard) = apart("alice", 4);
        let transfer =
            CrossShardTransfer::from_record(id.clone(), &record("sky", "alice", &to), from_shard, 4).unwrap();
        assert_eq!(transfer.idempotency_key, key);
        assert_eq!(transfer.to_shard, shard_of_member(&MemberId::parse(to.as_str()).unwrap(), 4));
        assert_eq!(transfer.in_command().idempotency_key, transfer_in_key(&id));
        assert_eq!(transfer.refund_command().idempotency_key, transfer_refund_key(&id));
        assert_eq!(
            transfer.refund_command().operation,
            Operation::TransferRefund { transfer_id: id.clone() }
        );

        let other = TransferId::parse("hotel:t:1").unwrap();
        assert!(CrossShardTransfer::from_record(other, &record("sky", "alice", &to), from_shard, 4).is_err());
        let wrong_shard = (from_shard + 1) % 4;
        assert!(CrossShardTransfer::from_record(id.clone(), &record("sky", "alice", &to), wrong_shard, 4)
            .is_err());
        let same = CrossShardTransfer::from_record(id, &record("sky", "alice", "bob"), 0, 1);
        assert!(same.unwrap_err().contains("sender's shard"));
    }
}
