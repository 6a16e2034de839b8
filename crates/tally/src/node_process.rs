//! `tally node`: one node of a multi-node cluster. It serves the Raft transport and the node
//! API on one gRPC address, health, and /metrics; it rejoins its groups from its data folder
//! on restart, resolves cross-shard transfers on the shards it leads, and drops replicas it
//! was moved off while it was down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tally_gateway::coalesce::CALLS_IN_FLIGHT_PER_SHARD_DEFAULT;
use tally_node::api::{NodeApiService, NodeRequest, NodeResponse};
use tally_node::{Node, NodeConfig, RaftSwitches, StatusDetail};
use tally_raft::group::group_name;
use tally_raft::transport::RaftTransportService;
use tally_raft::{GroupId, META_GROUP_ID};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster_client::ClusterClient;
use crate::remote_backend::RemoteBackend;
use crate::serve::{reflection_builder, report_health, set_health};

/// How often a node compares the replicas it hosts with the layout.
const DEPARTED_REPLICA_CHECK_INTERVAL_MS: u64 = 5_000;
/// A removed node's meta replica stays quiet this long after each check (renewed every check).
const RETIRED_QUIET_MS: u64 = 60_000;

pub struct NodeProcess {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts the node and serves it. `config.listen_addr` may use port 0.
pub async fn start(config: NodeConfig, node_call_timeout_ms: u64) -> anyhow::Result<NodeProcess> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("listening on {}", config.listen_addr))?;
    let addr = listener.local_addr()?;
    let mut config = config;
    if config.advertise_addr.is_none() {
        config.advertise_addr = Some(addr.to_string());
    }
    let advertised = config.advertised();
    let cluster_token = config.cluster_token.clone();
    if cluster_token.is_none() {
        tracing::warn!(
            "no cluster_token is configured: this node's internal services (node API, Raft \
             transport) answer anyone who reaches {advertised}; set the same cluster_token \
             (--cluster-token, TALLY_CLUSTER_TOKEN) on every node, gateway and `tally cluster init`"
        );
    }
    let node = Node::start(config).await?;
    check_acknowledged_logs(&node, Duration::from_millis(node_call_timeout_ms)).await?;

    // The node reaches other shards (transfer resolver) like a gateway does.
    let cluster =
        ClusterClient::new(vec![advertised], Duration::from_millis(node_call_timeout_ms), cluster_token);
    let mut tasks = vec![cluster.spawn_refresh()];
    let backend =
        Arc::new(RemoteBackend::new(cluster.clone(), node.shard_count(), CALLS_IN_FLIGHT_PER_SHARD_DEFAULT));
    tasks.push(crate::resolver::spawn(node.clone(), backend));
    tasks.push(tokio::spawn(drop_departed_replicas(node.clone(), cluster)));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, HEALTH_SERVICES, node.is_healthy()).await;
    let health_node = node.clone();
    tasks.push(tokio::spawn(async move {
        report_health(health_reporter, HEALTH_SERVICES, || {
            let node = health_node.clone();
            async move { node.is_healthy() }
        })
        .await
    }));

    let router = crate::serve::server_builder()
        .add_service(health_service)
        .add_service(reflection_builder().build_v1()?)
        .add_service(reflection_builder().build_v1alpha()?)
        .add_service(RaftTransportService::guarded(node.config().node_id, node.registry(), node.peers()))
        .add_service(NodeApiService::server(node.clone()));
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(listener, async {
        let _ = shutdown_signal.await;
    }));
    Ok(NodeProcess { addr, node, shutdown: Some(shutdown), server: Some(server), tasks })
}

