//! A node: the sled database, the hosted group replicas, and the calls the gateway makes on them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tally_ledger::limits::BATCH_COMMANDS_MAX;
use tally_ledger::meta::{MetaCommand, MetaError, MetaResult, MetaState};
use tally_ledger::state::{AccountKey, StatementLine};
use tally_ledger::CurrencyTotals;
use tally_ledger::{
    BalanceView, Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId,
};
use tally_raft::network::PeerPool;
use tally_raft::proposer::{propose_error, wall_clock_ms};
use tally_raft::{
    shard_group_id, Group, GroupData, GroupError, GroupId, GroupRegistry, GroupRequest, GroupResponse,
    NodeId, ProposeError, TallyNode, META_GROUP_ID,
};
use tally_store::{NodeStore, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("group: {0}")]
    Group(#[from] GroupError),
    #[error("data folder {path}: {reason}")]
    Identity { path: String, reason: String },
    #[error("could not initialize group {group_id}: {reason}")]
    Initialize { group_id: GroupId, reason: String },
}

/// Written once into the data folder, so that a restart with a different id or shard count
/// is refused instead of silently serving other data.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeIdentity {
    node_id: NodeId,
    shard_count: u32,
}

/// A balance read and how fresh it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceReadout {
    pub balance: Option<BalanceView>,
    pub applied_log_index: u64,
    pub staleness_bound_ms: u64,
    pub linearizable: bool,
}

/// One group replica's Raft view, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatusView {
    pub group_id: GroupId,
    pub node_id: NodeId,
    pub role: &'static str,
    pub leader_node_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub state_digest: [u8; 32],
    pub voters: Vec<NodeId>,
}

