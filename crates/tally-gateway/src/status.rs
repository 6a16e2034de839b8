//! Errors of the gateway and the one place where they become gRPC statuses.
//!
//! Everything the gateway can fail with is an [`ApiError`]; [`ApiError::code`] is the single
//! mapping to a gRPC code, used both for whole-call statuses ([`From<ApiError> for Status`])
//! and for the per-operation errors of a batch ([`operation_error`]). Messages say what was
//! wrong and, where there is one, what to do.

use tally_ledger::meta::MetaError;
use tally_ledger::{ErrorCode, LedgerError, TransferId, ValidationError};
use tally_proto::v1::OperationError;
use tonic::{Code, Status};

use crate::backend::BackendError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Missing or unrecognised API key.
    #[error("{0}")]
    Unauthenticated(String),
    /// A malformed request field, found before anything was proposed.
    #[error("{0}")]
    Invalid(ValidationError),
    /// A malformed request as a whole (an empty batch, duplicate keys in a batch).
    #[error("{0}")]
    InvalidRequest(String),
    /// Points of another partner's currency.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    /// A well-formed request the current configuration does not allow (no agreement).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request bigger than the gateway accepts.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The ledger's answer to a command (stored with the key: a retry gets the same one).
    #[error("{0}")]
    Ledger(LedgerError),
    /// The meta group's answer to an admin command.
    #[error("{0}")]
    Meta(MetaError),
    /// The cluster could not answer a write.
    #[error("{}", backend_write_message(.0))]
    Backend(BackendError),
    /// The cluster could not answer a read or an admin call.
    #[error("{}", backend_read_message(.0))]
    BackendRead(BackendError),
    /// The request's deadline had passed before anything was submitted.
    #[error(
        "the request's deadline passed before it was submitted; nothing was changed \
         (allow more time, then retry with the same idempotency key)"
    )]
    DeadlinePassed,
    /// The transfer's points left the sender but the recipient is not credited yet.
    #[error(
        "transfer {0} is in progress: the points left the sender but the recipient is not credited yet; \
         retry with the same idempotency key to finish it"
    )]
    TransferInProgress(TransferId),
    /// A broken promise between the gateway and the cluster (a bug, not the caller's fault).
    #[error("internal error: {0}")]
    Internal(String),
}

fn backend_write_message(error: &BackendError) -> String {
    match error {
        BackendError::Unavailable(detail) => {
            format!("cluster unavailable: {detail}; retry with the same idempotency key")
        }
        BackendError::Overloaded(detail) => {
            format!("cluster overloaded: {detail}; back off, then retry with the same idempotency key")
        }
        BackendError::DeadlineExceeded(detail) => format!(
            "deadline exceeded: {detail}; outcome unknown; retry with the same key or call GetOperation"
        ),
        BackendError::Refused(detail) => format!("refused: {detail}"),
    }
}

fn backend_read_message(error: &BackendError) -> String {
    match error {
        BackendError::Unavailable(detail) => format!("cluster unavailable: {detail}; retry the request"),
        BackendError::Overloaded(detail) => {
            format!("cluster overloaded: {detail}; back off, then retry the request")
        }
        BackendError::DeadlineExceeded(detail) => {
            format!("deadline exceeded: {detail}; retry the request with a longer deadline")
        }
        BackendError::Refused(detail) => format!("refused: {detail}"),
    }
}

impl ApiError {
    /// The gRPC code of the error: the only such mapping in the gateway.
    pub fn code(&self) -> Code {
        match self {
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Invalid(_) | ApiError::InvalidRequest(_) => Code::InvalidArgument,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Ledger(error) => match error.code() {
                ErrorCode::InvalidArgument => Code::InvalidArgument,
                ErrorCode::NotFound => Code::NotFound,
                ErrorCode::FailedPrecondition => Code::FailedPrecondition,
                ErrorCode::AlreadyExists => Code::AlreadyExists,
                ErrorCode::PermissionDenied => Code::PermissionDenied,
            },
            ApiError::Meta(error) => match error {
                MetaError::PartnerExists(_) | MetaError::CurrencyTaken { .. } => Code::AlreadyExists,
                MetaError::PartnerNotFound(_)
                | MetaError::CurrencyNotFound(_)
                | MetaError::AgreementNotFound { .. } => Code::NotFound,
                MetaError::InvalidAgreement(_) => Code::InvalidArgument,
                MetaError::Layout(_) => Code::FailedPrecondition,
            },
            ApiError::Backend(error) | ApiError::BackendRead(error) => match error {
                BackendError::Unavailable(_) => Code::Unavailable,
                BackendError::Overloaded(_) => Code::ResourceExhausted,
                BackendError::DeadlineExceeded(_) => Code::DeadlineExceeded,
                BackendError::Refused(_) => Code::FailedPrecondition,
            },
            ApiError::DeadlinePassed => Code::DeadlineExceeded,
            ApiError::TransferInProgress(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        ApiError::Invalid(error)
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// The error of one operation of a batch: the code and message it would have had as a call.
pub fn operation_error(error: &ApiError) -> OperationError {
    OperationError { code: error.code() as i32, message: error.to_string() }
}

/// The error stored with a key, as GetOperation and batches report it.
pub fn ledger_operation_error(error: &LedgerError) -> OperationError {
    operation_error(&ApiError::Ledger(error.clone()))
}

/// Lower-case name of a gRPC code, for metric labels (`ok`, `invalid_argument`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_errors_map_by_class() {
        let error =
            ApiError::Ledger(LedgerError::InsufficientPoints { available_points: 1, requested_points: 2 });
        let status = Status::from(error);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "insufficient points: 1 available, 2 requested");
        let error = ApiError::Ledger(LedgerError::KeyReusedWithDifferentRequest {
            key: "k".into(),
            field: "amount".into(),
        });
        assert_eq!(error.code(), Code::AlreadyExists);
    }

    #[test]
    fn backend_errors_say_what_to_do() {
        let status =
            Status::from(ApiError::Backend(BackendError::Unavailable("no leader for shard 3".into())));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("retry with the same idempotency key"), "{}", status.message());
        let status = Status::from(ApiError::Backend(BackendError::DeadlineExceeded("slow".into())));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("outcome unknown; retry with the same key or call GetOperation"));
        assert_eq!(
            ApiError::Backend(BackendError::Overloaded("queue full".into())).code(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn batch_errors_carry_numeric_codes() {
        let error = operation_error(&ApiError::Invalid(ValidationError::new(
            "amount_points",
            "must be at least 1 point",
        )));
        assert_eq!(error.code, 3);
        assert_eq!(error.message, "amount_points must be at least 1 point");
        assert_eq!(code_name(Code::FailedPrecondition), "failed_precondition");
    }
}
