//! The gateway's [`Backend`] over a node in the same process (dev mode): direct calls, no
//! RPC hop between the gateway and the shards.

use std::sync::Arc;

use tally_gateway::{Backend, BackendError, BalanceRead, Consistency, StatementPage};
use tally_ledger::meta::{MetaCommand, MetaError, MetaResult, MetaState};
use tally_ledger::{Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId};
use tally_node::Node;
use tally_proto::v1::{ClusterStatusReply, CurrencyTotal, GroupStatus};
use tally_raft::group::group_name;
use tally_raft::ProposeError;

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
        ProposeError::Overloaded { .. } => BackendError::Overloaded(error.to_string()),
        ProposeError::Unavailable { .. } => BackendError::Unavailable(error.to_string()),
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

    async fn cluster_status(&self) -> Result<ClusterStatusReply, BackendError> {
        let groups = self
            .node
            .status()
            .await
            .into_iter()
            .map(|view| GroupStatus {
                group: group_name(view.group_id),
                group_id: view.group_id,
                node_id: view.node_id,
                role: view.role.to_string(),
                leader_node_id: view.leader_node_id.unwrap_or(0),
                term: view.term,
                last_log_index: view.last_log_index,
                committed_index: view.committed_index,
                applied_index: view.applied_index,
                state_digest: hex::encode(view.state_digest),
                voters: view.voters,
            })
            .collect();
        let currency_totals = self
            .node
            .currency_totals()
            .into_iter()
            .map(|(currency, totals)| CurrencyTotal {
                currency: currency.to_string(),
                debits_points: totals.debits_points.to_string(),
                credits_points: totals.credits_points.to_string(),
            })
            .collect();
        Ok(ClusterStatusReply { shard_count: self.node.shard_count(), groups, currency_totals })
    }
}
