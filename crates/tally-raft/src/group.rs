//! A group replica hosted by a node: its Raft handle, its state, and (for shards) its proposer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::network::RaftNetworkFactory;
use openraft::{Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tally_store::{NodeStore, PurgeFloor, StoreError};

use crate::network::{GroupNetworkFactory, PeerPool};
use crate::proposer::{Proposer, ProposerConfig};
use crate::state_machine::{GroupShared, GroupStateMachine};
use crate::types::{GroupId, NodeId, Raft, TallyRaft, META_GROUP_ID};

/// Raft timing and sizes, shared by every group of a node. Defaults suit loopback and LAN
/// with sled fsyncs of up to a few ms (see docs/architecture.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    /// Also openraft's AppendEntries RPC timeout, so it must exceed a follower's slowest fsync.
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    /// Also the leader lease.
    pub election_timeout_max_ms: u64,
    pub install_snapshot_timeout_ms: u64,
    /// Entries per AppendEntries; each entry holds up to 4,096 commands.
    pub max_payload_entries: u64,
    /// Build a snapshot after this many log entries since the last one...
    pub snapshot_logs_since_last: u64,
    /// ...or after this many bytes of log appended since the last one, whichever comes first
    /// (an entry holds anything from one command to 4,096, so a count alone bounds nothing).
    pub snapshot_log_bytes: u64,
    /// Log entries kept after a snapshot, so slightly lagging followers need no snapshot.
    pub logs_kept_after_snapshot: u64,
    /// AppendEntries of every group travel on one stream per peer node, the messages that queue
    /// together in one frame (default true); false: one unary call per message, as Tally
    /// before 2026-12 did. A peer without streams (an older version) gets unary calls either way.
    pub append_entries_on_streams: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            install_snapshot_timeout_ms: 10_000,
            max_payload_entries: 64,
            snapshot_logs_since_last: 200_000,
            snapshot_log_bytes: 256 * 1024 * 1024,
            logs_kept_after_snapshot: 1_000,
            append_entries_on_streams: true,
        }
    }
}

impl RaftTuning {
    pub fn openraft_config(&self, group_id: GroupId) -> Result<Config, GroupError> {
        let config = Config {
            cluster_name: group_name(group_id),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            purge_batch_size: 256,
            // Followers further behind than this get a snapshot instead of log entries.
            replication_lag_threshold: self.snapshot_logs_since_last.saturating_mul(2),
            ..Default::default()
        };
        config.validate().map_err(|error| GroupError::Config(error.to_string()))
    }
}

pub fn group_name(group_id: GroupId) -> String {
    if group_id == META_GROUP_ID {
        "meta".to_string()
    } else {
        format!("shard-{}", group_id - 1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("openraft failed to start the group: {0}")]
    Start(String),
}

pub struct Group {
    pub group_id: GroupId,
    pub raft: Raft,
    pub shared: Arc<GroupShared>,
    /// How far the group's log may be purged (raised by durable checkpoints).
    pub purge_floor: PurgeFloor,
    /// Shards only; meta changes are proposed one by one (they are rare).
    pub proposer: Option<Proposer>,
    /// Ends the group's periodic tasks (checkpoints, the log-size snapshot trigger) when sent
    /// or dropped.
    periodic_tasks_stop: tokio::sync::watch::Sender<bool>,
}

impl Group {
    pub async fn start(
        node_id: NodeId,
        group_id: GroupId,
        store: &NodeStore,
        peers: Arc<PeerPool>,
        tuning: &RaftTuning,
        proposer_config: ProposerConfig,
    ) -> Result<Group, GroupError> {
        let network = GroupNetworkFactory { group_id, peers };
        Self::start_with_network(node_id, group_id, store, network, tuning, proposer_config).await
    }

    /// [`Group::start`] with any Raft network, for example the fault-injecting in-memory
    /// transport of the simulation (crates/tally-sim). Everything else is the same.
    pub async fn start_with_network<N>(
        node_id: NodeId,
        group_id: GroupId,
        store: &NodeStore,
        network: N,
        tuning: &RaftTuning,
        proposer_config: ProposerConfig,
    ) -> Result<Group, GroupError>
    where
        N: RaftNetworkFactory<TallyRaft>,
    {
        let config = Arc::new(tuning.openraft_config(group_id)?);
        let purge_floor = PurgeFloor::new();
        let log_store = store.log_store::<TallyRaft>(group_id)?.with_purge_floor(purge_floor.clone());
        let appended_bytes = log_store.appended_bytes();
        let state_machine = GroupStateMachine::open(group_id, store.state_tree(group_id)?)?
            .with_purge_floor(store.clone(), purge_floor.clone());
        let shared = state_machine.shared();
        // What the tree holds at open is in sled already; durable unless sled lost it, and then
        // the open refuses to start (the flush mark).
        purge_floor.raise_to(shared.read().applied.map_or(0, |log_id| log_id.index));
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|error| GroupError::Start(error.to_string()))?;
        let (periodic_tasks_stop, stop) = tokio::sync::watch::channel(false);
        let life = || GroupLife { metrics: raft.metrics(), stop: stop.clone() };
        tokio::spawn(snapshot_by_log_size(raft.clone(), life(), appended_bytes, tuning.snapshot_log_bytes));
        tokio::spawn(checkpoint_regularly(life(), shared.clone(), store.clone(), purge_floor.clone()));
        let proposer =
            (group_id != META_GROUP_ID).then(|| Proposer::start(group_id, raft.clone(), proposer_config));
        Ok(Group { group_id, raft, shared, purge_floor, proposer, periodic_tasks_stop })
    }

    /// Stops the group's periodic tasks and its Raft core (the data stays).
    pub async fn shutdown(&self) -> Result<(), tokio::task::JoinError> {
        let _ = self.periodic_tasks_stop.send(true);
        self.raft.shutdown().await
    }
}