pub struct Node {
    config: NodeConfig,
    store: NodeStore,
    registry: Arc<GroupRegistry>,
    /// Tells background tasks to end, so that every handle on the database is released.
    stop: watch::Sender<bool>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// Opens the data folder and starts every group replica (meta and all shards).
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        check_identity(
            &config.data_dir,
            &NodeIdentity { node_id: config.node_id, shard_count: config.shard_count },
        )?;
        let store = NodeStore::open(&config.data_dir.join("db"))?;
        let peers = Arc::new(PeerPool::default());
        let registry = Arc::new(GroupRegistry::default());
        let (stop, stopped) = watch::channel(false);
        let mut background = Vec::new();
        for group_id in (0..=config.shard_count).map(|group| group as GroupId) {
            let group = Group::start(
                config.node_id,
                group_id,
                &store,
                peers.clone(),
                &config.raft,
                config.proposer_config(),
            )
            .await?;
            let group = registry.insert(group);
            background.push(crate::metrics::spawn_group_metrics(
                config.node_id,
                group.clone(),
                stopped.clone(),
            ));
            if group.proposer.is_some() {
                background.push(spawn_hold_expiry(group, stopped.clone()));
            }
        }
        background.push(crate::metrics::spawn_store_metrics(store.clone(), stopped));
        tracing::info!(
            node_id = config.node_id,
            shards = config.shard_count,
            data_dir = %config.data_dir.display(),
            "node started its groups"
        );
        Ok(Arc::new(Node { config, store, registry, stop, background: Mutex::new(background) }))
    }

    /// Makes this node the only voter of every group that has never been initialized: the
    /// one-process dev cluster. Harmless on restart (groups already initialized are skipped).
    pub async fn initialize_alone(&self) -> Result<(), NodeError> {
        let me = TallyNode { raft_addr: self.config.advertised(), api_addr: self.config.advertised() };
        for group in self.registry.all() {
            let initialized = group.raft.is_initialized().await.map_err(|error| NodeError::Initialize {
                group_id: group.group_id,
                reason: error.to_string(),
            })?;
            if initialized {
                continue;
            }
            let members = BTreeMap::from([(self.config.node_id, me.clone())]);
            group.raft.initialize(members).await.map_err(|error| NodeError::Initialize {
                group_id: group.group_id,
                reason: error.to_string(),
            })?;
            tracing::info!(
                group = group.group_id,
                node_id = self.config.node_id,
                "initialized group with this node as its only voter"
            );
        }
        Ok(())
    }

    /// Waits until every group has a leader; false on timeout.
    pub async fn wait_until_ready(&self, timeout: Duration) -> bool {
        for group in self.registry.all() {
            let waited = group
                .raft
                .wait(Some(timeout))
                .metrics(|metrics| metrics.current_leader.is_some(), "group has a leader")
                .await;
            if waited.is_err() {
                return false;
            }
        }
        true
    }

    /// Healthy when every hosted group runs (no fatal error) and knows its leader.
    pub fn is_healthy(&self) -> bool {
        self.registry.all().iter().all(|group| {
            let metrics = group.raft.metrics();
            let metrics = metrics.borrow();
            metrics.running_state.is_ok() && metrics.current_leader.is_some()
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn shard_count(&self) -> u32 {
        self.config.shard_count
    }

    pub fn registry(&self) -> Arc<GroupRegistry> {
        self.registry.clone()
    }

    pub fn store(&self) -> &NodeStore {
        &self.store
    }

    fn group(&self, group_id: GroupId) -> Result<Arc<Group>, ProposeError> {
        self.registry.get(group_id).ok_or_else(|| ProposeError::Unavailable {
            group_id,
            reason: format!("node {} does not host group {group_id}", self.config.node_id),
        })
    }

    /// Proposes commands to a shard and waits for their outcomes (one per command, in order).
    pub async fn submit(
        &self,
        shard: u32,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandOutcome>, ProposeError> {
        let group = self.group(shard_group_id(shard))?;
        let proposer = group.proposer.as_ref().expect("shard groups have a proposer");
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut commands = commands;
        while !commands.is_empty() {
            let rest = commands.split_off(commands.len().min(BATCH_COMMANDS_MAX));
            outcomes.extend(proposer.propose(commands).await?);
            commands = rest;
        }
        Ok(outcomes)
    }

    /// Confirms leadership with a quorum and waits until the state reflects every write
    /// acknowledged before the call (openraft's read index).
    async fn linearize(&self, group: &Group) -> Result<(), ProposeError> {
        group.raft.ensure_linearizable().await.map(|_| ()).map_err(|error| read_error(group.group_id, error))
    }

    pub async fn balance(
        &self,
        shard: u32,
        member_id: &MemberId,
        currency: &CurrencyCode,
        linearizable: bool,
    ) -> Result<BalanceReadout, ProposeError> {
        let group = self.group(shard_group_id(shard))?;
        let staleness_bound_ms = if linearizable {
            self.linearize(&group).await?;
            0
        } else {
            staleness_ms(&group)
        };
        let state = group.shared.read();
        let GroupData::Shard(ledger) = &state.data else { unreachable!("shard groups hold a ledger") };
        Ok(BalanceReadout {
            balance: ledger.balance(member_id, currency),
            applied_log_index: state.applied.map(|log_id| log_id.index).unwrap_or(0),
            staleness_bound_ms,
            linearizable,
        })
    }

    /// Statement lines and the account's total line count (linearizable).
    pub async fn statement(
        &self,
        shard: u32,
        member_id: &MemberId,
        currency: &CurrencyCode,
        start_sequence: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> Result<(Vec<StatementLine>, u64), ProposeError> {
        let group = self.group(shard_group_id(shard))?;
        self.linearize(&group).await?;
        let total_lines = {
            let state = group.shared.read();
            let GroupData::Shard(ledger) = &state.data else { unreachable!("shard groups hold a ledger") };
            ledger.statement_lines(member_id, currency)
        };
        let account = AccountKey::Member { member_id: member_id.clone(), currency: currency.clone() };
        // A newest-first read with no cursor starts from the last line written.
        let start = match (start_sequence, newest_first) {
            (Some(sequence), _) => Some(sequence),
            (None, true) => total_lines.checked_sub(1),
            (None, false) => Some(0),
        };
        let Some(start) = start else { return Ok((Vec::new(), 0)) };
        let lines =
            group.shared.statement_lines(&account, Some(start), newest_first, limit).map_err(|error| {
                ProposeError::Unavailable {
                    group_id: group.group_id,
                    reason: format!("reading statement: {error}"),
                }
            })?;
        Ok((lines, total_lines))
    }

    pub async fn operation(
        &self,
        shard: u32,
        partner_id: &PartnerId,
        key: &IdempotencyKey,
    ) -> Result<Option<(Operation, CommandOutcome)>, ProposeError> {
        let group = self.group(shard_group_id(shard))?;
        self.linearize(&group).await?;
        let state = group.shared.read();
        let GroupData::Shard(ledger) = &state.data else { unreachable!("shard groups hold a ledger") };
        Ok(ledger.operation(partner_id, key))
    }

    /// The meta state as applied on this node.
    pub fn meta_state(&self) -> Arc<MetaState> {
        self.registry.get(META_GROUP_ID).expect("every node hosts the meta group").shared.meta_state()
    }

    pub async fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> Result<Result<MetaResult, MetaError>, ProposeError> {
        let group = self.group(META_GROUP_ID)?;
        let request = GroupRequest::Meta { log_time_ms: wall_clock_ms(), command };
        let response =
            group.raft.client_write(request).await.map_err(|error| propose_error(META_GROUP_ID, error))?;
        match response.data {
            GroupResponse::Meta(result) => Ok(result),
            other => Err(ProposeError::Unavailable {
                group_id: META_GROUP_ID,
                reason: format!("unexpected {other:?}"),
            }),
        }
    }

    /// Raft view and state digest of every hosted group.
    pub async fn status(&self) -> Vec<GroupStatusView> {
        let mut views = Vec::new();
        for group in self.registry.all() {
            let metrics = group.raft.metrics().borrow().clone();
            let committed_index = group
                .raft
                .with_raft_state(|state| state.committed.map(|log_id| log_id.index).unwrap_or(0))
                .await
                .unwrap_or(0);
            let (applied_index, state_digest) = {
                let state = group.shared.read();
                let digest = match &state.data {
                    GroupData::Shard(ledger) => ledger.digest(),
                    GroupData::Meta(meta) => meta_digest(meta),
                };
                (state.applied.map(|log_id| log_id.index).unwrap_or(0), digest)
            };
            views.push(GroupStatusView {
                group_id: group.group_id,
                node_id: self.config.node_id,
                role: role_name(metrics.state),
                leader_node_id: metrics.current_leader,
                term: metrics.current_term,
                last_log_index: metrics.last_log_index.unwrap_or(0),
                committed_index,
                applied_index,
                state_digest,
                voters: metrics.membership_config.membership().voter_ids().collect(),
            });
        }
        views
    }

    /// Per-currency sums of debits and credits over every shard hosted here.
    pub fn currency_totals(&self) -> BTreeMap<CurrencyCode, CurrencyTotals> {
        let mut totals: BTreeMap<CurrencyCode, CurrencyTotals> = BTreeMap::new();
        for group in self.registry.all() {
            let state = group.shared.read();
            let GroupData::Shard(ledger) = &state.data else { continue };
            for (currency, sums) in ledger.currency_totals() {
                let entry = totals.entry(currency).or_default();
                entry.debits_points += sums.debits_points;
                entry.credits_points += sums.credits_points;
            }
        }
        totals
    }

    /// Stops every group and background task (the data stays). Once the caller drops its
    /// last `Arc<Node>`, the database is closed and the folder can be opened again.
    pub async fn shutdown(&self) {
        for group in self.registry.all() {
            if let Err(error) = group.raft.shutdown().await {
                tracing::warn!(group = group.group_id, %error, "group did not shut down cleanly");
            }
        }
        if let Err(error) = self.store.flush().await {
            tracing::warn!(%error, "final flush failed");
        }
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.background.lock().expect("background lock poisoned"));
        for task in tasks {
            let _ = task.await;
        }
        self.registry.clear();
    }
}

/// How often a shard leader checks whether an open hold has expired by its clock.
const HOLD_EXPIRY_CHECK_INTERVAL_MS: u64 = 250;

/// On the shard's leader, proposes an empty entry once the earliest open hold has expired by
/// the leader's clock, so that an idle shard still releases expired holds (through the log, so
/// every replica does it at the same entry) and reads stop counting them as held.
fn spawn_hold_expiry(group: Arc<Group>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(HOLD_EXPIRY_CHECK_INTERVAL_MS));
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            if group.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
            let next_expiry_ms = match &group.shared.read().data {
                GroupData::Shard(ledger) => ledger.next_hold_expiry_ms(),
                GroupData::Meta(_) => None,
            };
            let due = next_expiry_ms.is_some_and(|expires_at_ms| expires_at_ms <= wall_clock_ms());
            let proposer = group.proposer.as_ref().expect("shard groups have a proposer");
            if due {
                if let Err(error) = proposer.propose_clock_tick().await {
                    tracing::debug!(group = group.group_id, %error, "hold expiry tick not applied");
                }
            }
        }
    })
}

