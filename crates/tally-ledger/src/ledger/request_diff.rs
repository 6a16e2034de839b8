//! Which field differs when a key is reused for another request. The answer names the first
//! differing field in the request's declaration order, so the partner's error message points at
//! the change that made the retry a new request.

use crate::command::{AgreementTerms, Operation};

#[derive(PartialEq, Eq)]
enum Value<'a> {
    Text(&'a str),
    Points(u64),
}

type Fields<'a> = Vec<(&'static str, Value<'a>)>;

/// `None` when the two requests are the same, else the name of the first field that differs.
///
/// A key claim (`ClaimKey`) compares by the request it claims. A claim and an operation under
/// one key are never the same request: the claim is for a request applied on another shard
/// than this operation's, so when their fields agree the member (hence the shard) differs.
pub(super) fn first_difference(stored: &Operation, request: &Operation) -> Option<&'static str> {
    match (stored, request) {
        (
            Operation::ClaimKey { member_id: stored_member, request: stored_request },
            Operation::ClaimKey { member_id: request_member, request: claimed },
        ) => {
            return first_difference(stored_request, claimed)
                .or((stored_member != request_member).then_some("member_id"));
        }
        (Operation::ClaimKey { request: claimed, .. }, operation)
        | (operation, Operation::ClaimKey { request: claimed, .. }) => {
            return Some(first_difference(claimed, operation).unwrap_or("member_id"));
        }
        _ => {}
    }
    if stored == request {
        return None;
    }
    if stored.kind() != request.kind() {
        return Some("operation type");
    }
    let field = fields(stored)
        .into_iter()
        .zip(fields(request))
        .find(|((_, stored_value), (_, request_value))| stored_value != request_value)
        .map(|((name, _), _)| name);
    assert!(field.is_some(), "every field of {:?} is listed in `fields`", request.kind());
    field
}

fn fields(operation: &Operation) -> Fields<'_> {
    use Value::Points;
    match operation {
        Operation::Enrol { member_id, currency } => {
            vec![("member_id", Value::Text(member_id.as_str())), ("currency", Value::Text(currency.as_str()))]
        }
        Operation::Earn { member_id, currency, amount_points }
        | Operation::Redeem { member_id, currency, amount_points } => vec![
            ("member_id", Value::Text(member_id.as_str())),
            ("currency", Value::Text(currency.as_str())),
            ("amount_points", Points(*amount_points)),
        ],
        Operation::ReverseEarn { earn_key, amount_points } => {
            vec![
                ("earn_idempotency_key", Value::Text(earn_key.as_str())),
                ("amount_points", Points(*amount_points)),
            ]
        }
        Operation::AuthorizeHold { member_id, currency, amount_points, expires_in_ms } => vec![
            ("member_id", Value::Text(member_id.as_str())),
            ("currency", Value::Text(currency.as_str())),
            ("amount_points", Points(*amount_points)),
            ("expires_in_ms", Points(*expires_in_ms)),
        ],
        Operation::CaptureHold { hold_key, amount_points } => {
            vec![
                ("hold_idempotency_key", Value::Text(hold_key.as_str())),
                ("amount_points", Points(*amount_points)),
            ]
        }
        Operation::VoidHold { hold_key } => vec![("hold_idempotency_key", Value::Text(hold_key.as_str()))],
        Operation::Transfer { from_member_id, to_member_id, currency, amount_points } => vec![
            ("from_member_id", Value::Text(from_member_id.as_str())),
            ("to_member_id", Value::Text(to_member_id.as_str())),
            ("currency", Value::Text(currency.as_str())),
            ("amount_points", Points(*amount_points)),
        ],
        Operation::TransferOut { transfer_id, from_member_id, to_member_id, currency, amount_points }
        | Operation::TransferIn { transfer_id, from_member_id, to_member_id, currency, amount_points } => {
            vec![
                ("transfer_id", Value::Text(transfer_id.as_str())),
                ("from_member_id", Value::Text(from_member_id.as_str())),
                ("to_member_id", Value::Text(to_member_id.as_str())),
                ("currency", Value::Text(currency.as_str())),
                ("amount_points", Points(*amount_points)),
            ]
        }
        Operation::TransferComplete { transfer_id } | Operation::TransferRefund { transfer_id } => {
            vec![("transfer_id", Value::Text(transfer_id.as_str()))]
        }
        Operation::Exchange { member_id, from_currency, to_currency, amount_points, terms } => {
            let mut fields = vec![
                ("member_id", Value::Text(member_id.as_str())),
                ("from_currency", Value::Text(from_currency.as_str())),
                ("to_currency", Value::Text(to_currency.as_str())),
                ("amount_points", Points(*amount_points)),
            ];
            fields.extend(term_fields(terms));
            fields
        }
        Operation::ClaimKey { .. } => unreachable!("claims are compared by their request"),
    }
}

fn term_fields(terms: &AgreementTerms) -> Fields<'static> {
    vec![
        ("terms.rate_numerator", Value::Points(terms.rate_numerator)),
        ("terms.rate_denominator", Value::Points(terms.rate_denominator)),
        ("terms.minimum_points", Value::Points(terms.minimum_points)),
        ("terms.maximum_points", Value::Points(terms.maximum_points)),
        ("terms.block_size_points", Value::Points(terms.block_size_points)),
        ("terms.fee_points", Value::Points(terms.fee_points)),
    ]
}
