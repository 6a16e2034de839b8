//! Operations the generator sends, their requests and their expected effect on balances.

use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;
use tally_proto::v1::batch_operation::Operation;
use tally_proto::v1::{
    AgreementTerms, AuthorizeHoldRequest, BatchOperation, CaptureHoldRequest, EarnRequest, EnrolRequest,
    ExchangeRequest, OperationReply, RedeemRequest, TransferRequest, VoidHoldRequest,
};

/// Operation types, for counters and histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Enrol,
    Earn,
    Redeem,
    AuthorizeHold,
    CaptureHold,
    VoidHold,
    Transfer,
    Exchange,
    /// A whole SubmitBatch call (latency only).
    SubmitBatch,
}

pub(crate) const KINDS: usize = 9;

impl Kind {
    pub(crate) const ALL: [Kind; KINDS] = [
        Kind::Enrol,
        Kind::Earn,
        Kind::Redeem,
        Kind::AuthorizeHold,
        Kind::CaptureHold,
        Kind::VoidHold,
        Kind::Transfer,
        Kind::Exchange,
        Kind::SubmitBatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Enrol => "enrol",
            Kind::Earn => "earn",
            Kind::Redeem => "redeem",
            Kind::AuthorizeHold => "authorize_hold",
            Kind::CaptureHold => "capture_hold",
            Kind::VoidHold => "void_hold",
            Kind::Transfer => "transfer",
            Kind::Exchange => "exchange",
            Kind::SubmitBatch => "submit_batch",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One write, by partner and member index. The sender is always `partner`.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Enrol {
        partner: u16,
        member: u32,
    },
    Earn {
        partner: u16,
        member: u32,
        amount: u64,
    },
    Redeem {
        partner: u16,
        member: u32,
        amount: u64,
    },
    Authorize {
        partner: u16,
        member: u32,
        amount: u64,
    },
    /// `amount` 0 captures the whole hold.
    Capture {
        partner: u16,
        member: u32,
        hold: String,
        authorized: u64,
        amount: u64,
    },
    Void {
        partner: u16,
        member: u32,
        hold: String,
        authorized: u64,
    },
    Transfer {
        partner: u16,
        from: u32,
        to: u32,
        amount: u64,
    },
    /// From the sender's currency into `to_partner`'s.
    Exchange {
        partner: u16,
        member: u32,
        to_partner: u16,
        amount: u64,
    },
}

/// Names the indexes stand for.
pub(crate) struct Names {
    pub members: Vec<String>,
    /// Partner ids, by partner index (statement lines name the sending partner).
    pub partner_ids: Vec<String>,
    pub currencies: Vec<String>,
    pub hold_expiry_ms: u64,
    pub partners: usize,
    /// Agreement terms by `from * partners + to`.
    pub terms: Vec<Option<AgreementTerms>>,
}

impl Names {
    pub(crate) fn terms(&self, from: u16, to: u16) -> Option<&AgreementTerms> {
        self.terms.get(from as usize * self.partners + to as usize).and_then(|t| t.as_ref())
    }
}

/// credited = floor((amount - fee) * num / den), as docs/api.md says; `None` if outside.
pub(crate) fn exchange_credit(terms: &AgreementTerms, amount: u64) -> Option<u64> {
    if terms.minimum_points > 0 && amount < terms.minimum_points {
        return None;
    }
    if terms.maximum_points > 0 && amount > terms.maximum_points {
        return None;
    }
    if terms.block_size_points > 1 && (amount / terms.block_size_points) * terms.block_size_points != amount {
        return None;
    }
    let net = amount.checked_sub(terms.fee_points).filter(|n| *n >= 1)?;
    let credited = u128::from(net) * u128::from(terms.rate_numerator) / u128::from(terms.rate_denominator);
    (1..=1_000_000_000_000_000u128).contains(&credited).then_some(credited as u64)
}

impl Op {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Op::Enrol { .. } => Kind::Enrol,
            Op::Earn { .. } => Kind::Earn,
            Op::Redeem { .. } => Kind::Redeem,
            Op::Authorize { .. } => Kind::AuthorizeHold,
            Op::Capture { .. } => Kind::CaptureHold,
            Op::Void { .. } => Kind::VoidHold,
            Op::Transfer { .. } => Kind::Transfer,
            Op::Exchange { .. } => Kind::Exchange,
        }
    }

    pub(crate) fn partner(&self) -> u16 {
        match self {
            Op::Enrol { partner, .. }
            | Op::Earn { partner, .. }
            | Op::Redeem { partner, .. }
            | Op::Authorize { partner, .. }
            | Op::Capture { partner, .. }
            | Op::Void { partner, .. }
            | Op::Transfer { partner, .. }
            | Op::Exchange { partner, .. } => *partner,
        }
    }

    /// The member whose shard holds the operation's key.
    pub(crate) fn routing_member(&self) -> u32 {
        match self {
            Op::Enrol { member, .. }
            | Op::Earn { member, .. }
            | Op::Redeem { member, .. }
            | Op::Authorize { member, .. }
            | Op::Capture { member, .. }
            | Op::Void { member, .. }
            | Op::Exchange { member, .. } => *member,
            Op::Transfer { from, .. } => *from,
        }
    }

    pub(crate) fn request(&self, key: &str, names: &Names) -> Operation {
        let m = |i: &u32| names.members[*i as usize].clone();
        let idempotency_key = key.to_owned();
        match self {
            Op::Enrol { member, .. } => {
                Operation::Enrol(EnrolRequest { idempotency_key, member_id: m(member) })
            }
            Op::Earn { member, amount, .. } => {
                Operation::Earn(EarnRequest { idempotency_key, member_id: m(member), amount_points: *amount })
            }
            Op::Redeem { member, amount, .. } => Operation::Redeem(RedeemRequest {
                idempotency_key,
                member_id: m(member),
                amount_points: *amount,
            }),
            Op::Authorize { member, amount, .. } => Operation::AuthorizeHold(AuthorizeHoldRequest {
                idempotency_key,
                member_id: m(member),
                amount_points: *amount,
                expires_in_ms: names.hold_expiry_ms,
            }),
            Op::Capture { member, hold, amount, .. } => Operation::CaptureHold(CaptureHoldRequest {
                idempotency_key,
                hold_idempotency_key: hold.clone(),
                member_id: m(member),
                amount_points: *amount,
            }),
            Op::Void { member, hold, .. } => Operation::VoidHold(VoidHoldRequest {
                idempotency_key,
                hold_idempotency_key: hold.clone(),
                member_id: m(member),
            }),
            Op::Transfer { from, to, amount, .. } => Operation::Transfer(TransferRequest {
                idempotency_key,
                from_member_id: m(from),
                to_member_id: m(to),
                amount_points: *amount,
            }),
            Op::Exchange { partner, member, to_partner, amount } => Operation::Exchange(ExchangeRequest {
                idempotency_key,
                member_id: m(member),
                from_currency: names.currencies[*partner as usize].clone(),
                to_currency: names.currencies[*to_partner as usize].clone(),
                amount_points: *amount,
            }),
        }
    }

    pub(crate) fn batch_request(&self, key: &str, names: &Names) -> BatchOperation {
        BatchOperation { operation: Some(self.request(key, names)) }
    }

    /// Records the effect of the acknowledged operation in the model. Returns a description of
    /// a disagreement between the reply and the request, if any (a proof failure).
    pub(crate) fn apply(&self, reply: &OperationReply, model: &Model, names: &Names) -> Result<(), String> {
        match self {
            Op::Enrol { .. } => {}
            Op::Earn { partner, member, amount } => model.add(*member, *partner, *amount as i64, 0),
            Op::Redeem { partner, member, amount } => model.add(*member, *partner, -(*amount as i64), 0),
            Op::Authorize { partner, member, amount } => model.add(*member, *partner, 0, *amount as i64),
            Op::Capture { partner, member, authorized, amount, .. } => {
                let captured = if *amount == 0 { *authorized } else { *amount };
                model.add(*member, *partner, -(captured as i64), -(*authorized as i64));
                if let Some(hold) = &reply.hold {
                    if hold.captured_points != captured {
                        return Err(format!(
                            "capture of hold {} answered captured_points {}, expected {captured}",
                            hold.hold_idempotency_key, hold.captured_points
                        ));
                    }
                }
            }
            Op::Void { partner, member, authorized, .. } => {
                model.add(*member, *partner, 0, -(*authorized as i64))
            }
            Op::Transfer { partner, from, to, amount } => {
                model.add(*from, *partner, -(*amount as i64), 0);
                model.add(*to, *partner, *amount as i64, 0);
            }
            Op::Exchange { partner, member, to_partner, amount } => {
                let credited = names.terms(*partner, *to_partner).and_then(|t| exchange_credit(t, *amount));
                let Some(credited) = credited else {
                    return Err(format!("exchange of {amount} succeeded although the agreement refuses it"));
                };
                model.add(*member, *partner, -(*amount as i64), 0);
                model.add(*member, *to_partner, credited as i64, 0);
                if reply.credited_points != credited || reply.debited_points != *amount {
                    return Err(format!(
                        "exchange of {amount} for {} answered debited {} credited {}, expected credited {credited}",
                        names.members[*member as usize], reply.debited_points, reply.credited_points
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Expected balance and held points of every (member, partner currency), as changes since the
/// start of the run (every member is new). Lock-free: workers add from the hot path.
pub(crate) struct Model {
    members: usize,
    balance: Vec<AtomicI64>,
    held: Vec<AtomicI64>,
}

impl Model {
    pub(crate) fn new(members: usize, partners: usize) -> Self {
        let n = members * partners;
        Model {
            members,
            balance: (0..n).map(|_| AtomicI64::new(0)).collect(),
            held: (0..n).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    pub(crate) fn add(&self, member: u32, partner: u16, balance: i64, held: i64) {
        let i = partner as usize * self.members + member as usize;
        if balance != 0 {
            self.balance[i].fetch_add(balance, Ordering::Relaxed);
        }
        if held != 0 {
            self.held[i].fetch_add(held, Ordering::Relaxed);
        }
    }

    /// (balance, held).
    pub(crate) fn expected(&self, member: u32, partner: u16) -> (i64, i64) {
        let i = partner as usize * self.members + member as usize;
        (self.balance[i].load(Ordering::Relaxed), self.held[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_arithmetic_matches_the_documented_example() {
        let terms = AgreementTerms {
            rate_numerator: 2,
            rate_denominator: 3,
            minimum_points: 100,
            maximum_points: 5000,
            block_size_points: 5,
            fee_points: 10,
        };
        assert_eq!(exchange_credit(&terms, 1000), Some(660));
        assert_eq!(exchange_credit(&terms, 105), Some(63));
        assert_eq!(exchange_credit(&terms, 95), None);
        assert_eq!(exchange_credit(&terms, 5005), None);
        assert_eq!(exchange_credit(&terms, 101), None);
    }
}
