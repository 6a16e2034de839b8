//! Commands: what a partner asks a shard to do, and what the shard answers.
//!
//! A [`Command`] is the unit of exactly-once: it carries the partner and the idempotency key
//! that scope its deduplication. Many commands travel in one Raft entry as a [`ShardBatch`],
//! whose [`BatchHeader`] carries the leader-stamped log time, so apply never reads a clock.

use serde::{Deserialize, Serialize};

use crate::error::LedgerError;
use crate::ids::{CurrencyCode, IdempotencyKey, MemberId, PartnerId, TransferId};

/// Terms of an exchange agreement from one currency into another, copied from the meta group
/// into every `Exchange` command when the gateway admits it, so that the shard applies the
/// rate that was in force when the request was accepted and apply stays deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementTerms {
    /// Points of the target currency credited per `rate_denominator` source points.
    pub rate_numerator: u64,
    pub rate_denominator: u64,
    /// Smallest source amount accepted (0: no minimum).
    pub minimum_points: u64,
    /// Largest source amount accepted (0: no maximum).
    pub maximum_points: u64,
    /// The source amount must be a multiple of this (0 or 1: any amount).
    pub block_size_points: u64,
    /// Source points kept by the source partner before conversion (0: no fee).
    pub fee_points: u64,
}

impl AgreementTerms {
    /// All zero: terms that no agreement has (its denominator is at least 1), used where terms
    /// are deliberately not recorded.
    pub fn unset() -> Self {
        Self {
            rate_numerator: 0,
            rate_denominator: 0,
            minimum_points: 0,
            maximum_points: 0,
            block_size_points: 0,
            fee_points: 0,
        }
    }
}

/// One ledger operation. Amounts are whole points; zero is rejected by validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Open the member's account in the partner's currency (idempotent: enrolling twice is fine).
    Enrol { member_id: MemberId, currency: CurrencyCode },
    /// Partner issues points to a member: debit the partner's issuance account, credit the
    /// member. Enrols the member implicitly.
    Earn { member_id: MemberId, currency: CurrencyCode, amount_points: u64 },
    /// Member spends points: debit the member, credit the partner's redemption account.
    Redeem { member_id: MemberId, currency: CurrencyCode, amount_points: u64 },
    /// Undo an earn (all of it when `amount_points` is 0, else that part) by the earn's key.
    ReverseEarn { earn_key: IdempotencyKey, amount_points: u64 },
    /// Reserve points for `expires_in_ms` from the log time at which the hold is applied. The
    /// hold is named by this command's key. A duration, not an instant: a retry of the same
    /// request is then the very same command whenever and wherever it is admitted, so it
    /// replays instead of looking like a different request under the same key.
    AuthorizeHold { member_id: MemberId, currency: CurrencyCode, amount_points: u64, expires_in_ms: u64 },
    /// Capture a hold (all of it when `amount_points` is 0); the rest is released.
    CaptureHold { hold_key: IdempotencyKey, amount_points: u64 },
    /// Release a hold without moving points.
    VoidHold { hold_key: IdempotencyKey },
    /// Member to member in one currency, both accounts on this shard.
    Transfer { from_member_id: MemberId, to_member_id: MemberId, currency: CurrencyCode, amount_points: u64 },
    /// Cross-shard transfer, step 1 on the source shard: debit the sender into the shard's
    /// transit account and keep a durable open record named `transfer_id`.
    TransferOut {
        transfer_id: TransferId,
        from_member_id: MemberId,
        to_member_id: MemberId,
        currency: CurrencyCode,
        amount_points: u64,
    },
    /// Cross-shard transfer, step 2 on the destination shard: credit the recipient from the
    /// shard's transit account, at most once per `transfer_id`.
    TransferIn {
        transfer_id: TransferId,
        from_member_id: MemberId,
        to_member_id: MemberId,
        currency: CurrencyCode,
        amount_points: u64,
    },
    /// Cross-shard transfer, step 3 on the source shard: mark the open record completed.
    TransferComplete { transfer_id: TransferId },
    /// Cross-shard transfer, abandon path on the source shard: give the points back.
    TransferRefund { transfer_id: TransferId },
    /// Convert a member's points from one currency into another under an agreement.
    Exchange {
        member_id: MemberId,
        from_currency: CurrencyCode,
        to_currency: CurrencyCode,
        amount_points: u64,
        terms: AgreementTerms,
    },
    /// Reserves the partner's idempotency key, on the key's home shard
    /// ([`home_shard_of_key`](crate::routing::home_shard_of_key)), for `request`, which is
    /// applied on `member_id`'s shard. Keys are scoped per partner, not per shard: without the
    /// claim, one key reused for members on two shards would be applied on both. Moves no
    /// points. Build it with [`Operation::claim_key`].
    ClaimKey { member_id: MemberId, request: Box<Operation> },
}

impl Operation {
    /// The claim of a key for `request`, routed by `member_id`.
    pub fn claim_key(member_id: MemberId, request: Operation) -> Operation {
        Operation::ClaimKey { member_id, request: Box::new(Operation::claimed_request(request)) }
    }

    /// What a claim records of `request`: all of it but an exchange's terms (zeroed). The
    /// gateway copies terms at admission, so a retry after the agreement changed must still
    /// match the claim; the member's shard decides about the terms.
    pub fn claimed_request(request: Operation) -> Operation {
        match request {
            Operation::Exchange { member_id, from_currency, to_currency, amount_points, terms: _ } => {
                Operation::Exchange {
                    member_id,
                    from_currency,
                    to_currency,
                    amount_points,
                    terms: AgreementTerms::unset(),
                }
            }
            other => other,
        }
    }