/// Refuses to serve when a hosted group's log ends before the index its leader recorded as
/// stored on this node: sled came back without writes it had made durable (its files were cut
/// or overwritten while the node was stopped). Such a node must not rejoin: the entries it
/// acknowledged may have counted toward a commit, and openraft's leader stops the group
/// ("follower log reversion") when a follower's log goes back. Checked before the Raft
/// transport serves, by asking every peer in the layout for its view; a peer that does not
/// answer cannot tell, and is skipped (its leader, if any, will have no record either once it
/// restarts).
async fn check_acknowledged_logs(node: &Node, call_timeout: Duration) -> anyhow::Result<()> {
    let node_id = node.config().node_id;
    let Some(layout) = node.meta_state().layout.clone() else { return Ok(()) };
    let own_last_index: BTreeMap<GroupId, u64> = node
        .status(StatusDetail::Raft)
        .await
        .iter()
        .map(|view| (view.group_id, view.last_log_index))
        .collect();
    let peers = ClusterClient::new(Vec::new(), call_timeout, node.config().cluster_token.clone());
    let mut calls = tokio::task::JoinSet::new();
    for peer in layout.nodes.values().filter(|peer| peer.node_id != node_id) {
        let (peers, address) = (peers.clone(), peer.address.clone());
        calls.spawn(async move {
            peers.call_address(&address, &NodeRequest::Status { detail: StatusDetail::Raft }).await
        });
    }
    for answer in calls.join_all().await {
        let Ok(NodeResponse::Status(status)) = answer else { continue };
        for view in status.groups.iter().filter(|view| view.role == "leader") {
            let (Some(matched), Some(last)) =
                (view.matched_index.get(&node_id), own_last_index.get(&view.group_id))
            else {
                continue;
            };
            if matched > last {
                anyhow::bail!(
                    "the data at {} is damaged: it lost Raft log entries it had acknowledged: the leader of {} \
                     (node {}) recorded entries up to index {matched} as stored here, but the log ends at {last}; \
                     the files were cut or overwritten while the node was stopped. Replace the node: a new id and \
                     an empty folder, `tally cluster add-node`, then `tally cluster remove-node --id {node_id}` \
                     (docs/operations.md 7.2)",
                    node.config().data_dir.display(),
                    group_name(view.group_id),
                    status.node_id,
                );
            }
        }
    }
    Ok(())
}

const HEALTH_SERVICES: &[&str] = &["tally.internal.NodeApi", "tally.internal.RaftTransport"];

/// Drops replicas this node was moved off while it was down: the layout places the shard
/// elsewhere and the shard's leader confirms that its membership no longer includes this node.
async fn drop_departed_replicas(node: Arc<Node>, cluster: Arc<ClusterClient>) {
    let node_id = node.config().node_id;
    let mut warned = false;
    let mut interval = tokio::time::interval(Duration::from_millis(DEPARTED_REPLICA_CHECK_INTERVAL_MS));
    loop {
        interval.tick().await;
        let Some(layout) = cluster.layout() else { continue };
        if layout.retired_node_ids.contains(&node_id) {
            // Removed from the cluster and started again: its meta replica must not campaign
            // for ever against the remaining members.
            let quiet = RaftSwitches { heartbeat: true, elect: false, proposals: true };
            if node.set_raft_switches(META_GROUP_ID, quiet, RETIRED_QUIET_MS).is_ok() && !warned {
                tracing::error!(
                    node_id,
                    "this node was removed from the cluster: stop it and delete its data folder"
                );
                warned = true;
            }
        }
        for group_id in node.departure_candidates(&layout) {
            let Some(leader) = crate::cluster_admin::group_leader_view(&cluster, group_id).await else {
                continue;
            };
            if leader.node_id == node_id
                || leader.voters.contains(&node_id)
                || leader.learners.contains(&node_id)
            {
                continue;
            }
            match node.drop_group(group_id, true).await {
                Ok(_) => tracing::info!(
                    group = group_id,
                    leader = leader.node_id,
                    "dropped a replica this node was moved off"
                ),
                Err(error) => tracing::warn!(group = group_id, %error, "could not drop a departed replica"),
            }
        }
    }
}

impl NodeProcess {
    /// Stops serving, shuts every group down and flushes the database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        // Peers keep their Raft streams open for as long as this node serves them: end them,
        // or the drain below would wait for them until its timeout.
        self.node.peers().close_served_streams();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            crate::serve::drain(server).await?;
        }
        self.node.shutdown().await;
        Ok(())
    }
}
