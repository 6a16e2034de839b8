//! Metrics of the gateway (recorded through the `metrics` facade; the node installs the
//! Prometheus exporter).
//!
//! - `tally_gateway_requests_total{rpc, code}`: calls answered, by gRPC code (`ok`,
//!   `invalid_argument`, ...).
//! - `tally_gateway_request_duration_seconds{rpc}`: time to answer a call.
//! - `tally_operations_total{operation, result}`: write operations (a batch counts each of its
//!   operations), by result: `ok`, `replay`, or the lower-case gRPC code of the error.

use std::future::Future;
use std::time::Instant;

use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};
use tonic::{Code, Response, Status};

use crate::status::{code_name, ApiError};

pub const REQUESTS_TOTAL: &str = "tally_gateway_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "tally_gateway_request_duration_seconds";
pub const OPERATIONS_TOTAL: &str = "tally_operations_total";

/// Registers the descriptions of the gateway's metrics; call once after installing a recorder.
pub fn describe_metrics() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "gRPC calls answered by the gateway, by rpc and status code"
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time the gateway took to answer a gRPC call, retries included, by rpc"
    );
    describe_counter!(
        OPERATIONS_TOTAL,
        Unit::Count,
        "Write operations by operation and result (ok, replay, or the error's status code)"
    );
    crate::coalesce::describe_metrics();
}

/// Counts one write operation's result.
pub fn record_operation(operation: &'static str, result: Result<bool, &ApiError>) {
    let result = match result {
        Ok(false) => "ok",
        Ok(true) => "replay",
        Err(error) => code_name(error.code()),
    };
    counter!(OPERATIONS_TOTAL, "operation" => operation, "result" => result).increment(1);
}

/// Runs one call's handler, counts and times it, and turns its error into a status.
pub async fn observe<T>(
    rpc: &'static str,
    handler: impl Future<Output = Result<T, ApiError>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = handler.await;
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(error) => error.code(),
    };
    histogram!(REQUEST_DURATION_SECONDS, "rpc" => rpc).record(started.elapsed().as_secs_f64());
    counter!(REQUESTS_TOTAL, "rpc" => rpc, "code" => code_name(code)).increment(1);
    match result {
        Ok(reply) => Ok(Response::new(reply)),
        Err(error) => {
            tracing::debug!(rpc, code = code_name(code), %error, "request failed");
            Err(Status::from(error))
        }
    }
}
