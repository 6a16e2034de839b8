//! What every serving process shares: the gRPC server with Tally's answers at the edge,
//! reflection, health reporting, and the stop signal.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response, Uri};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Server reflection over every Tally proto and the health proto.
pub fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tally_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps `grpc.health.v1` in step with `healthy()` for `services` (and the server as a whole,
/// ""): SERVING or NOT_SERVING, checked every second.
pub async fn report_health<F, Fut>(reporter: HealthReporter, services: &'static [&'static str], healthy: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        set_health(&reporter, services, healthy().await).await;
    }
}

pub async fn set_health(reporter: &HealthReporter, services: &[&str], healthy: bool) {
    let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(*service, status).await;
    }
}

/// How long a stopping server waits for open calls and connections to finish.
pub const DRAIN_TIMEOUT_MS: u64 = 5_000;

/// Idle time after which the kernel probes an accepted connection.
pub const TCP_KEEPALIVE_MS: u64 = 30_000;

/// A gRPC server with keepalives (a peer that vanished, killed or partitioned, is noticed, so
/// its connection does not stay half-open for the kernel's retransmission time) and with
/// Tally's answers for what tonic refuses before any service runs (see [`EdgeService`]).
pub fn server_builder() -> GrpcServer {
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    GrpcServer { server, routes: RoutesBuilder::default(), service_names: Vec::new() }
}

/// tonic's server and router, used the same way (`add_service`, then
/// `serve_with_incoming_shutdown`), that also records the names of the services it serves so
/// that a call to an unknown one can be told what is served here.
pub struct GrpcServer {
    server: tonic::transport::Server,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
}

impl GrpcServer {
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves the connections `listener` accepts until `signal` resolves, then waits for open
    /// calls (see [`drain`]).
    pub async fn serve_with_incoming_shutdown<F: Future<Output = ()>>(
        self,
        listener: TcpListener,
        signal: F,
    ) -> Result<(), tonic::transport::Error> {
        let edge =
            EdgeService { routes: self.routes.routes().prepare(), service_names: self.service_names.into() };
        self.server.serve_with_incoming_shutdown(edge, incoming(listener), signal).await
    }
}

/// The connections a bound listener accepts, with TCP_NODELAY and keepalive set on each.
/// tonic applies its builder's TCP options only to listeners it binds itself; ours are bound
/// beforehand (to learn the port). Without TCP_NODELAY, an answer written in two pieces (headers,
/// then data and trailers) waits for the peer's delayed ACK, 40 ms on Linux, whenever a
/// connection carries few calls at once: node calls, Raft messages and partners' calls alike.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_millis(TCP_KEEPALIVE_MS)))
}

/// Wraps the router and rewrites two answers tonic gives before any Tally code runs, so that
/// they follow the design's status codes and say what to do:
/// - a request over a service's decoding limit: tonic answers OUT_OF_RANGE from the 5-byte
///   length prefix, before reading the body (so a huge message is never buffered, which is why
///   the check cannot move into the codec); the design's code for an oversized request is
///   RESOURCE_EXHAUSTED, and the answer names the limit and says to split the request;
/// - an unknown service or method: tonic answers UNIMPLEMENTED with an empty message; the
///   answer names the path and the services served here.
///
/// Both are trailers-only responses (the status is in the headers), which is the only place
/// this looks; every other response passes through untouched. It also answers a call whose
/// deadline had passed on arrival itself, so that it is not tonic's CANCELLED (see
/// [`CallerDeadline`]).
#[derive(Clone)]
pub struct EdgeService {
    routes: Routes,
    service_names: Arc<[&'static str]>,
}

impl Service<Request<Body>> for EdgeService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<Body>>::poll_ready(&mut self.routes, context)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let uri = request.uri().clone();
        let service_names = Arc::clone(&self.service_names);
        let deadline = CallerDeadline::of(request.headers());
        let answer = self.routes.call(request);
        Box::pin(async move {
            // Before the service is polled at all: see `CallerDeadline`.
            if let Some(passed) = deadline.filter(CallerDeadline::has_passed) {
                return Ok(passed.status().into_http());
            }
            let mut response = answer.await?;
            if let Some(status) = edge_status(response.headers(), &uri, &service_names) {
                set_status(response.headers_mut(), &status);
            }
            Ok(response)
        })
    }
}

