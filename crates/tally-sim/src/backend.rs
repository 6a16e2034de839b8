//! The gateway's [`Backend`] over the simulated cluster, so that the real gateway logic
//! (retries with the same key inside a deadline, the three steps of a cross-shard transfer, the
//! resolver of open transfers) runs inside the simulation.
//!
//! Each call goes to the replica that currently believes it leads the shard, over a client
//! link that can drop the request (nothing applied) or lose the reply (applied, but the caller
//! is told UNAVAILABLE and retries with the same key).

use std::sync::Arc;
use std::time::Duration;

use tally_gateway::{Backend, BackendError, BalanceRead, Consistency, StatementPage};
use tally_ledger::meta::{MetaCommand, MetaError, MetaResult, MetaState};
use tally_ledger::{Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId};
use tally_proto::v1::ClusterStatusReply;
use tally_raft::{Group, GroupData, ProposeError};

use crate::cluster::SimCluster;

/// A leader that lost its quorum never answers a read index; the gateway's deadline would end
/// the wait, this bounds it for reads made outside one.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(1);

fn backend_error(error: ProposeError) -> BackendError {
    match error {
        ProposeError::Overloaded { .. } | ProposeError::RetentionFull { .. } => {
            BackendError::Overloaded(error.to_string())
        }
        ProposeError::Refused { .. } => BackendError::Refused(error.to_string()),
        ProposeError::NotLeader { .. } | ProposeError::Unavailable { .. } => {
            BackendError::Unavailable(error.to_string())
        }
    }
}

impl SimCluster {
    fn leader_group(&self, shard: u32) -> Result<Arc<Group>, BackendError> {
        if shard >= self.shard_count {
            return Err(BackendError::Refused(format!("no shard {shard}")));
        }
        self.leader(shard)
            .map(|(_, group)| group)
            .ok_or_else(|| BackendError::Unavailable(format!("shard {shard} has no leader")))
    }

    /// The client link's fate for one request: `Err` when it is dropped on the way.
    fn client_request_dropped(&self) -> Result<(), BackendError> {
        let faults = self.net.faults();
        if self.net.per_mille() < faults.drop_per_mille {
            self.net.counters.add(&self.net.counters.drops);
            return Err(BackendError::Unavailable("request dropped on the client link".into()));
        }
        Ok(())
    }

    fn client_reply_lost(&self) -> bool {
        let lost = self.net.per_mille() < self.net.faults().lost_reply_per_mille;
        if lost {
            self.net.counters.add(&self.net.counters.drops);
        }
        lost
    }

    /// openraft's read index on the leader: confirms leadership with a quorum and waits until
    /// every entry committed before the call is applied.
    async fn linearize(&self, group: &Group) -> Result<(), BackendError> {
        match tokio::time::timeout(READ_INDEX_TIMEOUT, group.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(BackendError::Unavailable(format!("read index: {error}"))),
            Err(_) => Err(BackendError::Unavailable("read index: no quorum answered".into())),
        }
    }
}

impl SimCluster {
    async fn submit_once(
        &self,
        shard: u32,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandOutcome>, BackendError> {
        let group = self.leader_group(shard)?;
        self.client_request_dropped()?;
        let proposer = group.proposer.as_ref().expect("shard groups have a proposer");
        let outcomes = proposer.propose(commands).await.map_err(backend_error)?;
        if self.client_reply_lost() {
            return Err(BackendError::Unavailable("reply lost on the client link".into()));
        }
        Ok(outcomes)
    }
}

fn with_ledger<T>(group: &Group, read: impl FnOnce(&tally_ledger::Ledger, u64) -> T) -> T {
    let state = group.shared.read();
    let GroupData::Shard(ledger) = &state.data else { unreachable!("shard groups hold a ledger") };
    read(ledger, state.applied.map(|log_id| log_id.index).unwrap_or(0))
}

impl Backend for SimCluster {
    fn shard_count(&self) -> u32 {
        self.shard_count
    }

    async fn submit(&self, shard: u32, commands: Vec<Command>) -> Result<Vec<CommandOutcome>, BackendError> {
        let answer = self.submit_once(shard, commands).await;
        if answer.is_err() {
            // The gateway (or, after its deadline, the client) sends the same keys again.
            self.net.counters.add(&self.net.counters.retries);
        }
        answer
    }

    async fn balance(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        consistency: Consistency,
    ) -> Result<BalanceRead, BackendError> {
        let group = self.leader_group(shard)?;
        let linearizable = consistency == Consistency::Linearizable;
        if linearizable {
            self.linearize(&group).await?;
        }
        Ok(with_ledger(&group, |ledger, applied_log_index| BalanceRead {
            balance: ledger.balance(&member_id, &currency),
            applied_log_index,
            staleness_bound_ms: if linearizable { 0 } else { group.raft.config().election_timeout_max },
            linearizable,
        }))
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
        let group = self.leader_group(shard)?;
        self.linearize(&group).await?;
        let (lines, total_lines) = group
            .shared
            .statement_page(&member_id, &currency, start_sequence, newest_first, limit)
            .map_err(|error| BackendError::Unavailable(format!("reading statement: {error}")))?;
        Ok(StatementPage { lines, total_lines })
    }

    async fn operation(
        &self,
        shard: u32,
        partner_id: PartnerId,
        key: IdempotencyKey,
    ) -> Result<Option<(Operation, CommandOutcome)>, BackendError> {
        let group = self.leader_group(shard)?;
        self.linearize(&group).await?;
        Ok(with_ledger(&group, |ledger, _| ledger.operation(&partner_id, &key)))
    }

    /// The simulation runs shard groups only; the gateway code it drives (submission,
    /// transfers, the resolver) does not read the meta state.
    fn meta(&self) -> Arc<MetaState> {
        Arc::new(MetaState::default())
    }

    async fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> Result<Result<MetaResult, MetaError>, BackendError> {
        Err(BackendError::Refused(format!("the simulation has no meta group ({command:?})")))
    }

    async fn cluster_status(&self, _include_state_digests: bool) -> Result<ClusterStatusReply, BackendError> {
        Err(BackendError::Refused("the simulation has no cluster status".into()))
    }
}
