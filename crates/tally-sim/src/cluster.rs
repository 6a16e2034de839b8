//! N nodes x S shards of real Tally groups (tally-raft on tally-store sled) in one process,
//! joined by the simulated network, with crashes and restarts.
//!
//! A node here is what `tally-node` keeps of it for the shard groups: one sled Db
//! ([`NodeStore`]) in its own data folder and one [`Group`] per shard. A crash shuts its Raft
//! instances down, drops its groups and its Db (everything in memory is gone), and takes it off
//! the network; a restart opens the same folder again, exactly as a restarted process does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tally_raft::{shard_group_id, Group, GroupId, NodeId, ProposerConfig, RaftTuning, TallyNode};
use tally_store::{NodeStore, StoreError};

use crate::net::{SimNet, SimNetworkFactory};

/// Raft timings of the simulation: short, so that a run of a few seconds sees many elections.
pub fn sim_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        install_snapshot_timeout_ms: 1_000,
        max_payload_entries: 32,
        // Small, so that restarted nodes catch up through snapshots too.
        snapshot_logs_since_last: 8,
        snapshot_log_bytes: 1 << 40,
        logs_kept_after_snapshot: 2,
        append_entries_on_streams: true,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("node {node_id}: storage: {source}")]
    Store { node_id: NodeId, source: StoreError },
    #[error("node {node_id}: group {group_id}: {reason}")]
    Group { node_id: NodeId, group_id: GroupId, reason: String },
    #[error("no leader for shard {shard} within {waited_ms} ms")]
    NoLeader { shard: u32, waited_ms: u64 },
}

struct SimNode {
    /// Held so that the Db stays open while the node is up; dropped by a crash.
    _store: NodeStore,
    groups: BTreeMap<GroupId, Arc<Group>>,
}

pub struct SimCluster {
    pub net: Arc<SimNet>,
    pub node_ids: Vec<NodeId>,
    pub shard_count: u32,
    data_dir: PathBuf,
    tuning: RaftTuning,
    /// Nodes that are up.
    nodes: Mutex<BTreeMap<NodeId, SimNode>>,
    /// Serialises crashes and restarts.
    lifecycle: tokio::sync::Mutex<()>,
}

fn node_info(node_id: NodeId) -> TallyNode {
    TallyNode { raft_addr: format!("sim-node-{node_id}"), api_addr: format!("sim-node-{node_id}") }
}

impl SimCluster {
    /// Starts every node and makes every shard's group out of all of them; shard `k` is
    /// initialized on node `k % n`, so leaders start spread.
    pub async fn start(
        net: Arc<SimNet>,
        data_dir: PathBuf,
        node_count: u64,
        shard_count: u32,
    ) -> Result<Arc<SimCluster>, ClusterError> {
        let node_ids: Vec<NodeId> = (1..=node_count).collect();
        let cluster = Arc::new(SimCluster {
            net,
            node_ids: node_ids.clone(),
            shard_count,
            data_dir,
            tuning: sim_tuning(),
            nodes: Mutex::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        });
        for &node_id in &node_ids {
            cluster.boot(node_id).await?;
        }
        let members: BTreeMap<NodeId, TallyNode> = node_ids.iter().map(|&id| (id, node_info(id))).collect();
        for shard in 0..shard_count {
            let node_id = node_ids[shard as usize % node_ids.len()];
            let group = cluster.group(node_id, shard_group_id(shard)).expect("just started");
            group.raft.initialize(members.clone()).await.map_err(|error| ClusterError::Group {
                node_id,
                group_id: shard_group_id(shard),
                reason: error.to_string(),
            })?;
        }
        for shard in 0..shard_count {
            cluster.wait_leader(shard, Duration::from_secs(10)).await?;
        }
        Ok(cluster)
    }

    fn node_dir(&self, node_id: NodeId) -> PathBuf {
        self.data_dir.join(format!("node-{node_id}"))
    }

