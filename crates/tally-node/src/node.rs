//! A node: the sled database, the hosted group replicas, and the calls the gateway makes on them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, InitializeError, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tally_ledger::limits::BATCH_COMMANDS_MAX;
use tally_ledger::meta::{ClusterLayout, MetaCommand, MetaError, MetaResult, MetaState, NodeInfo};
use tally_ledger::state::{StatementLine, TransferRecord};
use tally_ledger::CurrencyTotals;
use tally_ledger::{
    BalanceView, Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId,
    TransferId,
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
    /// Random, made with the folder: tells this folder from a wiped or replaced one with the
    /// same node id (the cluster layout records it; see `tally_raft::network::IncarnationGuard`).
    /// 0 in files written before incarnations existed; such a file gets one on its next start.
    #[serde(default)]
    incarnation: u64,
}

/// A balance read and how fresh it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceReadout {
    pub balance: Option<BalanceView>,
    pub applied_log_index: u64,
    pub staleness_bound_ms: u64,
    pub linearizable: bool,
}

/// One group replica's Raft view, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatusView {
    pub group_id: GroupId,
    pub node_id: NodeId,
    pub role: String,
    pub leader_node_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// Only when the status was asked for [`StatusDetail::Digests`].
    pub state_digest: Option<[u8; 32]>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// On the leader: the last log index each replica has matched.
    pub matched_index: BTreeMap<NodeId, u64>,
    /// Per-currency sums over this replica's accounts (shard groups, from
    /// [`StatusDetail::Totals`] up).
    pub currency_totals: BTreeMap<CurrencyCode, CurrencyTotals>,
}

/// How much of each replica's state a status reads, besides its Raft progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StatusDetail {
    /// Raft progress only: what pollers following leaders and lag need.
    Raft,
    /// Also per-currency totals (a walk over the accounts).
    Totals,
    /// Also the state digest, which reads the whole state back (every retained record of a
    /// shard: seconds and hundreds of MB for millions of keys, while the replica's applies
    /// wait on its state lock).
    Digests,
}

/// Runtime switches of one replica (see [`Node::set_raft_switches`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftSwitches {
    pub heartbeat: bool,
    pub elect: bool,
    pub proposals: bool,
}

impl RaftSwitches {
    pub const ALL_ON: RaftSwitches = RaftSwitches { heartbeat: true, elect: true, proposals: true };
}

fn apply_switches(group: &Group, switches: RaftSwitches) {
    group.raft.runtime_config().heartbeat(switches.heartbeat);
    group.raft.runtime_config().elect(switches.elect);
    if let Some(proposer) = &group.proposer {
        proposer.set_paused(!switches.proposals);
    }
}

/// A hosted replica's background tasks, stopped when the replica is dropped.
struct ReplicaTasks {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Node {
    config: NodeConfig,
    store: NodeStore,
    peers: Arc<PeerPool>,
    registry: Arc<GroupRegistry>,
    replica_tasks: Mutex<BTreeMap<GroupId, ReplicaTasks>>,
    /// Serializes hosting and dropping replicas.
    hosting: tokio::sync::Mutex<()>,
    /// Per group, which `set_raft_switches` call is the latest (older timers do not restore).
    switch_generations: Arc<Mutex<BTreeMap<GroupId, u64>>>,
    /// Tells node-wide background tasks to end, so that every handle on the database is released.
    stop: watch::Sender<bool>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// Opens the data folder and starts the meta group replica and every shard replica stored
    /// in it (a restarted node rejoins its groups by itself).
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        let identity = check_identity(
            &config.data_dir,
            &NodeIdentity { node_id: config.node_id, shard_count: config.shard_count, incarnation: 0 },
        )?;
        let store = NodeStore::open_with(&config.data_dir.join("db"), &config.store_config())?;
        let (stop, stopped) = watch::channel(false);
        let background = vec![crate::metrics::spawn_store_metrics(store.clone(), stopped)];
        let peers = Arc::new(
            PeerPool::new(config.node_id, identity.incarnation, config.cluster_token.clone())
                .with_append_entries_on_streams(config.raft.append_entries_on_streams),
        );
        let node = Arc::new(Node {
            config,
            store,
            peers,
            registry: Arc::new(GroupRegistry::default()),
            replica_tasks: Mutex::new(BTreeMap::new()),
            hosting: tokio::sync::Mutex::new(()),
            switch_generations: Arc::new(Mutex::new(BTreeMap::new())),
            stop,
            background: Mutex::new(background),
        });
        // The meta replica first: its layout says which incarnations to expect of peers (and of
        // this folder) before any shard replica talks to them.
        node.host_group(META_GROUP_ID).await?;
        node.check_own_incarnation()?;
        node.sync_incarnations();
        let watcher = spawn_incarnation_sync(node.clone(), node.stop.subscribe());
        node.background.lock().expect("background lock poisoned").push(watcher);
        let shards: Vec<GroupId> = node
            .store
            .stored_groups()
            .into_iter()
            .filter(|group| (1..=node.config.shard_count).contains(group))
            .collect();
        for group_id in shards {
            node.host_group(group_id).await?;
        }
        tracing::info!(
            node_id = node.config.node_id,
            shards = node.config.shard_count,
            hosted = ?node.registry.all().iter().map(|group| group.group_id).collect::<Vec<_>>(),
            data_dir = %node.config.data_dir.display(),
            "node started its group replicas"
        );
        Ok(node)
    }

