//! The gateway's [`Backend`] over a node in the same process (dev mode): direct calls, no
//! RPC hop between the gateway and the shards.

use std::sync::Arc;

use tally_gateway::{AdminAction, Backend, BackendError, BalanceRead, Consistency, StatementPage};
use tally_ledger::meta::{MetaCommand, MetaError, MetaResult, MetaState};
use tally_ledger::{Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId};
use tally_node::api::{NodeRequest, NodeResponse};
use tally_node::{Node, StatusDetail};
use tally_proto::v1::ClusterStatusReply;
use tally_raft::group::group_name;
use tally_raft::{shard_group_id, ProposeError};

use crate::cluster_status::{status_reply, NodeReport};

pub struct LocalBackend {
    node: Arc<Node>,
}

impl LocalBackend {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn backend_error(error: ProposeError) -> BackendError {
    match error {
        ProposeError::NotLeader { group_id, leader_id, .. } => BackendError::Unavailable(format!(
            "{} has no leader on this node (leader: {})",
            group_name(group_id),
            leader_id.map(|id| format!("node {id}")).unwrap_or_else(|| "being elected".into())
        )),
        ProposeError::Overloaded { .. } | ProposeError::RetentionFull { .. } => {
            BackendError::Overloaded(error.to_string())
        }
        ProposeError::Unavailable { .. } => BackendError::Unavailable(error.to_string()),
        ProposeError::Refused { .. } => BackendError::Refused(error.to_string()),
    }
}

impl Backend for LocalBackend {
    fn shard_count(&self) -> u32 {
        self.node.shard_count()
    }

    async fn submit(&self, shard: u32, commands: Vec<Command>) -> Result<Vec<CommandOutcome>, BackendError> {
        self.node.submit(shard, commands).await.map_err(backend_error)
    }

    async fn balance(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        consistency: Consistency,
    ) -> Result<BalanceRead, BackendError> {
        let linearizable = consistency == Consistency::Linearizable;
        let read =
            self.node.balance(shard, &member_id, &currency, linearizable).await.map_err(backend_error)?;
        Ok(BalanceRead {
            balance: read.balance,
            applied_log_index: read.applied_log_index,
            staleness_bound_ms: read.staleness_bound_ms,
            linearizable: read.linearizable,
        })
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
        let (lines, total_lines) = self
            .node
            .statement(shard, &member_id, &currency, start_sequence, newest_first, limit)
            .await
            .map_err(backend_error)?;
        Ok(StatementPage { lines, total_lines })
    }

    async fn operation(
        &self,
        shard: u32,
        partner_id: PartnerId,
        key: IdempotencyKey,
    ) -> Result<Option<(Operation, CommandOutcome)>, BackendError> {
        self.node.operation(shard, &partner_id, &key).await.map_err(backend_error)
    }

    fn meta(&self) -> Arc<MetaState> {
        self.node.meta_state()
    }

    async fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> Result<Result<MetaResult, MetaError>, BackendError> {
        self.node.propose_meta(command).await.map_err(backend_error)
    }

    async fn cluster_status(&self, include_state_digests: bool) -> Result<ClusterStatusReply, BackendError> {
        let detail = if include_state_digests { StatusDetail::Digests } else { StatusDetail::Totals };
        let status = match tally_node::api::handle(&self.node, NodeRequest::Status { detail }).await {
            Ok(NodeResponse::Status(status)) => status,
            other => return Err(BackendError::Unavailable(format!("node status: {other:?}"))),
        };
        let meta = self.node.meta_state();
        let (meta_leader, ..) = self.node.meta_view();
        let report =
            NodeReport { node_id: status.node_id, address: status.address.clone(), status: Ok(status) };
        Ok(status_reply(self.node.shard_count(), meta.layout.as_ref(), meta_leader, vec![report]))
    }

    async fn admin(&self, action: AdminAction) -> Result<Vec<String>, BackendError> {
        match action {
            AdminAction::TriggerSnapshot { shard } => {
                let groups = match shard {
                    Some(shard) if shard < self.node.shard_count() => vec![shard_group_id(shard)],
                    Some(shard) => return Err(BackendError::Refused(format!("no shard {shard}"))),
                    None => self.node.hosted_groups(),
                };
                let mut steps = Vec::new();
                for group_id in groups {
                    self.node.trigger_snapshot(group_id).await.map_err(backend_error)?;
                    steps.push(format!(
                        "{}: snapshot requested on node {}",
                        group_name(group_id),
                        self.node.config().node_id
                    ));
                }
                Ok(steps)
            }
            other => Err(BackendError::Refused(format!(
                "{other:?} needs a multi-node cluster; the dev cluster has one node (see docs/operations.md)"
            ))),
        }
    }
}
