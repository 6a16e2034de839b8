//! Tally's partner-facing gRPC gateway: authenticates the caller, validates the request, routes
//! each operation to its shard, drives cross-shard transfers, and maps every error to one gRPC
//! status. It is stateless: several gateways can run behind a load balancer, and everything it
//! needs from the cluster goes through the [`Backend`] trait.
//!
//! # Layout
//! - [`backend`]: the [`Backend`] trait the node implements (the gateway's only view of the
//!   cluster).
//! - [`auth`]: `authorization: Bearer <api key>` to a partner, by SHA-256 of the key.
//! - [`validate`]: request shapes and admission rules to domain operations (nothing is proposed
//!   before a request passes here), including the exchange permission and agreement checks.
//! - [`convert`]: domain values to protobuf messages and back.
//! - [`status`]: [`ApiError`], and the one mapping from every error to a `tonic::Status` (and
//!   to the per-operation errors of a batch).
//! - [`submit`]: deadlines (`grpc-timeout`, [`GatewayConfig::request_deadline_ms`]), retries
//!   with the same commands, and submission of commands grouped per shard.
//! - [`transfer`]: the three steps of a transfer between members on different shards.
//! - [`ledger_service`]: the `tally.v1.Ledger` service.
//! - [`admin_service`]: the `tally.v1.Admin` service.
//! - [`rate_limit`]: per-partner token buckets (RESOURCE_EXHAUSTED when exceeded).
//! - [`metrics`]: metric names, [`describe_metrics`] and request instrumentation.

pub mod admin_service;
pub mod auth;
pub mod backend;
pub mod coalesce;
pub mod convert;
pub mod ledger_service;
pub mod metrics;
pub mod rate_limit;
pub mod status;
pub mod submit;
pub mod transfer;
pub mod validate;

use std::sync::Arc;

use tally_ledger::limits;
use tally_proto::v1::admin_server::AdminServer;
use tally_proto::v1::ledger_server::LedgerServer;

pub use admin_service::AdminService;
pub use backend::{AdminAction, Backend, BackendError, BalanceRead, Consistency, StatementPage};
pub use ledger_service::LedgerService;
pub use metrics::describe_metrics;
pub use status::ApiError;

/// Largest request the Ledger service decodes. The largest SubmitBatch (10,000 operations of
/// the largest kind, a ReverseEarn with three 128-byte strings) encodes to about 4.1 MB; 8 MiB
/// leaves room for protobuf framing and nothing more. Replies are not limited by the server;
/// clients that send big batches must raise their own decoding limit (tonic's default is 4 MB).
pub const MAX_DECODING_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Default time the gateway spends on one request, retries included.
pub const REQUEST_DEADLINE_MS_DEFAULT: u64 = 5_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// How long the cluster keeps idempotency records (log time). The node stamps it into every
    /// batch; the gateway uses it to tell callers how long a key can be replayed or looked up.
    pub idempotency_retention_ms: u64,
    /// Upper bound on the time spent on one request, including retries after `Unavailable` or
    /// `Overloaded`. A smaller `grpc-timeout` from the caller wins.
    pub request_deadline_ms: u64,
    /// Write operations each partner may send per second through this gateway (a SubmitBatch
    /// counts each of its operations); bursts of up to one second are allowed. 0: no limit.
    pub partner_operations_per_second_max: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            idempotency_retention_ms: limits::IDEMPOTENCY_RETENTION_MS_DEFAULT,
            request_deadline_ms: REQUEST_DEADLINE_MS_DEFAULT,
            partner_operations_per_second_max: 0,
        }
    }
}

/// State shared by the two services.
pub(crate) struct Shared<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) config: GatewayConfig,
    pub(crate) rate_limiter: rate_limit::PartnerRateLimiter,
    pub(crate) api_keys: auth::ApiKeyCache,
}

/// The gateway: build it once, then add [`Gateway::ledger_service`] and
/// [`Gateway::admin_service`] to a `tonic::transport::Server`.
pub struct Gateway<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> Clone for Gateway<B> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<B: Backend> Gateway<B> {
    pub fn new(backend: Arc<B>, config: GatewayConfig) -> Self {
        let rate_limiter = rate_limit::PartnerRateLimiter::new(config.partner_operations_per_second_max);
        Self {
            shared: Arc::new(Shared {
                backend,
                config,
                rate_limiter,
                api_keys: auth::ApiKeyCache::default(),
            }),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// The partner API (`tally.v1.Ledger`), ready for `Server::add_service`.
    pub fn ledger_service(&self) -> LedgerServer<LedgerService<B>> {
        LedgerServer::new(LedgerService::new(Arc::clone(&self.shared)))
            .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES)
    }

    /// The operator API (`tally.v1.Admin`), ready for `Server::add_service`. It does not
    /// authenticate: serve it only where operators, not partners, can reach it.
    pub fn admin_service(&self) -> AdminServer<AdminService<B>> {
        AdminServer::new(AdminService::new(Arc::clone(&self.shared)))
    }
}