    /// Refuses a folder whose incarnation is not the one its own meta replica recorded for this
    /// node (the identity file was lost and made again over an existing database).
    fn check_own_incarnation(&self) -> Result<(), NodeError> {
        let own = self.peers.guard().own();
        let recorded =
            self.meta_state().layout.as_ref().and_then(|layout| layout.incarnation(self.config.node_id));
        match recorded {
            Some(recorded) if recorded != own => Err(NodeError::Identity {
                path: self.config.data_dir.display().to_string(),
                reason: tally_ledger::meta::replaced_folder_message(self.config.node_id, own, recorded),
            }),
            _ => Ok(()),
        }
    }

    /// Copies the incarnations the layout records into the transport's guard.
    fn sync_incarnations(&self) {
        let expected =
            self.meta_state().layout.as_ref().map(|layout| layout.incarnations.clone()).unwrap_or_default();
        self.peers.set_expected_incarnations(expected);
    }

    /// This data folder's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.peers.guard().own()
    }

    /// Raft messages refused because a data folder was replaced (this one or a peer's), as
    /// operator messages.
    pub fn incarnation_conflicts(&self) -> Vec<String> {
        self.peers.guard().conflicts().iter().map(ToString::to_string).collect()
    }

    /// The peer pool (and its incarnation guard) that the Raft transport server must share.
    pub fn peers(&self) -> Arc<PeerPool> {
        self.peers.clone()
    }

    /// Starts an empty replica of `group_id` here if there is none, so that a leader can add
    /// this node as a learner. Idempotent.
    pub async fn host_group(&self, group_id: GroupId) -> Result<Arc<Group>, NodeError> {
        if group_id > self.config.shard_count {
            return Err(NodeError::Config(format!(
                "no group {group_id}: this cluster has {} shards",
                self.config.shard_count
            )));
        }
        let _hosting = self.hosting.lock().await;
        if let Some(group) = self.registry.get(group_id) {
            return Ok(group);
        }
        let group = Group::start(
            self.config.node_id,
            group_id,
            &self.store,
            self.peers.clone(),
            &self.config.raft,
            self.config.proposer_config(),
        )
        .await?;
        let group = self.registry.insert(group);
        let (stop, stopped) = watch::channel(false);
        let mut tasks =
            vec![crate::metrics::spawn_group_metrics(self.config.node_id, group.clone(), stopped.clone())];
        if group.proposer.is_some() {
            tasks.push(spawn_hold_expiry(group.clone(), stopped));
        }
        self.replica_tasks
            .lock()
            .expect("replica tasks lock poisoned")
            .insert(group_id, ReplicaTasks { stop, tasks });
        Ok(group)
    }

    /// Stops this node's replica of a shard group and deletes its data. Only for a replica that
    /// has been removed from its group (openraft's FAQ: never erase a member's data): refused
    /// while the replica's own membership includes this node, unless `removal_confirmed` (the
    /// caller saw the group's leader commit a membership without it; the replica may simply
    /// not have received that entry).
    pub async fn drop_group(&self, group_id: GroupId, removal_confirmed: bool) -> Result<bool, NodeError> {
        if group_id == META_GROUP_ID {
            return Err(NodeError::Config("the meta group replica is never dropped".into()));
        }
        let _hosting = self.hosting.lock().await;
        let Some(group) = self.registry.remove(group_id) else {
            return Ok(self.store.drop_group(group_id)?);
        };
        let metrics = group.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let member =
            membership.voter_ids().chain(membership.learner_ids()).any(|id| id == self.config.node_id);
        if member && !removal_confirmed {
            self.registry.insert_arc(group);
            return Err(NodeError::Config(format!(
                "node {} is still a member of {}; remove it from the group first",
                self.config.node_id,
                tally_raft::group::group_name(group_id)
            )));
        }
        let tasks = self.replica_tasks.lock().expect("replica tasks lock poisoned").remove(&group_id);
        if let Some(tasks) = tasks {
            let _ = tasks.stop.send(true);
            for task in tasks.tasks {
                let _ = task.await;
            }
        }
        if let Err(error) = group.shutdown().await {
            tracing::warn!(group = group_id, %error, "removed replica did not shut down cleanly");
        }
        drop(group);
        let existed = self.store.drop_group(group_id)?;
        tracing::info!(
            group = group_id,
            node_id = self.config.node_id,
            "dropped the removed replica and its data"
        );
        Ok(existed)
    }

    /// Hosts `group_id` and, if the replica has never been initialized, makes `members` the
    /// group's first voters (this node campaigns first, so it normally becomes the leader).
    /// Harmless when already initialized (openraft's `NotAllowed`).
    pub async fn initialize_group(
        &self,
        group_id: GroupId,
        members: BTreeMap<NodeId, String>,
    ) -> Result<(), NodeError> {
        let group = self.host_group(group_id).await?;
        let initialize_error = |reason: String| NodeError::Initialize { group_id, reason };
        if group.raft.is_initialized().await.map_err(|error| initialize_error(error.to_string()))? {
            return Ok(());
        }
        let members: BTreeMap<NodeId, TallyNode> = members
            .into_iter()
            .map(|(node_id, address)| (node_id, TallyNode { raft_addr: address.clone(), api_addr: address }))
            .collect();
        match group.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(group = group_id, node_id = self.config.node_id, "initialized group");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(error) => Err(initialize_error(error.to_string())),
        }
    }

    /// Makes this node the only voter of every group that has never been initialized, and
    /// records a one-node layout: the one-process dev cluster. Harmless on restart.
    pub async fn initialize_alone(&self) -> Result<(), NodeError> {
        let address = self.config.advertised();
        let me = BTreeMap::from([(self.config.node_id, address.clone())]);
        for group_id in 0..=self.config.shard_count {
            self.initialize_group(group_id, me.clone()).await?;
        }
        if self.meta_state().layout.is_none() {
            let meta = self.group(META_GROUP_ID).map_err(|error| NodeError::Initialize {
                group_id: META_GROUP_ID,
                reason: error.to_string(),
            })?;
            let waited = meta
                .raft
                .wait(Some(Duration::from_secs(30)))
                .metrics(|metrics| metrics.state == ServerState::Leader, "meta leader")
                .await;
            if waited.is_err() {
                return Err(NodeError::Initialize {
                    group_id: META_GROUP_ID,
                    reason: "no leader in 30 s".into(),
                });
            }
            let node = NodeInfo { node_id: self.config.node_id, address };
            let layout = ClusterLayout::initial(vec![node], self.config.shard_count, 1)
                .map_err(|error| NodeError::Config(error.to_string()))?;
            let outcome = self.propose_meta(MetaCommand::InitCluster { layout }).await;
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(NodeError::Config(error.to_string())),
                Err(error) => {
                    return Err(NodeError::Initialize { group_id: META_GROUP_ID, reason: error.to_string() })
                }
            }
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

    /// Healthy when every hosted replica runs (no fatal error) and every replica that is a
    /// voter of its group knows its leader (an empty replica waiting to be added is healthy).
    pub fn is_healthy(&self) -> bool {
        let node_id = self.config.node_id;
        if self.peers.guard().conflicts().iter().any(|conflict| conflict.node_id == node_id) {
            return false;
        }
        self.registry.all().iter().all(|group| {
            let metrics = group.raft.metrics();
            let metrics = metrics.borrow();
            let voter =
                metrics.membership_config.membership().voter_ids().any(|id| id == self.config.node_id);
            metrics.running_state.is_ok() && (!voter || metrics.current_leader.is_some())
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
        self.check_retention_budget(&group, &commands)?;
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

    /// Refuses commands with new keys while the shard retains its budget of keys (see
    /// [`retention_refusal`]).
    fn check_retention_budget(&self, group: &Group, commands: &[Command]) -> Result<(), ProposeError> {
        // Below the budget (every write but those of a full shard) without the state lock: apply
        // holds it for tens of milliseconds under load, and this runs on a runtime worker.
        if group.shared.retained_keys() < self.config.retained_keys_per_shard_max {
            return Ok(());
        }
        let state = group.shared.read();
        let GroupData::Shard(ledger) = &state.data else { unreachable!("shard groups hold a ledger") };
        match retention_refusal(ledger, group.group_id, self.config.retained_keys_per_shard_max, commands) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// Confirms leadership with a quorum and waits until the state reflects every write
    /// acknowledged before the call (openraft's read index).
    ///
    /// Bounded by two election timeouts: a leader cut off from its followers can wait on them
    /// for longer than a caller's deadline, and the caller should then hear that the shard is
    /// unavailable (retry later), not that its deadline passed.
    async fn linearize(&self, group: &Group) -> Result<(), ProposeError> {
        let bound_ms = 2 * self.config.raft.election_timeout_max_ms;
        match tokio::time::timeout(Duration::from_millis(bound_ms), group.raft.ensure_linearizable()).await {
            Ok(confirmed) => confirmed.map(|_| ()).map_err(|error| read_error(group.group_id, error)),
            Err(_elapsed) => Err(ProposeError::Unavailable {
                group_id: group.group_id,
                reason: format!(
                    "the leader could not confirm its leadership with a quorum within {bound_ms} ms"
                ),
            }),
        }
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
        group.shared.statement_page(member_id, currency, start_sequence, newest_first, limit).map_err(
            |error| ProposeError::Unavailable {
                group_id: group.group_id,
                reason: format!("reading statement: {error}"),
            },
        )
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

    /// Raft view of every hosted replica and as much of its state as `detail` asks for.
    pub async fn status(&self, detail: StatusDetail) -> Vec<GroupStatusView> {
        let mut views = Vec::new();
        for group in self.registry.all() {
            // The core answers calls only after its start-up has reported the metrics read
            // below; read before that, they can still be the initial ones (an empty log), and
            // the start-up safety check compares this log end with what the leaders recorded.
            let committed_index = group
                .raft
                .with_raft_state(|state| state.committed.map(|log_id| log_id.index).unwrap_or(0))
                .await
                .unwrap_or(0);
            let metrics = group.raft.metrics().borrow().clone();
            // A digest reads every retained record back (seconds on a shard holding millions):
            // on a blocking thread, not on a runtime worker that calls are queued on.
            let shared = group.shared.clone();
            let read_state = move || {
                let state = shared.read();
                let digest = match &state.data {
                    _ if detail < StatusDetail::Digests => None,
                    GroupData::Shard(ledger) => Some(ledger.digest()),
                    GroupData::Meta(meta) => Some(meta_digest(meta)),
                };
                let totals = match &state.data {
                    GroupData::Shard(ledger) if detail >= StatusDetail::Totals => ledger.currency_totals(),
                    _ => BTreeMap::new(),
                };
                (state.applied.map(|log_id| log_id.index).unwrap_or(0), digest, totals)
            };
            let (applied_index, state_digest, currency_totals) = if detail > StatusDetail::Raft {
                tokio::task::spawn_blocking(read_state).await.expect("a state digest panicked")
            } else {
                read_state()
            };
            let membership = metrics.membership_config.membership();
            views.push(GroupStatusView {
                group_id: group.group_id,
                node_id: self.config.node_id,
                role: role_name(metrics.state).to_string(),
                leader_node_id: metrics.current_leader,
                term: metrics.current_term,
                last_log_index: metrics.last_log_index.unwrap_or(0),
                committed_index,
                applied_index,
                snapshot_index: metrics.snapshot.map(|log_id| log_id.index).unwrap_or(0),
                state_digest,
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                matched_index: metrics
                    .replication
                    .iter()
                    .flatten()
                    .map(|(node_id, matched)| (*node_id, matched.map(|log_id| log_id.index).unwrap_or(0)))
                    .collect(),
                currency_totals,
            });
        }
        views
    }

    /// On the group's leader: adds `node_id` as a learner (non-voter) and starts replicating to
    /// it; returns without waiting for it to catch up.
    pub async fn add_learner(
        &self,
        group_id: GroupId,
        node_id: NodeId,
        address: String,
    ) -> Result<(), ProposeError> {
        let group = self.group(group_id)?;
        let node = TallyNode { raft_addr: address.clone(), api_addr: address };
        group
            .raft
            .add_learner(node_id, node, false)
            .await
            .map(|_| ())
            .map_err(|error| propose_error(group_id, error))
    }

    /// On the group's leader: makes `voters` the group's voters (through a joint configuration);
    /// replicas that are no longer voters are dropped from the group.
    pub async fn change_voters(
        &self,
        group_id: GroupId,
        voters: BTreeSet<NodeId>,
    ) -> Result<(), ProposeError> {
        let group = self.group(group_id)?;
        group
            .raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(|error| propose_error(group_id, error))
    }

    /// On the group's leader: removes non-voting members (learners) from the group.
    pub async fn remove_learners(
        &self,
        group_id: GroupId,
        learners: BTreeSet<NodeId>,
    ) -> Result<(), ProposeError> {
        let group = self.group(group_id)?;
        group
            .raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(learners), false)
            .await
            .map(|_| ())
            .map_err(|error| propose_error(group_id, error))
    }

    /// Turns this replica's heartbeats, elections and (on shards) proposals on or off, for
    /// moving leadership (openraft 0.9.25 has no transfer-leader call; see docs/operations.md).
    /// Everything is switched back on by itself after `restore_after_ms`, so that an operator
    /// tool dying half-way cannot leave a group unable to elect or write.
    pub fn set_raft_switches(
        &self,
        group_id: GroupId,
        switches: RaftSwitches,
        restore_after_ms: u64,
    ) -> Result<(), ProposeError> {
        let group = self.group(group_id)?;
        apply_switches(&group, switches);
        let generation = {
            let mut generations = self.switch_generations.lock().expect("switch lock poisoned");
            let generation = generations.entry(group_id).or_default();
            *generation += 1;
            *generation
        };
        if switches != RaftSwitches::ALL_ON {
            let generations = self.switch_generations.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(restore_after_ms)).await;
                let current = generations.lock().expect("switch lock poisoned").get(&group_id).copied();
                if current == Some(generation) {
                    tracing::warn!(group = group_id, "Raft switches restored after {restore_after_ms} ms");
                    apply_switches(&group, RaftSwitches::ALL_ON);
                }
            });
        }
        Ok(())
    }

    /// Asks this replica to start an election now.
    pub async fn trigger_elect(&self, group_id: GroupId) -> Result<(), ProposeError> {
        let group = self.group(group_id)?;
        group
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|fatal| ProposeError::Unavailable { group_id, reason: fatal.to_string() })
    }

    /// Asks this replica to build a snapshot now (it returns before the snapshot is built).
    pub async fn trigger_snapshot(&self, group_id: GroupId) -> Result<(), ProposeError> {
        let group = self.group(group_id)?;
        group
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|fatal| ProposeError::Unavailable { group_id, reason: fatal.to_string() })
    }

    /// Open cross-shard transfer records of a shard this node leads, opened at least
    /// `older_than_ms` ago by log time; `None` when this replica does not lead the shard.
    pub fn open_transfers_led(
        &self,
        shard: u32,
        older_than_ms: u64,
    ) -> Option<Vec<(TransferId, TransferRecord)>> {
        let group = self.registry.get(shard_group_id(shard))?;
        if group.raft.metrics().borrow().state != ServerState::Leader {
            return None;
        }
        let cutoff_ms = wall_clock_ms().saturating_sub(older_than_ms);
        let state = group.shared.read();
        let GroupData::Shard(ledger) = &state.data else { return None };
        Some(
            ledger
                .open_transfers()
                .into_iter()
                .filter(|(_, record)| record.opened_at_ms <= cutoff_ms)
                .collect(),
        )
    }

    /// Shard replicas this node may have left: the layout does not place the shard here, and
    /// the replica was a member of its group at some point (an empty replica waiting to be
    /// added during a move has no membership and is kept). The caller asks the group's leader
    /// whether this node is still a member before dropping one (a node that was down while it
    /// was moved off never received the membership without it).
    pub fn departure_candidates(&self, layout: &ClusterLayout) -> Vec<GroupId> {
        let mut candidates = Vec::new();
        for group in self.registry.all() {
            let group_id = group.group_id;
            if group_id == META_GROUP_ID {
                continue;
            }
            let placed_here = layout
                .shards
                .get(group_id as usize - 1)
                .is_some_and(|placement| placement.replicas.contains(&self.config.node_id));
            let was_member = {
                let metrics = group.raft.metrics();
                let metrics = metrics.borrow();
                let membership = metrics.membership_config.membership();
                let has_members = membership.voter_ids().chain(membership.learner_ids()).next().is_some();
                has_members
            };
            if !placed_here && was_member {
                candidates.push(group_id);
            }
        }
        candidates
    }

    /// The groups this node hosts a replica of.
    pub fn hosted_groups(&self) -> Vec<GroupId> {
        self.registry.all().iter().map(|group| group.group_id).collect()
    }

    /// Leader, voters, applied index and member addresses of the meta group as this replica
    /// sees them.
    pub fn meta_view(&self) -> (Option<NodeId>, Vec<NodeId>, u64, BTreeMap<NodeId, String>) {
        let meta = self.registry.get(META_GROUP_ID).expect("every node hosts the meta group");
        let metrics = meta.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters = membership.voter_ids().collect();
        let addresses = membership.nodes().map(|(node_id, node)| (*node_id, node.api_addr.clone())).collect();
        let applied = metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0);
        (metrics.current_leader, voters, applied, addresses)
    }

    /// Stops every group and background task (the data stays). Once the caller drops its
    /// last `Arc<Node>`, the database is closed and the folder can be opened again.
    pub async fn shutdown(&self) {
        for group in self.registry.all() {
            if let Err(error) = group.shutdown().await {
                tracing::warn!(group = group.group_id, %error, "group did not shut down cleanly");
                continue;
            }
            // A last checkpoint, so that a restart has little of the log to re-apply; a full
            // one, so that it has no deltas to read either.
            group.shared.make_next_checkpoint_full();
            let checkpointed =
                tally_raft::group::checkpoint_durably(&group.shared, &self.store, &group.purge_floor).await;
            if let Err(error) = checkpointed {
                tracing::warn!(group = group.group_id, %error, "final checkpoint failed");
            }
        }
        if let Err(error) = self.store.flush().await {
            tracing::warn!(%error, "final flush failed");
        }
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut *self.background.lock().expect("background lock poisoned"));
        let replicas = std::mem::take(&mut *self.replica_tasks.lock().expect("replica tasks lock poisoned"));
        for replica in replicas.into_values() {
            let _ = replica.stop.send(true);
            tasks.extend(replica.tasks);
        }
        for task in tasks {
            let _ = task.await;
        }
        self.registry.clear();
    }
}