/// The caller's `grpc-timeout`, as a deadline from the moment the call reached the edge.
///
/// Why the edge answers a deadline that has already passed itself: tonic's server runs its own
/// `grpc-timeout` timer around every service, and when the timer has fired by the time the
/// service is first found not done, tonic answers CANCELLED "Timeout expired" (tonic 0.14,
/// `GrpcTimeout`). For a call whose deadline had passed on arrival, that made the answer a
/// race between tonic's CANCELLED and the gateway's DEADLINE_EXCEEDED. tonic polls the service
/// before its timer, so a service that is done on its first poll always wins: the edge looks
/// at the deadline on that first poll, before any Tally code runs, and answers
/// DEADLINE_EXCEEDED, the code gRPC defines for it. A deadline that passes later, while a call
/// is being served, can still meet tonic's answer (see docs/reliability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallerDeadline {
    timeout: Duration,
    at: Instant,
}

impl CallerDeadline {
    /// `None` without a well-formed `grpc-timeout` (tonic itself ignores a malformed one).
    fn of(headers: &HeaderMap) -> Option<CallerDeadline> {
        let timeout = headers
            .get(tally_gateway::submit::GRPC_TIMEOUT)
            .and_then(|value| value.to_str().ok())
            .and_then(tally_gateway::submit::parse_grpc_timeout)?;
        Some(CallerDeadline { timeout, at: Instant::now() + timeout })
    }

    fn has_passed(&self) -> bool {
        Instant::now() >= self.at
    }

    fn status(&self) -> Status {
        Status::deadline_exceeded(format!(
            "the request's deadline (grpc-timeout of {:?}) had passed before the server could \
             start on it; nothing was done (allow more time, then retry; a write keeps its \
             idempotency key)",
            self.timeout
        ))
    }
}

/// How tonic's decoder starts its OUT_OF_RANGE message for a message over the size limit
/// (tonic 0.14, codec/decode.rs); the encoder's own message says "encoded" instead.
const TONIC_DECODED_TOO_LARGE: &str = "Error, decoded message length too large";

/// The status to answer instead of the one in `headers`, if it is one this edge rewrites.
pub fn edge_status(headers: &HeaderMap, uri: &Uri, service_names: &[&str]) -> Option<Status> {
    let status = Status::from_header_map(headers)?;
    match status.code() {
        Code::OutOfRange if status.message().starts_with(TONIC_DECODED_TOO_LARGE) => {
            Some(Status::resource_exhausted(request_too_large_message(uri.path(), status.message())))
        }
        Code::Unimplemented if status.message().is_empty() => {
            Some(Status::unimplemented(unknown_method_message(uri.path(), service_names)))
        }
        _ => None,
    }
}

fn set_status(headers: &mut HeaderMap, status: &Status) {
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if let Err(unencodable) = status.add_header(headers) {
        // The message is percent-encoded, so this cannot happen; keep a status either way.
        tracing::warn!("status header not encodable: {unencodable}");
        headers.insert("grpc-status", (status.code() as i32).into());
    }
}

/// tonic's message carries the two sizes ("found N bytes, the limit is: M bytes").
fn request_too_large_message(path: &str, tonic_message: &str) -> String {
    let sizes: Vec<u64> =
        tonic_message.split(|c: char| !c.is_ascii_digit()).filter_map(|digits| digits.parse().ok()).collect();
    const MIB_BYTES: u64 = 1024 * 1024;
    let what = match sizes[..] {
        [found_bytes, limit_bytes] => {
            let in_mib = if limit_bytes % MIB_BYTES == 0 {
                format!(" ({} MiB)", limit_bytes / MIB_BYTES)
            } else {
                String::new()
            };
            format!(
                "the request to {path} is {found_bytes} bytes; this server accepts at most \
                 {limit_bytes} bytes{in_mib} in one request"
            )
        }
        _ => format!("the request to {path} is too large ({tonic_message})"),
    };
    format!("{what}: split it into smaller requests (for SubmitBatch, fewer operations per batch)")
}

fn unknown_method_message(path: &str, service_names: &[&str]) -> String {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let served = service_names.join(", ");
    if service_names.contains(&service) {
        format!(
            "{service} has no method {method:?} (path {path}); server reflection lists its methods \
             (grpc.reflection.v1.ServerReflection)"
        )
    } else {
        format!("no service {service:?} is served here (path {path}); this address serves {served}")
    }
}

