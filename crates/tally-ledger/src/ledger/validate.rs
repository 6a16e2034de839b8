//! The defensive re-check of a command's shape. The gateway validates before proposing, but
//! the state machine must not trust the log's producer: a malformed command that reached the
//! log is answered `Invalid`, deterministically, and changes nothing.

use crate::command::Operation;
use crate::error::ValidationError;
use crate::ids::{check_amount, MemberId};
use crate::limits::HOLD_DURATION_MS_MAX;
use crate::meta::validate_terms;

pub(super) fn operation(operation: &Operation) -> Result<(), ValidationError> {
    match operation {
        Operation::Enrol { .. }
        | Operation::VoidHold { .. }
        | Operation::TransferComplete { .. }
        | Operation::TransferRefund { .. } => Ok(()),
        Operation::Earn { amount_points, .. } | Operation::Redeem { amount_points, .. } => {
            check_amount("amount_points", *amount_points).map(drop)
        }
        // Zero means "all of it" for these two.
        Operation::ReverseEarn { amount_points, .. } | Operation::CaptureHold { amount_points, .. } => {
            match amount_points {
                0 => Ok(()),
                amount_points => check_amount("amount_points", *amount_points).map(drop),
            }
        }
        Operation::AuthorizeHold { amount_points, expires_in_ms, .. } => {
            check_amount("amount_points", *amount_points)?;
            hold_duration(*expires_in_ms)
        }
        Operation::Transfer { from_member_id, to_member_id, amount_points, .. }
        | Operation::TransferOut { from_member_id, to_member_id, amount_points, .. }
        | Operation::TransferIn { from_member_id, to_member_id, amount_points, .. } => {
            check_amount("amount_points", *amount_points)?;
            distinct_members(from_member_id, to_member_id)
        }
        Operation::Exchange { from_currency, to_currency, amount_points, terms, .. } => {
            check_amount("amount_points", *amount_points)?;
            if from_currency == to_currency {
                return Err(ValidationError::new(
                    "to_currency",
                    format!("is {to_currency} like from_currency; an exchange needs two currencies"),
                ));
            }
            validate_terms(terms)
        }
        // The claimed request is validated where it is applied, on its member's shard.
        Operation::ClaimKey { request, .. } => match request.as_ref() {
            Operation::ClaimKey { .. } => {
                Err(ValidationError::new("request", "is a key claim; a claim names a ledger operation"))
            }
            _ => Ok(()),
        },
    }
}

/// A hold must last at least 1 ms past the log time that authorizes it (or it would be born
/// expired) and at most `HOLD_DURATION_MS_MAX`, so reserved points are not locked away forever.
/// (The API's own minimum, `HOLD_DURATION_MS_MIN`, is the gateway's policy.)
fn hold_duration(expires_in_ms: u64) -> Result<(), ValidationError> {
    if !(1..=HOLD_DURATION_MS_MAX).contains(&expires_in_ms) {
        return Err(ValidationError::new(
            "expires_in_ms",
            format!(
                "is {expires_in_ms}; a hold lasts from 1 ms to {HOLD_DURATION_MS_MAX} ms (90 days) after \
                 the log time that authorizes it"
            ),
        ));
    }
    Ok(())
}

fn distinct_members(from_member_id: &MemberId, to_member_id: &MemberId) -> Result<(), ValidationError> {
    if from_member_id == to_member_id {
        return Err(ValidationError::new(
            "to_member_id",
            format!("is {to_member_id}, the same as from_member_id; a transfer needs two members"),
        ));
    }
    Ok(())
}
