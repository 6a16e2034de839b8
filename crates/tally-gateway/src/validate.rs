//! Admission: request messages to domain operations. Nothing is proposed before a request has
//! passed here, so a rejected request changes nothing. Every message names the field and the
//! rule it broke, e.g. `amount_points must be at least 1 point`.
//!
//! The caller's currency is the currency of every operation; only an exchange names
//! currencies, and one of them must be the caller's ([`exchange`]).

use std::collections::HashSet;

use tally_ledger::limits::{
    HOLD_DURATION_MS_MAX, HOLD_DURATION_MS_MIN, STATEMENT_PAGE_LINES_MAX, SUBMIT_BATCH_OPERATIONS_MAX,
};
use tally_ledger::meta::MetaState;
use tally_ledger::{check_amount, CurrencyCode, IdempotencyKey, MemberId, Operation, ValidationError};
use tally_proto::v1::{
    batch_operation, AuthorizeHoldRequest, BatchOperation, CaptureHoldRequest, EarnRequest, EnrolRequest,
    ExchangeRequest, ReadConsistency, RedeemRequest, ReverseEarnRequest, StatementOrder, SubmitBatchRequest,
    TransferRequest, VoidHoldRequest,
};

use crate::auth::Caller;
use crate::backend::Consistency;
use crate::status::ApiError;
use crate::transfer::RESERVED_KEY_PREFIXES;

/// Statement lines per page when the request says 0.
pub const STATEMENT_PAGE_LINES_DEFAULT: usize = 100;

/// An admitted write: its key, the member whose shard it goes to, and what to do there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub idempotency_key: IdempotencyKey,
    /// Routes the write: `shard_of_member(member_id)`.
    pub member_id: MemberId,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// One command on the member's shard.
    Apply(Operation),
    /// A transfer from `Write::member_id`; routing decides between one command (both members
    /// on one shard) and the cross-shard protocol.
    Transfer { to_member_id: MemberId, currency: CurrencyCode, amount_points: u64 },
}

impl Action {
    /// The operation's name, as in replies, statements and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Apply(operation) => operation.kind().as_str(),
            Action::Transfer { .. } => "transfer",
        }
    }
}

/// Renames the field of a validation error (the id types name their generic field).
fn field<T>(name: &str, result: Result<T, ValidationError>) -> Result<T, ValidationError> {
    result.map_err(|mut error| {
        error.field = name.to_string();
        error
    })
}

/// A key for a write: the general rules plus the prefixes reserved for transfer steps.
pub fn write_key(name: &str, value: &str) -> Result<IdempotencyKey, ValidationError> {
    let key = field(name, IdempotencyKey::parse(value))?;
    if let Some(prefix) = RESERVED_KEY_PREFIXES.iter().find(|prefix| value.starts_with(*prefix)) {
        return Err(ValidationError::new(
            name,
            format!("must not start with `{prefix}` (reserved for the steps of cross-shard transfers)"),
        ));
    }
    Ok(key)
}

/// A key that names an earlier operation (to reverse, capture, void or look up).
pub fn reference_key(name: &str, value: &str) -> Result<IdempotencyKey, ValidationError> {
    field(name, IdempotencyKey::parse(value))
}

pub fn member(name: &str, value: &str) -> Result<MemberId, ValidationError> {
    field(name, MemberId::parse(value))
}

pub fn currency(name: &str, value: &str) -> Result<CurrencyCode, ValidationError> {
    field(name, CurrencyCode::parse(value))
}

/// An amount where 0 means "all of it".
fn amount_or_whole(name: &'static str, amount_points: u64) -> Result<u64, ValidationError> {
    if amount_points == 0 {
        Ok(0)
    } else {
        check_amount(name, amount_points)
    }
}

