//! Every partner write from the shell: one subcommand per Ledger RPC, each taking the
//! partner's API key (`--api-key` or `TALLY_API_KEY`) and an optional idempotency key (`--key`;
//! a fresh one is made when omitted, so pass it to retry the same request).

use anyhow::Context;
use clap::Subcommand;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    AuthorizeHoldRequest, CaptureHoldRequest, EarnRequest, EnrolRequest, ExchangeRequest,
    GetOperationRequest, RedeemRequest, ReverseEarnRequest, TransferRequest, VoidHoldRequest,
};

use crate::cli::{authorized, channel, fresh_key, print_reply, status_error, Connection, PartnerAuth};

/// A write with its own arguments; the partner and key come from [`PartnerAuth`].
#[derive(Subcommand, Debug)]
pub enum Write {
    /// Open the member's account in the partner's currency.
    Enrol {
        #[arg(long)]
        member: String,
    },
    /// Issue points to a member.
    Earn {
        #[arg(long)]
        member: String,
        #[arg(long)]
        points: u64,
    },
    /// Spend a member's available points.
    Redeem {
        #[arg(long)]
        member: String,
        #[arg(long)]
        points: u64,
    },
    /// Undo an earn, named by its idempotency key (all of it unless --points is given).
    Reverse {
        #[arg(long)]
        earn_key: String,
        #[arg(long)]
        member: String,
        #[arg(long, default_value_t = 0)]
        points: u64,
    },
    /// Reserve points until an expiry; the hold is named by this call's idempotency key.
    Hold {
        #[arg(long)]
        member: String,
        #[arg(long)]
        points: u64,
        /// How long the hold lasts (at least 1000 ms).
        #[arg(long, default_value_t = 600_000)]
        expires_in_ms: u64,
    },
    /// Capture a hold (all of it unless --points is given); the rest is released.
    Capture {
        #[arg(long)]
        hold_key: String,
        #[arg(long)]
        member: String,
        #[arg(long, default_value_t = 0)]
        points: u64,
    },
    /// Release a hold.
    Void {
        #[arg(long)]
        hold_key: String,
        #[arg(long)]
        member: String,
    },
    /// Move points between two members in the partner's currency.
    Transfer {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        points: u64,
    },
    /// Convert a member's points into another currency under an agreement.
    Exchange {
        #[arg(long)]
        member: String,
        #[arg(long)]
        from_currency: String,
        #[arg(long)]
        to_currency: String,
        #[arg(long)]
        points: u64,
    },
}

impl Write {
    fn name(&self) -> &'static str {
        match self {
            Write::Enrol { .. } => "enrol",
            Write::Earn { .. } => "earn",
            Write::Redeem { .. } => "redeem",
            Write::Reverse { .. } => "reverse",
            Write::Hold { .. } => "hold",
            Write::Capture { .. } => "capture",
            Write::Void { .. } => "void",
            Write::Transfer { .. } => "transfer",
            Write::Exchange { .. } => "exchange",
        }
    }
}

/// Sends one write and prints its result (or the refusal, as an error).
pub async fn send(connection: &Connection, auth: &PartnerAuth, write: Write) -> anyhow::Result<()> {
    let api_key = auth.api_key()?;
    let mut ledger = LedgerClient::new(channel(connection).await?);
    let idempotency_key = auth.key.clone().unwrap_or_else(|| fresh_key(write.name()));
    let key = idempotency_key.clone();
    let reply = match write {
        Write::Enrol { member } => {
            ledger.enrol(authorized(EnrolRequest { idempotency_key: key, member_id: member }, api_key)?).await
        }
        Write::Earn { member, points } => {
            let request = EarnRequest { idempotency_key: key, member_id: member, amount_points: points };
            ledger.earn(authorized(request, api_key)?).await
        }
        Write::Redeem { member, points } => {
            let request = RedeemRequest { idempotency_key: key, member_id: member, amount_points: points };
            ledger.redeem(authorized(request, api_key)?).await
        }
        Write::Reverse { earn_key, member, points } => {
            let request = ReverseEarnRequest {
                idempotency_key: key,
                earn_idempotency_key: earn_key,
                amount_points: points,
                member_id: member,
            };
            ledger.reverse_earn(authorized(request, api_key)?).await
        }
        Write::Hold { member, points, expires_in_ms } => {
            let request = AuthorizeHoldRequest {
                idempotency_key: key,
                member_id: member,
                amount_points: points,
                expires_in_ms,
            };
            ledger.authorize_hold(authorized(request, api_key)?).await
        }
        Write::Capture { hold_key, member, points } => {
            let request = CaptureHoldRequest {
                idempotency_key: key,
                hold_idempotency_key: hold_key,
                member_id: member,
                amount_points: points,
            };
            ledger.capture_hold(authorized(request, api_key)?).await
        }
        Write::Void { hold_key, member } => {
            let request =
                VoidHoldRequest { idempotency_key: key, hold_idempotency_key: hold_key, member_id: member };
            ledger.void_hold(authorized(request, api_key)?).await
        }
        Write::Transfer { from, to, points } => {
            let request = TransferRequest {
                idempotency_key: key,
                from_member_id: from,
                to_member_id: to,
                amount_points: points,
            };
            ledger.transfer(authorized(request, api_key)?).await
        }
        Write::Exchange { member, from_currency, to_currency, points } => {
            let request = ExchangeRequest {
                idempotency_key: key,
                member_id: member,
                from_currency,
                to_currency,
                amount_points: points,
            };
            ledger.exchange(authorized(request, api_key)?).await
        }
    };
    let reply = reply.map_err(status_error).with_context(|| format!("idempotency key {idempotency_key}"))?;
    println!("idempotency key {idempotency_key}");
    print_reply(&reply.into_inner());
    Ok(())
}

/// Shows the stored result of one of the partner's idempotency keys.
pub async fn operation(connection: &Connection, auth: &PartnerAuth, member: String) -> anyhow::Result<()> {
    let api_key = auth.api_key()?;
    let key =
        auth.key.clone().ok_or_else(|| anyhow::anyhow!("pass the idempotency key to look up with --key"))?;
    let mut ledger = LedgerClient::new(channel(connection).await?);
    let request = GetOperationRequest { idempotency_key: key, member_id: member };
    let reply = ledger.get_operation(authorized(request, api_key)?).await.map_err(status_error)?.into_inner();
    match (reply.result, reply.error) {
        (Some(result), _) => print_reply(&result),
        (None, Some(error)) => {
            println!("{} failed: {} (code {})", reply.operation, error.message, error.code)
        }
        (None, None) => println!("{}: no stored result", reply.operation),
    }
    Ok(())
}