/// Keeps the transport's expected incarnations equal to the layout's as the meta replica
/// applies entries.
fn spawn_incarnation_sync(node: Arc<Node>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let Some(meta) = node.registry.get(META_GROUP_ID) else {
        return tokio::spawn(async {});
    };
    let mut metrics = meta.raft.metrics();
    drop(meta);
    // Holds only a weak handle, so that this task never keeps the node (and its database) open.
    let node = Arc::downgrade(&node);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            let Some(node) = node.upgrade() else { return };
            node.sync_incarnations();
        }
    })
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
            let next_expiry_ms = group.shared.next_hold_expiry_ms();
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

/// The shard count written in `data_dir`'s identity file, when the folder has one that can be
/// read (a damaged one is reported by [`Node::open`]).
pub fn stored_shard_count(data_dir: &Path) -> Option<u32> {
    let bytes = std::fs::read(data_dir.join("node-identity.json")).ok()?;
    serde_json::from_slice::<NodeIdentity>(&bytes).ok().map(|identity| identity.shard_count)
}

/// Reads the folder's identity (or writes a new one, with a new random incarnation, into a
/// folder that has none) and checks it against the configuration. Returns the stored identity.
fn check_identity(data_dir: &Path, expected: &NodeIdentity) -> Result<NodeIdentity, NodeError> {
    let identity_error =
        |reason: String| NodeError::Identity { path: data_dir.display().to_string(), reason };
    std::fs::create_dir_all(data_dir).map_err(|error| identity_error(error.to_string()))?;
    let path = data_dir.join("node-identity.json");
    let mut found = match std::fs::read(&path) {
        Ok(bytes) => {
            let found: NodeIdentity = serde_json::from_slice(&bytes).map_err(|error| {
                identity_error(format!(
                    "unreadable {}: {error}; the folder is damaged: replace the node (docs/operations.md 7.2)",
                    path.display()
                ))
            })?;
            if (found.node_id, found.shard_count) != (expected.node_id, expected.shard_count) {
                return Err(identity_error(format!(
                    "holds node {} with {} shards, but this node is configured as node {} with {} shards",
                    found.node_id, found.shard_count, expected.node_id, expected.shard_count
                )));
            }
            found
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            NodeIdentity { node_id: expected.node_id, shard_count: expected.shard_count, incarnation: 0 }
        }
        Err(error) => return Err(identity_error(error.to_string())),
    };
    if found.incarnation == 0 {
        found.incarnation = new_incarnation();
        let bytes = serde_json::to_vec_pretty(&found).expect("identity encodes");
        write_durably(&path, &bytes)
            .map_err(|error| identity_error(format!("{}: {error}", path.display())))?;
    }
    Ok(found)
}

