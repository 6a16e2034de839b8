//! What the gateway needs from the cluster. The gateway never links openraft or sled: in dev
//! mode a node implements this trait with direct calls; in a multi-node deployment it is
//! implemented over the nodes' internal gRPC.

use std::future::Future;
use std::sync::Arc;

use tally_ledger::meta::{MetaCommand, MetaError, MetaResult, MetaState};
use tally_ledger::state::StatementLine;
use tally_ledger::{
    BalanceView, Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId,
};
use tally_proto::v1::ClusterStatusReply;

/// Why the cluster could not answer. Both are retryable with the same idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No leader reachable, no quorum, node shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The proposal queue of the shard is full.
    #[error("{0}")]
    Overloaded(String),
    /// The caller's deadline passed before the cluster answered; the outcome is unknown.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// An operator's request the cluster's current state does not allow (not retryable as is).
    #[error("{0}")]
    Refused(String),
}

/// Operator actions on the cluster's shape, done by the backend step by step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAction {
    AddNode {
        address: String,
    },
    RemoveNode {
        node_id: u64,
    },
    MoveReplica {
        shard: u32,
        from_node_id: u64,
        to_node_id: u64,
    },
    MoveLeader {
        shard: u32,
        to_node_id: u64,
    },
    /// `None`: every group.
    TriggerSnapshot {
        shard: Option<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceRead {
    /// `None` when the member has no account in that currency.
    pub balance: Option<BalanceView>,
    pub applied_log_index: u64,
    /// 0 for linearizable reads; otherwise how far behind the leader the replica may be.
    pub staleness_bound_ms: u64,
    pub linearizable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementPage {
    pub lines: Vec<StatementLine>,
    /// Total lines of the account.
    pub total_lines: u64,
}

pub trait Backend: Send + Sync + 'static {
    /// Number of shards (fixed at cluster creation). Shards are numbered 0..shard_count.
    fn shard_count(&self) -> u32;

    /// Proposes the commands to one shard; exactly one outcome per command, in order.
    fn submit(
        &self,
        shard: u32,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<CommandOutcome>, BackendError>> + Send;

    fn balance(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        consistency: Consistency,
    ) -> impl Future<Output = Result<BalanceRead, BackendError>> + Send;

    /// Lines of one member account. `start_sequence` is inclusive; `None` starts at the newest
    /// line (`newest_first`) or the oldest.
    fn statement(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        start_sequence: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> impl Future<Output = Result<StatementPage, BackendError>> + Send;

    /// The stored request and first answer of `(partner, key)` on a shard (linearizable).
    fn operation(
        &self,
        shard: u32,
        partner_id: PartnerId,
        key: IdempotencyKey,
    ) -> impl Future<Output = Result<Option<(Operation, CommandOutcome)>, BackendError>> + Send;

    /// The latest applied meta state (partners, key hashes, agreements); cheap, may be
    /// slightly behind the meta leader.
    fn meta(&self) -> Arc<MetaState>;

    /// Reads the meta state again now if the backend caches it; true when a read happened
    /// (callers retry what the cached state refused). Backends bound how often this reads.
    fn refresh_meta(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// Proposes a change to the meta group and waits until it is applied.
    fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> impl Future<Output = Result<Result<MetaResult, MetaError>, BackendError>> + Send;

    /// Every node's and replica's status with per-currency totals; with each replica's state
    /// digest when `include_state_digests` (see `ClusterStatusRequest`).
    fn cluster_status(
        &self,
        include_state_digests: bool,
    ) -> impl Future<Output = Result<ClusterStatusReply, BackendError>> + Send;

    /// Runs an operator action and returns the steps it took. Backends without several nodes
    /// refuse the actions that need them.
    fn admin(&self, action: AdminAction) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send {
        async move { Err(BackendError::Refused(format!("{action:?} needs a multi-node cluster"))) }
    }
}
