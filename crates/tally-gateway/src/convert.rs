//! Domain values to protobuf messages (and agreement terms both ways).

use tally_ledger::meta::{Agreement, Partner};
use tally_ledger::state::StatementLine;
use tally_ledger::{AgreementTerms, BalanceView, CommandOutcome, HoldStatus, HoldView, OperationResult};
use tally_proto::v1 as pb;

use crate::status::ApiError;

pub fn balance(view: &BalanceView) -> pb::Balance {
    pb::Balance {
        member_id: view.member_id.to_string(),
        currency: view.currency.to_string(),
        balance_points: view.balance_points,
        held_points: view.held_points,
        available_points: view.available_points,
    }
}

pub fn hold_status(status: HoldStatus) -> pb::HoldStatus {
    match status {
        HoldStatus::Open => pb::HoldStatus::Open,
        HoldStatus::Captured => pb::HoldStatus::Captured,
        HoldStatus::Voided => pb::HoldStatus::Voided,
        HoldStatus::Expired => pb::HoldStatus::Expired,
    }
}

pub fn hold(view: &HoldView) -> pb::Hold {
    pb::Hold {
        hold_idempotency_key: view.hold_key.to_string(),
        member_id: view.member_id.to_string(),
        currency: view.currency.to_string(),
        authorized_points: view.authorized_points,
        captured_points: view.captured_points,
        expires_at_ms: view.expires_at_ms,
        status: hold_status(view.status) as i32,
    }
}

/// The reply for a successful operation named `operation` (an `OperationKind::as_str`).
pub fn operation_reply(
    operation: &str,
    result: &OperationResult,
    replay: bool,
    log_index: u64,
    log_time_ms: u64,
) -> pb::OperationReply {
    let mut reply = pb::OperationReply {
        replay,
        log_index,
        log_time_ms,
        operation: operation.to_string(),
        ..Default::default()
    };
    match result {
        OperationResult::Enrolled { balance: view }
        | OperationResult::Earned { balance: view }
        | OperationResult::Redeemed { balance: view } => reply.balances = vec![balance(view)],
        OperationResult::EarnReversed { balance: view, reversed_points, earn_remaining_points } => {
            reply.balances = vec![balance(view)];
            reply.reversed_points = *reversed_points;
            reply.earn_remaining_points = *earn_remaining_points;
        }
        OperationResult::HoldAuthorized { balance: view, hold: held }
        | OperationResult::HoldCaptured { balance: view, hold: held }
        | OperationResult::HoldVoided { balance: view, hold: held } => {
            reply.balances = vec![balance(view)];
            reply.hold = Some(hold(held));
        }
        OperationResult::Transferred { from, to } => reply.balances = vec![balance(from), balance(to)],
        OperationResult::TransferredOut { from: view, transfer_id }
        | OperationResult::TransferRefunded { from: view, transfer_id }
        | OperationResult::TransferredIn { to: view, transfer_id } => {
            reply.balances = vec![balance(view)];
            reply.transfer_id = transfer_id.to_string();
        }
        OperationResult::TransferCompleted { transfer_id, .. } => reply.transfer_id = transfer_id.to_string(),
        OperationResult::Exchanged { from, to, debited_points, fee_points, credited_points } => {
            reply.balances = vec![balance(from), balance(to)];
            reply.debited_points = *debited_points;
            reply.fee_points = *fee_points;
            reply.credited_points = *credited_points;
        }
        OperationResult::KeyClaimed => {}
    }
    reply
}

/// A command's outcome as the reply of a call, or its stored error.
pub fn outcome_reply(operation: &str, outcome: &CommandOutcome) -> Result<pb::OperationReply, ApiError> {
    match &outcome.result {
        Ok(result) => {
            Ok(operation_reply(operation, result, outcome.replay, outcome.log_index, outcome.log_time_ms))
        }
        Err(error) => Err(ApiError::Ledger(error.clone())),
    }
}

pub fn statement_line(line: &StatementLine) -> pb::StatementLine {
    pb::StatementLine {
        sequence: line.sequence,
        log_index: line.log_index,
        log_time_ms: line.log_time_ms,
        operation: line.kind.as_str().to_string(),
        idempotency_key: line.idempotency_key.to_string(),
        partner_id: line.partner_id.to_string(),
        counterparty: line.counterparty.clone(),
        credit_points: line.credit_points,
        debit_points: line.debit_points,
        balance_after_points: line.balance_after_points,
    }
}

pub fn partner(partner: &Partner) -> pb::Partner {
    pb::Partner {
        partner_id: partner.partner_id.to_string(),
        display_name: partner.display_name.clone(),
        currency: partner.currency.to_string(),
        created_at_ms: partner.created_at_ms,
    }
}

pub fn terms(terms: &AgreementTerms) -> pb::AgreementTerms {
    pb::AgreementTerms {
        rate_numerator: terms.rate_numerator,
        rate_denominator: terms.rate_denominator,
        minimum_points: terms.minimum_points,
        maximum_points: terms.maximum_points,
        block_size_points: terms.block_size_points,
        fee_points: terms.fee_points,
    }
}

pub fn terms_from_proto(terms: &pb::AgreementTerms) -> AgreementTerms {
    AgreementTerms {
        rate_numerator: terms.rate_numerator,
        rate_denominator: terms.rate_denominator,
        minimum_points: terms.minimum_points,
        maximum_points: terms.maximum_points,
        block_size_points: terms.block_size_points,
        fee_points: terms.fee_points,
    }
}

pub fn agreement(agreement: &Agreement) -> pb::Agreement {
    pb::Agreement {
        from_currency: agreement.from_currency.to_string(),
        to_currency: agreement.to_currency.to_string(),
        terms: Some(terms(&agreement.terms)),
        updated_at_ms: agreement.updated_at_ms,
    }
}
