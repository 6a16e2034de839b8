//! Reaching a multi-node cluster: the layout learned from the meta group, one lazily connected
//! channel per node, and calls routed to a group's leader by following not-leader hints.
//!
//! Used by the gateway process (its [`crate::remote_backend::RemoteBackend`]), by the cluster
//! commands of the CLI, and by nodes themselves (the cross-shard transfer resolver calls other
//! shards through it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tally_ledger::meta::{ClusterLayout, MetaState};
use tally_node::api::{MetaView, NodeApiError, NodeClient, NodeRequest, NodeResponse, NodeResult};
use tally_raft::{ClusterToken, GroupId, NodeId, META_GROUP_ID};

/// How long one call to one node may take before the next replica is tried. A leader without
/// a quorum never answers a write, so this bounds how long a caller waits to learn that.
pub const NODE_CALL_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// How often the layout and the meta leader are re-read.
pub const LAYOUT_REFRESH_INTERVAL_MS: u64 = 500;
/// Pause before trying the next replica when no leader is known (an election is under way).
const NO_LEADER_PAUSE_MS: u64 = 100;

#[derive(Default)]
struct Routing {
    meta: Option<MetaView>,
    /// Last node seen leading each group.
    leaders: BTreeMap<GroupId, NodeId>,
}

pub struct ClusterClient {
    seeds: Vec<String>,
    clients: Mutex<BTreeMap<String, NodeClient>>,
    routing: RwLock<Routing>,
    call_timeout: Duration,
    /// Sent with every node API call.
    cluster_token: Option<ClusterToken>,
    /// Submissions and reads on one stream per node (see [`NodeClient`]); set before first use.
    node_calls_on_streams: std::sync::atomic::AtomicBool,
    meta_cache: RwLock<Arc<MetaState>>,
    /// When an on-demand refresh last started (see [`ClusterClient::refresh_at_most_every`]).
    last_demand_refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl ClusterClient {
    /// A client that knows the cluster through `seeds` (node addresses, host:port) until it has
    /// read the layout, and sends `cluster_token` with every call.
    pub fn new(
        seeds: Vec<String>,
        call_timeout: Duration,
        cluster_token: Option<ClusterToken>,
    ) -> Arc<ClusterClient> {
        Arc::new(ClusterClient {
            seeds,
            clients: Mutex::new(BTreeMap::new()),
            routing: RwLock::new(Routing::default()),
            call_timeout,
            cluster_token,
            node_calls_on_streams: std::sync::atomic::AtomicBool::new(true),
            meta_cache: RwLock::new(Arc::new(MetaState::default())),
            last_demand_refresh: tokio::sync::Mutex::new(None),
        })
    }

    /// Chooses how submissions and reads travel to nodes: on one stream per node (true, the
    /// default) or as one unary call each. For clients made after the call.
    pub fn set_node_calls_on_streams(&self, on_streams: bool) {
        self.node_calls_on_streams.store(on_streams, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    pub fn client(&self, address: &str) -> Result<NodeClient, NodeApiError> {
        let mut clients = self.clients.lock().expect("clients lock poisoned");
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let on_streams = self.node_calls_on_streams.load(std::sync::atomic::Ordering::Relaxed);
        let client = NodeClient::new(address, self.cluster_token.clone())?.with_calls_on_streams(on_streams);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Calls one node by address.
    pub async fn call_address(&self, address: &str, request: &NodeRequest) -> NodeResult {
        self.client(address)?.call(request, self.call_timeout).await
    }

    /// Calls one node by id (its address from the layout).
    pub async fn call_node(&self, node_id: NodeId, request: &NodeRequest) -> NodeResult {
        let address = self
            .address_of(node_id)
            .ok_or_else(|| NodeApiError::Refused(format!("node {node_id} is not part of the cluster")))?;
        self.call_address(&address, request).await
    }

    pub fn layout(&self) -> Option<ClusterLayout> {
        self.routing
            .read()
            .expect("routing lock poisoned")
            .meta
            .as_ref()
            .and_then(|view| view.meta.layout.clone())
    }

    pub fn meta_view(&self) -> Option<MetaView> {
        self.routing.read().expect("routing lock poisoned").meta.clone()
    }

    /// The latest meta state read (partners, agreements, layout); empty before the first read.
    pub fn meta(&self) -> Arc<MetaState> {
        self.meta_cache.read().expect("meta cache lock poisoned").clone()
    }

    /// A node's address from the layout, or (before the layout is recorded) from the meta
    /// group's membership.
    pub fn address_of(&self, node_id: NodeId) -> Option<String> {
        let routing = self.routing.read().expect("routing lock poisoned");
        let view = routing.meta.as_ref()?;
        view.meta
            .layout
            .as_ref()
            .and_then(|layout| layout.address(node_id))
            .or_else(|| view.member_addresses.get(&node_id).map(String::as_str))
            .map(str::to_string)
    }

    pub fn leader_hint(&self, group_id: GroupId) -> Option<NodeId> {
        self.routing.read().expect("routing lock poisoned").leaders.get(&group_id).copied()
    }

    fn set_leader_hint(&self, group_id: GroupId, node_id: NodeId) {
        self.routing.write().expect("routing lock poisoned").leaders.insert(group_id, node_id);
    }

    /// Every address worth asking about the meta state: the meta leader first, then the
    /// layout's nodes, then the seeds.
    fn meta_candidates(&self) -> Vec<String> {
        let mut addresses = Vec::new();
        if let Some(address) = self.leader_hint(META_GROUP_ID).and_then(|leader| self.address_of(leader)) {
            addresses.push(address);
        }
        if let Some(layout) = self.layout() {
            addresses.extend(layout.nodes.values().map(|node| node.address.clone()));
        }
        addresses.extend(self.seeds.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        addresses.retain(|address| seen.insert(address.clone()));
        addresses
    }

    /// Reads the meta state from the first node that answers and keeps it if it is at least as
    /// new as the one held. Returns whether a node answered.
    pub async fn refresh(&self) -> bool {
        for address in self.meta_candidates() {
            let Ok(NodeResponse::Meta(view)) = self.call_address(&address, &NodeRequest::Meta).await else {
                continue;
            };
            let mut routing = self.routing.write().expect("routing lock poisoned");
            let newer = routing.meta.as_ref().is_none_or(|held| view.applied_index >= held.applied_index);
            if let Some(leader) = view.leader_node_id {
                routing.leaders.insert(META_GROUP_ID, leader);
            }
            if newer {
                *self.meta_cache.write().expect("meta cache lock poisoned") = Arc::new(view.meta.clone());
                routing.meta = Some(*view);
            }
            return true;
        }
        false
    }

    /// Refreshes now unless an on-demand refresh started less than `interval` ago; concurrent
    /// callers wait for the one refresh in progress. True when the state was read again after
    /// this call began.
    pub async fn refresh_at_most_every(&self, interval: Duration) -> bool {
        let asked = tokio::time::Instant::now();
        let mut last = self.last_demand_refresh.lock().await;
        // A refresh that started after this call asked has finished: its state is fresh enough.
        if last.is_some_and(|started| started >= asked) {
            return true;
        }
        let now = tokio::time::Instant::now();
        if last.is_some_and(|started| now.duration_since(started) < interval) {
            return false;
        }
        *last = Some(now);
        self.refresh().await
    }

    /// Refreshes the layout every [`LAYOUT_REFRESH_INTERVAL_MS`] until the client is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let client = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(LAYOUT_REFRESH_INTERVAL_MS));
            loop {
                interval.tick().await;
                let Some(client) = client.upgrade() else { return };
                if !client.refresh().await {
                    tracing::warn!("no node answered a layout read");
                }
            }
        })
    }

    /// Waits until a layout has been read, or `timeout` passed.
    pub async fn wait_for_layout(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.refresh().await && self.layout().is_some() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Nodes that hold a replica of the group, the last known leader first.
    pub fn replicas_of(&self, group_id: GroupId) -> Vec<NodeId> {
        let routing = self.routing.read().expect("routing lock poisoned");
        let Some(view) = routing.meta.as_ref() else { return Vec::new() };
        let mut replicas: Vec<NodeId> = if group_id == META_GROUP_ID {
            view.voters.clone()
        } else {
            view.meta
                .layout
                .as_ref()
                .and_then(|layout| layout.shards.get(group_id as usize - 1))
                .map(|placement| placement.replicas.clone())
                .unwrap_or_default()
        };
        if let Some(leader) = routing.leaders.get(&group_id) {
            if let Some(position) = replicas.iter().position(|id| id == leader) {
                replicas.remove(position);
            }
            replicas.insert(0, *leader);
        }
        replicas
    }

    /// Sends `request` to the group's leader: starts with the last known leader, follows
    /// not-leader hints, and tries the other replicas when a node cannot be reached or knows no
    /// leader. `retry_unreachable`: whether a call whose answer was lost may be sent again
    /// elsewhere (true for anything carrying an idempotency key, and reads).
    pub async fn call_group(
        &self,
        group_id: GroupId,
        request: &NodeRequest,
        retry_unreachable: bool,
    ) -> NodeResult {
        let replicas = self.replicas_of(group_id);
        let mut queue: Vec<(NodeId, Option<String>)> = replicas.iter().map(|id| (*id, None)).collect();
        if queue.is_empty() && group_id == META_GROUP_ID {
            // Before the first layout read: the seeds.
            queue = self.seeds.iter().map(|address| (0, Some(address.clone()))).collect();
        }
        let hops_max = queue.len() * 2 + 2;
        let mut last_error = NodeApiError::Unavailable(format!(
            "{}: no replica is known",
            tally_raft::group::group_name(group_id)
        ));
        let mut hops = 0;
        let mut next = 0;
        while hops < hops_max && next < queue.len() {
            hops += 1;
            let (node_id, address) = queue[next].clone();
            next += 1;
            let Some(address) = address.or_else(|| self.address_of(node_id)) else { continue };
            match self.call_address(&address, request).await {
                Ok(response) => {
                    if node_id != 0 {
                        self.set_leader_hint(group_id, node_id);
                    }
                    return Ok(response);
                }
                Err(NodeApiError::NotLeader { leader: Some((leader_id, leader_address)), .. }) => {
                    self.set_leader_hint(group_id, leader_id);
                    last_error =
                        NodeApiError::Unavailable(format!("node {node_id} pointed to node {leader_id}"));
                    // Ask the hinted leader next.
                    queue.insert(next, (leader_id, Some(leader_address)));
                }
                Err(NodeApiError::NotLeader { .. }) => {
                    last_error = NodeApiError::Unavailable(format!(
                        "{} is electing a leader",
                        tally_raft::group::group_name(group_id)
                    ));
                    tokio::time::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
                }
                Err(error @ NodeApiError::Transport(_)) if !retry_unreachable => return Err(error),
                Err(error @ (NodeApiError::Transport(_) | NodeApiError::Unavailable(_))) => {
                    last_error = error
                }
                Err(error) => return Err(error),
            }
        }
        Err(match last_error {
            NodeApiError::Transport(detail) | NodeApiError::Unavailable(detail) => {
                NodeApiError::Unavailable(format!(
                    "{} has no reachable leader with a quorum ({detail})",
                    tally_raft::group::group_name(group_id)
                ))
            }
            other => other,
        })
    }
}