/// A random non-zero u64 (std's hasher keys are random per process; the clock and process id
/// separate two folders made in one process).
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Writes `path` so that it survives a crash whole or not at all: a temporary file, fsync,
/// rename, fsync of the folder.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(folder) = path.parent() {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(())
}

/// The refusal of `commands` when `ledger` retains `retained_keys_max` keys or more and one of
/// them has a new key. Checked at admission, not in apply: the count is what this replica has
/// applied, so a burst already queued may pass the budget by what was in flight, and nothing
/// refused reaches the log. Retries of retained keys still go through, to get their answers.
fn retention_refusal(
    ledger: &tally_ledger::Ledger,
    group_id: GroupId,
    retained_keys_max: usize,
    commands: &[Command],
) -> Option<ProposeError> {
    let retained_keys = ledger.retained_keys();
    let new_key = || {
        commands
            .iter()
            .any(|command| ledger.operation(&command.partner_id, &command.idempotency_key).is_none())
    };
    (retained_keys >= retained_keys_max && new_key()).then_some(ProposeError::RetentionFull {
        group_id,
        retained_keys,
        retained_keys_max,
    })
}

#[cfg(test)]
mod tests {
    use tally_ledger::{
        BatchHeader, ChangeSet, CurrencyCode, IdempotencyKey, Ledger, MemberId, Operation, PartnerId,
        ShardBatch,
    };

