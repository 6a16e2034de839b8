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

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tally_ledger::{
    BalanceView, Command, CommandOutcome, CurrencyCode, IdempotencyKey, LedgerError, MemberId, Operation,
    OperationResult, PartnerId, TransferId,
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
/// Partners may not use these prefixes for their own keys, so a partner's key can never
/// collide with a step of one of its transfers.
pub const RESERVED_KEY_PREFIXES: [&str; 2] = [TRANSFER_IN_KEY_PREFIX, TRANSFER_COMPLETE_KEY_PREFIX];

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
}

/// Failures of steps 2 and 3 that a retry can fix.
fn in_progress(error: &ApiError) -> bool {
    matches!(error, ApiError::Backend(_) | ApiError::DeadlinePassed)
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
    let commands = sent.iter().map(|(index, _)| (started[*index].0.to_shard, started[*index].0.in_command()));
    let answers = submit_grouped(backend, deadline, commands.collect()).await;
    let mut received: Vec<(usize, BalanceView, BalanceView)> = Vec::new();
    for ((index, from), answer) in sent.into_iter().zip(answers) {
        let transfer = &started[index].0;
        results[index] = match answer {
            Err(error) if in_progress(&error) => {
                Some(Err(ApiError::TransferInProgress(transfer.transfer_id.clone())))
            }
            Err(error) => Some(Err(error)),
            Ok(outcome) => match outcome.result {
                Ok(OperationResult::TransferredIn { to, .. }) => {
                    received.push((index, from, to));
                    None
                }
                Ok(other) => Some(Err(ApiError::Internal(format!(
                    "transfer-in of {} answered {other:?}",
                    transfer.transfer_id
                )))),
                Err(error) => {
                    tracing::error!(
                        transfer_id = %transfer.transfer_id, %error,
                        "transfer-in failed; the record stays open for the resolver"
                    );
                    Some(Err(ApiError::Ledger(error)))
                }
            },
        };
    }

    // Step 3.
    let commands = received
        .iter()
        .map(|(index, ..)| (started[*index].0.from_shard, started[*index].0.complete_command()));
    let answers = submit_grouped(backend, deadline, commands.collect()).await;
    for ((index, from, to), answer) in received.into_iter().zip(answers) {
        let (transfer, first) = &started[index];
        results[index] = Some(match answer {
            Err(error) if in_progress(&error) => {
                Err(ApiError::TransferInProgress(transfer.transfer_id.clone()))
            }
            Err(error) => Err(error),
            Ok(outcome) => {
                match &outcome.result {
                    Ok(_) => {}
                    // The resolver closed it first: the recipient is credited either way.
                    Err(LedgerError::TransferClosed { status, .. }) if status == "completed" => {}
                    Err(error) => tracing::error!(
                        transfer_id = %transfer.transfer_id, %error,
                        "transfer-complete failed after the recipient was credited"
                    ),
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
    }
}