    /// The operation's name as it appears in statements, metrics and messages.
    pub fn kind(&self) -> OperationKind {
        match self {
            Operation::Enrol { .. } => OperationKind::Enrol,
            Operation::Earn { .. } => OperationKind::Earn,
            Operation::Redeem { .. } => OperationKind::Redeem,
            Operation::ReverseEarn { .. } => OperationKind::ReverseEarn,
            Operation::AuthorizeHold { .. } => OperationKind::AuthorizeHold,
            Operation::CaptureHold { .. } => OperationKind::CaptureHold,
            Operation::VoidHold { .. } => OperationKind::VoidHold,
            Operation::Transfer { .. } => OperationKind::Transfer,
            Operation::TransferOut { .. } => OperationKind::TransferOut,
            Operation::TransferIn { .. } => OperationKind::TransferIn,
            Operation::TransferComplete { .. } => OperationKind::TransferComplete,
            Operation::TransferRefund { .. } => OperationKind::TransferRefund,
            Operation::Exchange { .. } => OperationKind::Exchange,
            Operation::ClaimKey { .. } => OperationKind::ClaimKey,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OperationKind {
    Enrol,
    Earn,
    Redeem,
    ReverseEarn,
    AuthorizeHold,
    CaptureHold,
    VoidHold,
    Transfer,
    TransferOut,
    TransferIn,
    TransferComplete,
    TransferRefund,
    Exchange,
    ClaimKey,
    /// Not a command: the release of a hold whose expiry log time has passed.
    HoldExpiry,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Enrol => "enrol",
            OperationKind::Earn => "earn",
            OperationKind::Redeem => "redeem",
            OperationKind::ReverseEarn => "reverse_earn",
            OperationKind::AuthorizeHold => "authorize_hold",
            OperationKind::CaptureHold => "capture_hold",
            OperationKind::VoidHold => "void_hold",
            OperationKind::Transfer => "transfer",
            OperationKind::TransferOut => "transfer_out",
            OperationKind::TransferIn => "transfer_in",
            OperationKind::TransferComplete => "transfer_complete",
            OperationKind::TransferRefund => "transfer_refund",
            OperationKind::Exchange => "exchange",
            OperationKind::ClaimKey => "claim_key",
            OperationKind::HoldExpiry => "hold_expiry",
        }
    }
}

/// A partner's request, scoped for deduplication by `(partner_id, idempotency_key)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub partner_id: PartnerId,
    pub idempotency_key: IdempotencyKey,
    pub operation: Operation,
}

/// Stamped by the leader when it proposes a batch; identical on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Milliseconds since the Unix epoch on the leader's clock when the batch was proposed.
    /// Apply uses `max(previous log time, this)` so log time never goes backwards.
    pub log_time_ms: u64,
    /// How long idempotency records of this batch are kept, in log time.
    pub idempotency_retention_ms: u64,
}

/// Many commands for one shard, proposed as one Raft entry (group commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBatch {
    pub header: BatchHeader,
    pub commands: Vec<Command>,
}

/// Balance of one member account after an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    pub member_id: MemberId,
    pub currency: CurrencyCode,
    pub balance_points: u64,
    pub held_points: u64,
    /// `balance_points - held_points`.
    pub available_points: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Open,
    Captured,
    Voided,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Open => "open",
            HoldStatus::Captured => "captured",
            HoldStatus::Voided => "voided",
            HoldStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub hold_key: IdempotencyKey,
    pub member_id: MemberId,
    pub currency: CurrencyCode,
    /// Points reserved when the hold was authorized.
    pub authorized_points: u64,
    /// Points moved to the partner by the capture (0 until captured).
    pub captured_points: u64,
    pub expires_at_ms: u64,
    pub status: HoldStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferStatus {
    /// Points left the sender; the recipient's shard has not confirmed yet.
    Open,
    Completed,
    Refunded,
}

impl TransferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Open => "open",
            TransferStatus::Completed => "completed",
            TransferStatus::Refunded => "refunded",
        }
    }
}

/// What a successful operation did. Balances are the member accounts it changed, after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationResult {
    Enrolled {
        balance: BalanceView,
    },
    Earned {
        balance: BalanceView,
    },
    Redeemed {
        balance: BalanceView,
    },
    /// `reversed_points` is what this reversal took back; `earn_remaining_points` what is
    /// left of the earn for later reversals.
    EarnReversed {
        balance: BalanceView,
        reversed_points: u64,
        earn_remaining_points: u64,
    },
    HoldAuthorized {
        balance: BalanceView,
        hold: HoldView,
    },
    HoldCaptured {
        balance: BalanceView,
        hold: HoldView,
    },
    HoldVoided {
        balance: BalanceView,
        hold: HoldView,
    },
    Transferred {
        from: BalanceView,
        to: BalanceView,
    },
    TransferredOut {
        from: BalanceView,
        transfer_id: TransferId,
    },
    TransferredIn {
        to: BalanceView,
        transfer_id: TransferId,
    },
    TransferCompleted {
        transfer_id: TransferId,
        status: TransferStatus,
    },
    TransferRefunded {
        from: BalanceView,
        transfer_id: TransferId,
    },
    Exchanged {
        from: BalanceView,
        to: BalanceView,
        debited_points: u64,
        fee_points: u64,
        credited_points: u64,
    },
    /// The key is reserved for the claimed request (which its member's shard applies).
    KeyClaimed,
}

/// The answer to one command. A business failure is a value here, never a storage error,
/// because openraft treats a storage error as fatal to the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub result: Result<OperationResult, LedgerError>,
    /// True when this is the stored answer of an earlier command with the same key.
    pub replay: bool,
    /// Log index of the entry that first applied the command (the original, for a replay).
    pub log_index: u64,
    /// Log time at which the command was first applied.
    pub log_time_ms: u64,
}