    use super::*;

    fn earn(key: &str) -> Command {
        Command {
            partner_id: PartnerId::parse("skyair").unwrap(),
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            operation: Operation::Earn {
                member_id: MemberId::parse("alice").unwrap(),
                currency: CurrencyCode::parse("SKYMILES").unwrap(),
                amount_points: 5,
            },
        }
    }

    #[test]
    fn a_shard_at_its_key_budget_refuses_new_keys_and_still_answers_retained_ones() {
        let mut ledger = Ledger::new();
        let header = BatchHeader { log_time_ms: 1_700_000_000_000, idempotency_retention_ms: 3_600_000 };
        let batch = ShardBatch { header, commands: vec![earn("e1"), earn("e2")] };
        ledger.apply_batch(1, &batch, &mut ChangeSet::default());
        assert_eq!(retention_refusal(&ledger, 2, 3, &[earn("e3")]), None, "below the budget");
        let refusal = retention_refusal(&ledger, 2, 2, &[earn("e1"), earn("e3")]).expect("e3 is a new key");
        assert_eq!(
            refusal,
            ProposeError::RetentionFull { group_id: 2, retained_keys: 2, retained_keys_max: 2 }
        );
        assert!(refusal.to_string().contains("retained_keys_per_shard_max = 2"), "{refusal}");
        assert_eq!(retention_refusal(&ledger, 2, 2, &[earn("e2"), earn("e1")]), None, "retries answer");
    }
}