    /// Opens the node's Db (waiting while the crashed instance still holds sled's file lock)
    /// and starts its shard groups on the simulated network.
    async fn boot(&self, node_id: NodeId) -> Result<(), ClusterError> {
        let path = self.node_dir(node_id);
        let deadline = Instant::now() + Duration::from_secs(20);
        let store = loop {
            // On a blocking thread: an open waits for sled's lock (`tally_store::LOCK_WAIT_MS`),
            // and the crashed instance's tasks, which must run to let it go, need the workers.
            let opening = path.clone();
            let opened = tokio::task::spawn_blocking(move || NodeStore::open(&opening))
                .await
                .expect("the store's open panicked");
            match opened {
                Ok(store) => break store,
                Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(source) => return Err(ClusterError::Store { node_id, source }),
            }
        };
        let mut groups = BTreeMap::new();
        for shard in 0..self.shard_count {
            let group_id = shard_group_id(shard);
            let network = SimNetworkFactory { net: Arc::clone(&self.net), from: node_id, group_id };
            let group = Group::start_with_network(
                node_id,
                group_id,
                &store,
                network,
                &self.tuning,
                ProposerConfig::default(),
            )
            .await
            .map_err(|error| ClusterError::Group {
                node_id,
                group_id,
                reason: error.to_string(),
            })?;
            groups.insert(group_id, Arc::new(group));
        }
        for (group_id, group) in &groups {
            self.net.register(node_id, *group_id, group.raft.clone());
        }
        self.nodes.lock().expect("nodes lock").insert(node_id, SimNode { _store: store, groups });
        Ok(())
    }

    /// The node loses everything in memory: its Rafts stop (writes in flight on it fail or
    /// never answer), its groups and its Db are dropped. Returns false if it was already down.
    pub async fn crash(&self, node_id: NodeId) -> bool {
        let _lifecycle = self.lifecycle.lock().await;
        let Some(node) = self.nodes.lock().expect("nodes lock").remove(&node_id) else {
            return false;
        };
        self.net.unregister_node(node_id);
        for group in node.groups.values() {
            let shutdown = tokio::time::timeout(Duration::from_secs(5), group.raft.shutdown()).await;
            if !matches!(shutdown, Ok(Ok(()))) {
                tracing::warn!(node_id, group = group.group_id, "Raft did not shut down cleanly");
            }
        }
        drop(node);
        true
    }

    /// Starts a crashed node again from its data folder. Returns false if it was up.
    pub async fn restart(&self, node_id: NodeId) -> Result<bool, ClusterError> {
        let _lifecycle = self.lifecycle.lock().await;
        if self.is_up(node_id) {
            return Ok(false);
        }
        self.boot(node_id).await?;
        Ok(true)
    }

    pub fn is_up(&self, node_id: NodeId) -> bool {
        self.nodes.lock().expect("nodes lock").contains_key(&node_id)
    }

    pub fn down_nodes(&self) -> BTreeSet<NodeId> {
        let nodes = self.nodes.lock().expect("nodes lock");
        self.node_ids.iter().copied().filter(|id| !nodes.contains_key(id)).collect()
    }

    pub fn group(&self, node_id: NodeId, group_id: GroupId) -> Option<Arc<Group>> {
        self.nodes.lock().expect("nodes lock").get(&node_id)?.groups.get(&group_id).cloned()
    }

    /// Every up replica of a shard, by node.
    pub fn replicas(&self, shard: u32) -> Vec<(NodeId, Arc<Group>)> {
        let group_id = shard_group_id(shard);
        let nodes = self.nodes.lock().expect("nodes lock");
        nodes
            .iter()
            .filter_map(|(node_id, node)| Some((*node_id, node.groups.get(&group_id)?.clone())))
            .collect()
    }

    /// The replica that believes it leads the shard in the highest term (a partitioned old
    /// leader may still believe it too; its writes then time out, as a gateway's would).
    pub fn leader(&self, shard: u32) -> Option<(NodeId, Arc<Group>)> {
        self.replicas(shard)
            .into_iter()
            .filter_map(|(node_id, group)| {
                let metrics = group.raft.metrics().borrow().clone();
                (metrics.state == ServerState::Leader).then_some((metrics.current_term, node_id, group))
            })
            .max_by_key(|(term, node_id, _)| (*term, *node_id))
            .map(|(_, node_id, group)| (node_id, group))
    }

    pub async fn wait_leader(
        &self,
        shard: u32,
        timeout: Duration,
    ) -> Result<(NodeId, Arc<Group>), ClusterError> {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.leader(shard) {
                return Ok(leader);
            }
            if started.elapsed() > timeout {
                let waited_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                return Err(ClusterError::NoLeader { shard, waited_ms });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every node (end of a run), so the data folder can be removed.
    pub async fn stop_all(&self) {
        for node_id in self.node_ids.clone() {
            self.crash(node_id).await;
        }
    }
}