/// What a group's periodic task watches to end with the group: the group's stop signal, and
/// its Raft metrics channel (closed when the Raft core stops, for example on a fatal error).
struct GroupLife {
    metrics: tokio::sync::watch::Receiver<crate::types::RaftMetrics>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// openraft's own policy counts entries; this task bounds the log's size too: once
/// `snapshot_log_bytes` have been appended since its last trigger, it asks for a snapshot
/// (after which openraft purges the log behind it). Ends when the group stops.
async fn snapshot_by_log_size(
    raft: Raft,
    mut life: GroupLife,
    appended_bytes: Arc<AtomicU64>,
    snapshot_log_bytes: u64,
) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut bytes_at_last_trigger = 0u64;
    while next_tick(&mut interval, &mut life).await {
        let bytes = appended_bytes.load(Ordering::Relaxed);
        if bytes.saturating_sub(bytes_at_last_trigger) < snapshot_log_bytes {
            continue;
        }
        bytes_at_last_trigger = bytes;
        tracing::info!(group = %raft.config().cluster_name, appended_bytes = bytes, "log size reached: snapshot");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// How often a group makes its state-machine tree durable, which lets its Raft log be purged
/// up to what the tree holds.
pub const CHECKPOINT_INTERVAL_MS: u64 = 1_000;

/// Every [`CHECKPOINT_INTERVAL_MS`], writes a checkpoint of the group's state machine (what
/// changed since the previous one), makes it durable (sled flush and fsync) and then raises the
/// purge floor to the index it holds, so that the log is never purged past what a restart finds
/// in sled. Ends when the group stops (a node's orderly shutdown writes a last checkpoint
/// itself; a crash leaves the log to re-apply).
async fn checkpoint_regularly(
    mut life: GroupLife,
    shared: Arc<GroupShared>,
    store: NodeStore,
    purge_floor: PurgeFloor,
) {
    // Groups start together; spreading their first checkpoint over the interval (by group id)
    // keeps a node's groups from all encoding and flushing in the same moment.
    let period = std::time::Duration::from_millis(CHECKPOINT_INTERVAL_MS);
    let phase_ms = (u64::from(shared.group_id) * 7_919) % CHECKPOINT_INTERVAL_MS;
    let start = tokio::time::Instant::now() + std::time::Duration::from_millis(phase_ms);
    let mut interval = tokio::time::interval_at(start, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while next_tick(&mut interval, &mut life).await {
        if let Err(error) = checkpoint_durably(&shared, &store, &purge_floor).await {
            tracing::warn!(group = shared.group_id, %error, "checkpoint failed; the next one retries");
        }
    }
}

/// Waits for the next tick of `interval`; false once the group has stopped, for the periodic
/// tasks of a group to end with it. The metrics channel is only checked for closing at each
/// tick, not awaited: openraft publishes metrics several times per entry, and a task woken on
/// every change costs a busy node a wake-up per change for nothing.
async fn next_tick(interval: &mut tokio::time::Interval, life: &mut GroupLife) -> bool {
    tokio::select! {
        _ = interval.tick() => life.metrics.has_changed().is_ok() && !*life.stop.borrow(),
        // Sent or dropped: the group is stopping either way.
        _ = life.stop.changed() => false,
    }
}

/// One checkpoint, made durable, then the purge floor raised to it.
pub async fn checkpoint_durably(
    shared: &Arc<GroupShared>,
    store: &NodeStore,
    purge_floor: &PurgeFloor,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let Some(applied_index) = shared.checkpoint().await? else { return Ok(()) };
    store.flush().await?;
    purge_floor.raise_to(applied_index);
    metrics::histogram!("tally_checkpoint_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// The groups a node hosts, by id. Cloned out before any await.
#[derive(Default)]
pub struct GroupRegistry {
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
}

impl GroupRegistry {
    pub fn insert(&self, group: Group) -> Arc<Group> {
        let group = Arc::new(group);
        self.groups.write().expect("registry lock poisoned").insert(group.group_id, group.clone());
        group
    }

    pub fn insert_arc(&self, group: Arc<Group>) {
        self.groups.write().expect("registry lock poisoned").insert(group.group_id, group);
    }

    pub fn remove(&self, group_id: GroupId) -> Option<Arc<Group>> {
        self.groups.write().expect("registry lock poisoned").remove(&group_id)
    }

    pub fn get(&self, group_id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().expect("registry lock poisoned").get(&group_id).cloned()
    }

    /// Forgets every group (after they were shut down), releasing their storage handles.
    pub fn clear(&self) {
        self.groups.write().expect("registry lock poisoned").clear();
    }

    pub fn all(&self) -> Vec<Arc<Group>> {
        self.groups.read().expect("registry lock poisoned").values().cloned().collect()
    }
}
