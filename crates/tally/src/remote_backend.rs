//! The gateway's [`Backend`] over a multi-node cluster: every call goes to the node leading the
//! shard (through [`ClusterClient`]), and operator actions run as the steps in
//! [`crate::cluster_admin`].

use std::sync::Arc;
use std::time::Duration;

use tally_gateway::coalesce::ShardCoalescer;
use tally_gateway::{AdminAction, Backend, BackendError, BalanceRead, Consistency, StatementPage};
use tally_ledger::meta::{MetaCommand, MetaError, MetaResult, MetaState};
use tally_ledger::{Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId};
use tally_node::api::{NodeApiError, NodeRequest, NodeResponse};
use tally_node::StatusDetail;
use tally_proto::v1::ClusterStatusReply;
use tally_raft::{shard_group_id, GroupId, META_GROUP_ID};

use crate::cluster_admin;
use crate::cluster_client::ClusterClient;
use crate::cluster_status::status_reply;

/// An unknown API key makes the gateway re-read the meta state (a partner created through
/// another gateway a moment ago), at most this often.
pub const META_REFRESH_ON_DEMAND_MIN_INTERVAL_MS: u64 = 50;

pub struct RemoteBackend {
    cluster: Arc<ClusterClient>,
    shard_count: u32,
    /// Concurrent submissions to one shard travel in one node call.
    coalescer: ShardCoalescer,
}

impl RemoteBackend {
    /// `shard_count` comes from the layout, read before the gateway starts serving.
    /// `calls_in_flight_per_shard` is at least 1 (settings check it).
    pub fn new(cluster: Arc<ClusterClient>, shard_count: u32, calls_in_flight_per_shard: usize) -> Self {
        let coalescer = ShardCoalescer::new(shard_count, calls_in_flight_per_shard);
        Self { cluster, shard_count, coalescer }
    }

    async fn call_shard(&self, shard: u32, request: NodeRequest) -> Result<NodeResponse, BackendError> {
        self.call_group(shard_group_id(shard), request, true).await
    }

    async fn call_group(
        &self,
        group_id: GroupId,
        request: NodeRequest,
        retry_unreachable: bool,
    ) -> Result<NodeResponse, BackendError> {
        self.cluster.call_group(group_id, &request, retry_unreachable).await.map_err(backend_error)
    }
}

pub fn backend_error(error: NodeApiError) -> BackendError {
    match error {
        NodeApiError::Overloaded(detail) => BackendError::Overloaded(detail),
        NodeApiError::Refused(detail) => BackendError::Refused(detail),
        NodeApiError::NotLeader { .. } | NodeApiError::Unavailable(_) | NodeApiError::Transport(_) => {
            BackendError::Unavailable(error.to_string())
        }
    }
}

fn unexpected(response: NodeResponse) -> BackendError {
    BackendError::Unavailable(format!("unexpected answer from the node: {response:?}"))
}

impl Backend for RemoteBackend {
    fn shard_count(&self) -> u32 {
        self.shard_count
    }

    async fn submit(&self, shard: u32, commands: Vec<Command>) -> Result<Vec<CommandOutcome>, BackendError> {
        let send = |commands: Vec<Command>| async move {
            let request = NodeRequest::Submit { shard, commands };
            let answer = match self.cluster.call_group(shard_group_id(shard), &request, true).await {
                Ok(NodeResponse::Outcomes(outcomes)) => Ok(outcomes),
                Ok(other) => Err(unexpected(other)),
                Err(error) => Err(backend_error(error)),
            };
            let NodeRequest::Submit { commands, .. } = request else { unreachable!("built above") };
            (answer, commands)
        };
        self.coalescer.submit(shard, commands, send).await
    }

    async fn balance(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        consistency: Consistency,
    ) -> Result<BalanceRead, BackendError> {
        let linearizable = consistency == Consistency::Linearizable;
        match self
            .call_shard(shard, NodeRequest::Balance { shard, member_id, currency, linearizable })
            .await?
        {
            NodeResponse::Balance(read) => Ok(BalanceRead {
                balance: read.balance,
                applied_log_index: read.applied_log_index,
                staleness_bound_ms: read.staleness_bound_ms,
                linearizable: read.linearizable,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn statement(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        start_sequence: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> Result<StatementPage, BackendError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let request =
            NodeRequest::Statement { shard, member_id, currency, start_sequence, newest_first, limit };
        match self.call_shard(shard, request).await? {
            NodeResponse::Statement { lines, total_lines } => Ok(StatementPage { lines, total_lines }),
            other => Err(unexpected(other)),
        }
    }

    async fn operation(
        &self,
        shard: u32,
        partner_id: PartnerId,
        idempotency_key: IdempotencyKey,
    ) -> Result<Option<(Operation, CommandOutcome)>, BackendError> {
        match self.call_shard(shard, NodeRequest::Operation { shard, partner_id, idempotency_key }).await? {
            NodeResponse::Operation(found) => Ok(found),
            other => Err(unexpected(other)),
        }
    }

    fn meta(&self) -> Arc<MetaState> {
        self.cluster.meta()
    }

    async fn refresh_meta(&self) -> bool {
        self.cluster
            .refresh_at_most_every(Duration::from_millis(META_REFRESH_ON_DEMAND_MIN_INTERVAL_MS))
            .await
    }

    async fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> Result<Result<MetaResult, MetaError>, BackendError> {
        // Meta commands carry no idempotency key: a call whose answer was lost is not resent.
        match self.call_group(META_GROUP_ID, NodeRequest::ProposeMeta { command }, false).await? {
            NodeResponse::MetaResult(result) => {
                // Later reads through this gateway see the change.
                self.cluster.refresh().await;
                Ok(result)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn cluster_status(&self, include_state_digests: bool) -> Result<ClusterStatusReply, BackendError> {
        self.cluster.refresh().await;
        let view = self
            .cluster
            .meta_view()
            .ok_or_else(|| BackendError::Unavailable("no node answered a meta read".to_string()))?;
        let detail = if include_state_digests { StatusDetail::Digests } else { StatusDetail::Totals };
        let reports = cluster_admin::node_reports(&self.cluster, detail).await;
        Ok(status_reply(self.shard_count, view.meta.layout.as_ref(), view.leader_node_id, reports))
    }

    async fn admin(&self, action: AdminAction) -> Result<Vec<String>, BackendError> {
        cluster_admin::run(&self.cluster, action).await
    }
}