fn meta_digest(meta: &MetaState) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let encoded = tally_store::encode_value(meta).expect("encoding meta state into memory cannot fail");
    Sha256::digest(&encoded).into()
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// For a stale read: how long since this replica last heard from a quorum (as leader) or,
/// on a follower, an upper bound we cannot give precisely, so the election timeout.
fn staleness_ms(group: &Group) -> u64 {
    let metrics = group.raft.metrics();
    let metrics = metrics.borrow();
    match metrics.state {
        ServerState::Leader => metrics.millis_since_quorum_ack.unwrap_or(0),
        _ => group.raft.config().election_timeout_max,
    }
}

fn read_error(
    group_id: GroupId,
    error: RaftError<NodeId, CheckIsLeaderError<NodeId, TallyNode>>,
) -> ProposeError {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader { group_id, leader_id: forward.leader_id, leader: forward.leader_node }
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error)) => {
            ProposeError::Unavailable { group_id, reason: error.to_string() }
        }
        RaftError::Fatal(fatal) => ProposeError::Unavailable { group_id, reason: fatal.to_string() },
    }
}

fn check_identity(data_dir: &Path, expected: &NodeIdentity) -> Result<(), NodeError> {
    let identity_error =
        |reason: String| NodeError::Identity { path: data_dir.display().to_string(), reason };
    std::fs::create_dir_all(data_dir).map_err(|error| identity_error(error.to_string()))?;
    let path = data_dir.join("node-identity.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let found: NodeIdentity = serde_json::from_slice(&bytes)
                .map_err(|error| identity_error(format!("unreadable node-identity.json: {error}")))?;
            if &found != expected {
                return Err(identity_error(format!(
                    "holds node {} with {} shards, but this node is configured as node {} with {} shards",
                    found.node_id, found.shard_count, expected.node_id, expected.shard_count
                )));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let bytes = serde_json::to_vec_pretty(expected).expect("identity encodes");
            std::fs::write(&path, bytes).map_err(|error| identity_error(error.to_string()))
        }
        Err(error) => Err(identity_error(error.to_string())),
    }
}