/// Waits for a server that was told to stop to drain, at most [`DRAIN_TIMEOUT_MS`]: a
/// connection to a peer that disappeared may never acknowledge the shutdown, and a stop must
/// not wait for it.
pub async fn drain(
    mut server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), &mut server).await {
        Ok(result) => Ok(result??),
        Err(_elapsed) => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT_MS} ms; closing them");
            server.abort();
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what `docker stop` and most supervisors send).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logging to stdout at `info` (openraft at `warn`), or as `RUST_LOG` says.
pub fn init_logging() {
    tracing_subscriber::fmt()
        // Colour codes only on a terminal, so that log files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: &Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    const SERVED: &[&str] = &["grpc.health.v1.Health", "tally.v1.Ledger"];

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let server_side = tokio_stream::StreamExt::next(&mut accepted).await.unwrap().unwrap();
        assert!(server_side.nodelay().unwrap(), "an accepted connection must have TCP_NODELAY set");
        let keepalive = socket2::SockRef::from(&server_side).keepalive().unwrap();
        assert!(keepalive, "an accepted connection must have TCP keepalive on");
    }

    #[test]
    fn tonic_size_refusal_becomes_resource_exhausted_with_the_limit() {
        let tonic_status = Status::out_of_range(
            "Error, decoded message length too large: found 104857613 bytes, the limit is: 8388608 bytes",
        );
        let uri = Uri::from_static("/tally.v1.Ledger/Earn");
        let status = edge_status(&headers_of(&tonic_status), &uri, SERVED).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request to /tally.v1.Ledger/Earn is 104857613 bytes; this server accepts at most 8388608 \
             bytes (8 MiB) in one request: split it into smaller requests (for SubmitBatch, fewer \
             operations per batch)"
        );
    }

    #[test]
    fn a_size_message_without_two_sizes_is_still_resource_exhausted() {
        let message =
            request_too_large_message("/tally.v1.Ledger/Earn", "Error, decoded message length too large");
        assert!(message.starts_with("the request to /tally.v1.Ledger/Earn is too large (Error, decoded"));
        assert!(
            message.ends_with("split it into smaller requests (for SubmitBatch, fewer operations per batch)")
        );
    }

    #[test]
    fn a_limit_that_is_not_whole_mebibytes_is_given_in_bytes_only() {
        let message = request_too_large_message(
            "/tally.internal.NodeApi/Call",
            "Error, decoded message length too large: found 2000 bytes, the limit is: 1000 bytes",
        );
        assert!(
            message.contains("is 2000 bytes; this server accepts at most 1000 bytes in one request"),
            "{message}"
        );
    }

    #[test]
    fn other_statuses_pass_through() {
        let uri = Uri::from_static("/tally.v1.Ledger/Earn");
        // A service's own OUT_OF_RANGE, a service's own UNIMPLEMENTED with a message, the
        // encoder's size refusal, a success (no status in the headers).
        for status in [
            Status::out_of_range("sequence 9 is past the end"),
            Status::unimplemented("not in this version"),
            Status::out_of_range(
                "Error, encoded message length too large: found 9 bytes, the limit is: 8 bytes",
            ),
        ] {
            assert!(edge_status(&headers_of(&status), &uri, SERVED).is_none(), "{status:?}");
        }
        assert!(edge_status(&HeaderMap::new(), &uri, SERVED).is_none());
    }

    #[test]
    fn unknown_paths_are_named() {
        let empty = headers_of(&Status::unimplemented(""));
        let method = edge_status(&empty, &Uri::from_static("/tally.v1.Ledger/Mint"), SERVED).unwrap();
        assert_eq!(method.code(), Code::Unimplemented);
        assert!(method
            .message()
            .starts_with("tally.v1.Ledger has no method \"Mint\" (path /tally.v1.Ledger/Mint)"));
        let service = edge_status(&empty, &Uri::from_static("/"), SERVED).unwrap();
        assert_eq!(
            service.message(),
            "no service \"/\" is served here (path /); this address serves grpc.health.v1.Health, tally.v1.Ledger"
        );
    }

    #[test]
    fn a_rewritten_status_replaces_the_old_headers() {
        let mut headers = headers_of(&Status::with_details(Code::OutOfRange, "old", vec![1, 2].into()));
        set_status(&mut headers, &Status::resource_exhausted("new: 100%"));
        let read_back = Status::from_header_map(&headers).unwrap();
        assert_eq!(read_back.code(), Code::ResourceExhausted);
        assert_eq!(read_back.message(), "new: 100%");
        assert!(read_back.details().is_empty());
    }

    #[test]
    fn the_caller_deadline_is_read_from_grpc_timeout() {
        let with_timeout = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            CallerDeadline::of(&headers)
        };
        assert_eq!(CallerDeadline::of(&HeaderMap::new()), None);
        // Malformed (no unit, nine digits): ignored, as tonic ignores it.
        assert_eq!(with_timeout("5"), None);
        assert_eq!(with_timeout("123456789S"), None);
        let past = with_timeout("1n").unwrap();
        std::thread::sleep(Duration::from_millis(1));
        assert!(past.has_passed());
        assert_eq!(past.status().code(), Code::DeadlineExceeded);
        assert!(past.status().message().contains("grpc-timeout of 1ns"), "{:?}", past.status());
        assert!(!past.status().message().contains("  "), "{:?}", past.status());
        assert!(!with_timeout("30S").unwrap().has_passed());
    }
}
