//! Calls to the gateway and the classification of their outcomes.

use std::time::Duration;

use tally_proto::v1::batch_operation::Operation;
use tally_proto::v1::batch_result;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{BatchOperation, OperationReply, SubmitBatchRequest};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::Code;

/// The outcome of one operation. Short-lived, so the size of the `Ok` variant does not matter.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    Ok(OperationReply),
    /// A definite answer that changed nothing (FAILED_PRECONDITION, NOT_FOUND, ...).
    Failed {
        code: Code,
        message: String,
    },
    /// The operation may or may not have been applied: retry with the same key or look it up.
    Unknown {
        code: Code,
        message: String,
    },
}

/// Codes after which the outcome is not known (or nothing was done, but a retry with the same
/// key is the way to find out).
pub(crate) fn is_unknown(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
    )
}

pub(crate) fn from_status(status: tonic::Status) -> Outcome {
    let code = status.code();
    let message = status.message().to_owned();
    if is_unknown(code) {
        Outcome::Unknown { code, message }
    } else {
        Outcome::Failed { code, message }
    }
}

pub(crate) fn authorized<T>(message: T, auth: &AsciiMetadataValue, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request.set_timeout(timeout);
    request
}

/// Client-side bound: the server's deadline plus a margin, or exactly `timeout` when it is short
/// (the point of a short timeout is to give up on the client side).
fn client_bound(timeout: Duration) -> Duration {
    if timeout < Duration::from_millis(100) {
        timeout
    } else {
        timeout + Duration::from_secs(1)
    }
}

fn client_timeout() -> Outcome {
    Outcome::Unknown { code: Code::DeadlineExceeded, message: "client-side timeout".into() }
}

/// One write as its own RPC.
pub(crate) async fn call_single(
    client: &mut LedgerClient<Channel>,
    auth: &AsciiMetadataValue,
    op: Operation,
    timeout: Duration,
) -> Outcome {
    let call = async {
        match op {
            Operation::Enrol(r) => client.enrol(authorized(r, auth, timeout)).await,
            Operation::Earn(r) => client.earn(authorized(r, auth, timeout)).await,
            Operation::Redeem(r) => client.redeem(authorized(r, auth, timeout)).await,
            Operation::ReverseEarn(r) => client.reverse_earn(authorized(r, auth, timeout)).await,
            Operation::AuthorizeHold(r) => client.authorize_hold(authorized(r, auth, timeout)).await,
            Operation::CaptureHold(r) => client.capture_hold(authorized(r, auth, timeout)).await,
            Operation::VoidHold(r) => client.void_hold(authorized(r, auth, timeout)).await,
            Operation::Transfer(r) => client.transfer(authorized(r, auth, timeout)).await,
            Operation::Exchange(r) => client.exchange(authorized(r, auth, timeout)).await,
        }
    };
    match tokio::time::timeout(client_bound(timeout), call).await {
        Err(_) => client_timeout(),
        Ok(Ok(reply)) => Outcome::Ok(reply.into_inner()),
        Ok(Err(status)) => from_status(status),
    }
}

/// A SubmitBatch: one outcome per operation, or the whole call's failure.
pub(crate) async fn call_batch(
    client: &mut LedgerClient<Channel>,
    auth: &AsciiMetadataValue,
    operations: Vec<BatchOperation>,
    timeout: Duration,
) -> Result<Vec<Outcome>, Outcome> {
    let n = operations.len();
    let call = client.submit_batch(authorized(SubmitBatchRequest { operations }, auth, timeout));
    let reply = match tokio::time::timeout(client_bound(timeout), call).await {
        Err(_) => return Err(client_timeout()),
        Ok(Err(status)) => return Err(from_status(status)),
        Ok(Ok(reply)) => reply.into_inner(),
    };
    if reply.results.len() != n {
        return Err(Outcome::Failed {
            code: Code::Internal,
            message: format!("batch of {n} operations answered {} results", reply.results.len()),
        });
    }
    Ok(reply
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(batch_result::Result::Ok(reply)) => Outcome::Ok(reply),
            Some(batch_result::Result::Error(e)) => {
                let code = Code::from(e.code);
                if is_unknown(code) {
                    Outcome::Unknown { code, message: e.message }
                } else {
                    Outcome::Failed { code, message: e.message }
                }
            }
            None => Outcome::Failed { code: Code::Internal, message: "empty batch result".into() },
        })
        .collect())
}
