//! Errors as values. [`LedgerError`] is the state machine's answer to a command that cannot be
//! applied; it is stored with the idempotency key, so a retry gets the same failure. Each
//! variant maps to exactly one gRPC status code at the gateway edge ([`LedgerError::code`]).

use serde::{Deserialize, Serialize};

/// A request field that is malformed (wrong shape, out of range). Raised before anything is
/// proposed, so it never reaches the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field} {problem}")]
pub struct ValidationError {
    pub field: String,
    pub problem: String,
}

impl ValidationError {
    pub fn new(field: &str, problem: impl Into<String>) -> Self {
        Self { field: field.to_string(), problem: problem.into() }
    }
}

/// The gRPC status class of an error; the gateway maps each to a `tonic::Code` in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    AlreadyExists,
    PermissionDenied,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LedgerError {
    #[error("invalid request: {0}")]
    Invalid(ValidationError),
    #[error("member {member_id} has no {currency} account; enrol the member or earn points first")]
    AccountNotFound { member_id: String, currency: String },
    #[error("no earn with idempotency key {earn_key} is known for this partner (earns can be reversed only within the idempotency retention)")]
    EarnNotFound { earn_key: String },
    #[error("no hold with key {hold_key} is known for this partner")]
    HoldNotFound { hold_key: String },
    #[error("no transfer {transfer_id} is known on this shard")]
    TransferNotFound { transfer_id: String },
    #[error("insufficient points: {available_points} available, {requested_points} requested")]
    InsufficientPoints { available_points: u64, requested_points: u64 },
    #[error("hold {hold_key} expired at log time {expires_at_ms} ms; authorize a new hold")]
    HoldExpired { hold_key: String, expires_at_ms: u64 },
    #[error("hold {hold_key} is already {status}; it cannot be captured or voided again")]
    HoldClosed { hold_key: String, status: String },
    #[error("capture of {requested_points} points exceeds the hold's {authorized_points} points")]
    CaptureExceedsHold { requested_points: u64, authorized_points: u64 },
    #[error("{}", reversal_exceeds_earn(earn_key, *requested_points, *remaining_points))]
    ReversalExceedsEarn { earn_key: String, requested_points: u64, remaining_points: u64 },
    #[error("member {member_id} has only {available_points} available points, too few to reverse {requested_points} points of earn {earn_key}")]
    InsufficientPointsForReversal {
        earn_key: String,
        member_id: String,
        available_points: u64,
        requested_points: u64,
    },
    #[error("exchange of {amount_points} points is outside the agreement: {reason}")]
    ExchangeOutsideAgreement { amount_points: u64, reason: String },
    #[error("transfer {transfer_id} is already {status}")]
    TransferClosed { transfer_id: String, status: String },
    #[error("the result would overflow: {what}")]
    Overflow { what: String },
    #[error("idempotency key {key} was already used for a different request: {field} differs (use a new key for a new request)")]
    KeyReusedWithDifferentRequest { key: String, field: String },
    #[error("idempotency key {key} cannot be used: its 128-bit fingerprint equals that of another key this shard retains (use a new key)")]
    KeyFingerprintCollision { key: String },
    #[error("{0}")]
    PermissionDenied(String),
}

/// An earn with nothing left to reverse gets its own message: "reversal of 0 points exceeds
/// the 0 points ..." (the answer to `amount_points: 0`, "all of it") named no problem.
fn reversal_exceeds_earn(earn_key: &str, requested_points: u64, remaining_points: u64) -> String {
    if remaining_points == 0 {
        format!("earn {earn_key} is already fully reversed; no points of it are left to reverse")
    } else {
        format!(
            "reversal of {requested_points} points exceeds the {remaining_points} points of earn \
             {earn_key} not yet reversed"
        )
    }
}

impl LedgerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            LedgerError::Invalid(_) => ErrorCode::InvalidArgument,
            LedgerError::AccountNotFound { .. }
            | LedgerError::EarnNotFound { .. }
            | LedgerError::HoldNotFound { .. }
            | LedgerError::TransferNotFound { .. } => ErrorCode::NotFound,
            LedgerError::InsufficientPoints { .. }
            | LedgerError::HoldExpired { .. }
            | LedgerError::HoldClosed { .. }
            | LedgerError::CaptureExceedsHold { .. }
            | LedgerError::ReversalExceedsEarn { .. }
            | LedgerError::InsufficientPointsForReversal { .. }
            | LedgerError::ExchangeOutsideAgreement { .. }
            | LedgerError::TransferClosed { .. }
            | LedgerError::Overflow { .. } => ErrorCode::FailedPrecondition,
            LedgerError::KeyReusedWithDifferentRequest { .. }
            | LedgerError::KeyFingerprintCollision { .. } => ErrorCode::AlreadyExists,
            LedgerError::PermissionDenied(_) => ErrorCode::PermissionDenied,
        }
    }
}

impl From<ValidationError> for LedgerError {
    fn from(error: ValidationError) -> Self {
        LedgerError::Invalid(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fully_reversed_earn_says_so() {
        let error = |requested_points, remaining_points| LedgerError::ReversalExceedsEarn {
            earn_key: "e1".into(),
            requested_points,
            remaining_points,
        };
        assert_eq!(
            error(0, 0).to_string(),
            "earn e1 is already fully reversed; no points of it are left to reverse"
        );
        assert_eq!(
            error(7, 5).to_string(),
            "reversal of 7 points exceeds the 5 points of earn e1 not yet reversed"
        );
    }
}