pub fn enrol(caller: &Caller, request: &EnrolRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let member_id = member("member_id", &request.member_id)?;
    let operation = Operation::Enrol { member_id: member_id.clone(), currency: caller.currency.clone() };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

pub fn earn(caller: &Caller, request: &EarnRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let member_id = member("member_id", &request.member_id)?;
    let amount_points = check_amount("amount_points", request.amount_points)?;
    let operation =
        Operation::Earn { member_id: member_id.clone(), currency: caller.currency.clone(), amount_points };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

pub fn redeem(caller: &Caller, request: &RedeemRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let member_id = member("member_id", &request.member_id)?;
    let amount_points = check_amount("amount_points", request.amount_points)?;
    let operation =
        Operation::Redeem { member_id: member_id.clone(), currency: caller.currency.clone(), amount_points };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

pub fn reverse_earn(_caller: &Caller, request: &ReverseEarnRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let earn_key = reference_key("earn_idempotency_key", &request.earn_idempotency_key)?;
    let amount_points = amount_or_whole("amount_points", request.amount_points)?;
    let member_id = member("member_id", &request.member_id)?;
    let operation = Operation::ReverseEarn { earn_key, amount_points };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

/// The command carries the duration, and the shard sets the expiry from the log time at which
/// it applies the hold: so a retry of the request is the same command (it replays) even when
/// it reaches another gateway much later.
pub fn authorize_hold(caller: &Caller, request: &AuthorizeHoldRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let member_id = member("member_id", &request.member_id)?;
    let amount_points = check_amount("amount_points", request.amount_points)?;
    if request.expires_in_ms < HOLD_DURATION_MS_MIN {
        return Err(ValidationError::new(
            "expires_in_ms",
            format!("is {}; a hold lasts at least {HOLD_DURATION_MS_MIN} ms", request.expires_in_ms),
        )
        .into());
    }
    if request.expires_in_ms > HOLD_DURATION_MS_MAX {
        return Err(ValidationError::new(
            "expires_in_ms",
            format!("is {}; the longest hold is {HOLD_DURATION_MS_MAX} ms (90 days)", request.expires_in_ms),
        )
        .into());
    }
    let operation = Operation::AuthorizeHold {
        member_id: member_id.clone(),
        currency: caller.currency.clone(),
        amount_points,
        expires_in_ms: request.expires_in_ms,
    };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

pub fn capture_hold(_caller: &Caller, request: &CaptureHoldRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let hold_key = reference_key("hold_idempotency_key", &request.hold_idempotency_key)?;
    let member_id = member("member_id", &request.member_id)?;
    let amount_points = amount_or_whole("amount_points", request.amount_points)?;
    let operation = Operation::CaptureHold { hold_key, amount_points };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

pub fn void_hold(_caller: &Caller, request: &VoidHoldRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let hold_key = reference_key("hold_idempotency_key", &request.hold_idempotency_key)?;
    let member_id = member("member_id", &request.member_id)?;
    let operation = Operation::VoidHold { hold_key };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

pub fn transfer(caller: &Caller, request: &TransferRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let from_member_id = member("from_member_id", &request.from_member_id)?;
    let to_member_id = member("to_member_id", &request.to_member_id)?;
    if from_member_id == to_member_id {
        return Err(ValidationError::new("to_member_id", "must differ from from_member_id").into());
    }
    let amount_points = check_amount("amount_points", request.amount_points)?;
    Ok(Write {
        idempotency_key,
        member_id: from_member_id,
        action: Action::Transfer { to_member_id, currency: caller.currency.clone(), amount_points },
    })
}

/// Shape first, then the rules: the caller's currency must be one side, both currencies must
/// be issued, and an agreement from one to the other must exist. Its terms are copied into
/// the command, so the shard applies the rate in force when the request was admitted.
pub fn exchange(caller: &Caller, meta: &MetaState, request: &ExchangeRequest) -> Result<Write, ApiError> {
    let idempotency_key = write_key("idempotency_key", &request.idempotency_key)?;
    let member_id = member("member_id", &request.member_id)?;
    let from_currency = currency("from_currency", &request.from_currency)?;
    let to_currency = currency("to_currency", &request.to_currency)?;
    if from_currency == to_currency {
        return Err(ValidationError::new("to_currency", "must differ from from_currency").into());
    }
    let amount_points = check_amount("amount_points", request.amount_points)?;
    if caller.currency != from_currency && caller.currency != to_currency {
        return Err(ApiError::PermissionDenied(format!(
            "partner {} issues {}; it may only exchange points into or out of {}",
            caller.partner_id, caller.currency, caller.currency
        )));
    }
    for code in [&from_currency, &to_currency] {
        if meta.partner_by_currency(code).is_none() {
            return Err(ApiError::FailedPrecondition(format!(
                "no partner issues currency {code}; an operator creates one with `tally partner create`"
            )));
        }
    }
    let Some(agreement) = meta.agreement(&from_currency, &to_currency) else {
        return Err(ApiError::FailedPrecondition(format!(
            "no exchange agreement from {from_currency} to {to_currency}; an operator sets one with \
             `tally agreement set`"
        )));
    };
    let operation = Operation::Exchange {
        member_id: member_id.clone(),
        from_currency,
        to_currency,
        amount_points,
        terms: agreement.terms.clone(),
    };
    Ok(Write { idempotency_key, member_id, action: Action::Apply(operation) })
}

/// The name of a batch operation before it is validated (for metrics and messages).
pub fn batch_operation_name(operation: &BatchOperation) -> &'static str {
    use batch_operation::Operation as O;
    match &operation.operation {
        Some(O::Enrol(_)) => "enrol",
        Some(O::Earn(_)) => "earn",
        Some(O::Redeem(_)) => "redeem",
        Some(O::ReverseEarn(_)) => "reverse_earn",
        Some(O::AuthorizeHold(_)) => "authorize_hold",
        Some(O::CaptureHold(_)) => "capture_hold",
        Some(O::VoidHold(_)) => "void_hold",
        Some(O::Transfer(_)) => "transfer",
        Some(O::Exchange(_)) => "exchange",
        None => "unset",
    }
}

fn batch_operation_key(operation: &BatchOperation) -> Option<&str> {
    use batch_operation::Operation as O;
    Some(match operation.operation.as_ref()? {
        O::Enrol(request) => &request.idempotency_key,
        O::Earn(request) => &request.idempotency_key,
        O::Redeem(request) => &request.idempotency_key,
        O::ReverseEarn(request) => &request.idempotency_key,
        O::AuthorizeHold(request) => &request.idempotency_key,
        O::CaptureHold(request) => &request.idempotency_key,
        O::VoidHold(request) => &request.idempotency_key,
        O::Transfer(request) => &request.idempotency_key,
        O::Exchange(request) => &request.idempotency_key,
    })
}

/// One operation of a batch (its own errors do not fail the others).
pub fn batch_operation(
    caller: &Caller,
    meta: &MetaState,
    operation: &BatchOperation,
) -> Result<Write, ApiError> {
    use batch_operation::Operation as O;
    match &operation.operation {
        Some(O::Enrol(request)) => enrol(caller, request),
        Some(O::Earn(request)) => earn(caller, request),
        Some(O::Redeem(request)) => redeem(caller, request),
        Some(O::ReverseEarn(request)) => reverse_earn(caller, request),
        Some(O::AuthorizeHold(request)) => authorize_hold(caller, request),
        Some(O::CaptureHold(request)) => capture_hold(caller, request),
        Some(O::VoidHold(request)) => void_hold(caller, request),
        Some(O::Transfer(request)) => transfer(caller, request),
        Some(O::Exchange(request)) => exchange(caller, meta, request),
        None => Err(ValidationError::new(
            "operation",
            "must be set to one of enrol, earn, redeem, reverse_earn, authorize_hold, capture_hold, \
             void_hold, transfer, exchange",
        )
        .into()),
    }
}

/// Rules of the batch as a whole: not empty, not too big, distinct keys.
pub fn batch(request: &SubmitBatchRequest) -> Result<(), ApiError> {
    let count = request.operations.len();
    if count == 0 {
        return Err(ValidationError::new("operations", "must contain at least one operation").into());
    }
    if count > SUBMIT_BATCH_OPERATIONS_MAX {
        return Err(ApiError::ResourceExhausted(format!(
            "batch of {count} operations exceeds the limit of {SUBMIT_BATCH_OPERATIONS_MAX}; split it"
        )));
    }
    let mut seen = HashSet::with_capacity(count);
    for (index, operation) in request.operations.iter().enumerate() {
        // Empty keys are reported by the operation itself.
        if let Some(key) = batch_operation_key(operation).filter(|key| !key.is_empty()) {
            if !seen.insert(key) {
                return Err(ApiError::InvalidRequest(format!(
                    "operations[{index}].idempotency_key {key:?} is used more than once in this batch; \
                     keys must be distinct within a batch"
                )));
            }
        }
    }
    Ok(())
}

pub fn consistency(value: i32) -> Result<Consistency, ValidationError> {
    match ReadConsistency::try_from(value) {
        Ok(ReadConsistency::Unspecified | ReadConsistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(ReadConsistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(ValidationError::new(
            "consistency",
            format!("is {value}; use READ_CONSISTENCY_LINEARIZABLE (1) or READ_CONSISTENCY_STALE (2)"),
        )),
    }
}

/// Where a statement page starts and how it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Inclusive; `None` for the first page.
    pub start_sequence: Option<u64>,
    pub newest_first: bool,
    pub limit: usize,
}

fn unknown_order(order: i32) -> ValidationError {
    let problem =
        format!("is {order}; use STATEMENT_ORDER_NEWEST_FIRST (1) or STATEMENT_ORDER_OLDEST_FIRST (2)");
    ValidationError::new("order", problem)
}

pub fn page(order: i32, page_size: u32, page_token: &str) -> Result<PageRequest, ValidationError> {
    let newest_first = match StatementOrder::try_from(order) {
        Ok(StatementOrder::Unspecified | StatementOrder::NewestFirst) => true,
        Ok(StatementOrder::OldestFirst) => false,
        Err(_) => return Err(unknown_order(order)),
    };
    let limit = match page_size as usize {
        0 => STATEMENT_PAGE_LINES_DEFAULT,
        size if size > STATEMENT_PAGE_LINES_MAX => {
            return Err(ValidationError::new(
                "page_size",
                format!("is {size}; the limit is {STATEMENT_PAGE_LINES_MAX} lines per page"),
            ))
        }
        size => size,
    };
    let start_sequence = if page_token.is_empty() {
        None
    } else {
        let parsed =
            page_token.parse::<u64>().ok().filter(|_| page_token.bytes().all(|b| b.is_ascii_digit()));
        Some(parsed.ok_or_else(|| {
            ValidationError::new(
                "page_token",
                "is not a token from a previous reply; send it unchanged, or empty for the first page",
            )
        })?)
    };
    Ok(PageRequest { start_sequence, newest_first, limit })
}

#[cfg(test)]
mod tests {
    use tally_ledger::PartnerId;
    use tonic::Code;

    use super::*;

    fn caller() -> Caller {
        Caller {
            partner_id: PartnerId::parse("sky").unwrap(),
            currency: CurrencyCode::parse("SKYMILES").unwrap(),
        }
    }

    #[test]
    fn amounts_and_keys() {
        let request = EarnRequest { idempotency_key: "k".into(), member_id: "m".into(), amount_points: 0 };
        let error = earn(&caller(), &request).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(error.to_string(), "amount_points must be at least 1 point");
        let request = EarnRequest { idempotency_key: String::new(), member_id: "m".into(), amount_points: 1 };
        assert_eq!(earn(&caller(), &request).unwrap_err().to_string(), "idempotency_key must not be empty");
        let request =
            EarnRequest { idempotency_key: "xfer-in:1".into(), member_id: "m".into(), amount_points: 1 };
        assert!(earn(&caller(), &request).unwrap_err().to_string().contains("reserved"));
        let request = ReverseEarnRequest {
            idempotency_key: "k".into(),
            earn_idempotency_key: "".into(),
            ..Default::default()
        };
        assert!(reverse_earn(&caller(), &request)
            .unwrap_err()
            .to_string()
            .starts_with("earn_idempotency_key "));
    }

    #[test]
    fn transfer_needs_two_members() {
        let request = TransferRequest {
            idempotency_key: "k".into(),
            from_member_id: "a".into(),
            to_member_id: "a".into(),
            amount_points: 5,
        };
        assert_eq!(
            transfer(&caller(), &request).unwrap_err().to_string(),
            "to_member_id must differ from from_member_id"
        );
    }

    #[test]
    fn pages() {
        assert_eq!(
            page(0, 0, "").unwrap(),
            PageRequest { start_sequence: None, newest_first: true, limit: STATEMENT_PAGE_LINES_DEFAULT }
        );
        assert_eq!(page(2, 10, "42").unwrap().start_sequence, Some(42));
        assert!(page(0, 1001, "").unwrap_err().to_string().starts_with("page_size "));
        assert!(page(0, 10, "+4").unwrap_err().to_string().starts_with("page_token "));
        assert!(page(9, 10, "").unwrap_err().to_string().starts_with("order "));
    }
}
