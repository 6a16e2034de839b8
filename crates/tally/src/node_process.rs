//! `tally node`: one node of a multi-node cluster. It serves the Raft transport and the node
//! API on one gRPC address, health, and /metrics; it rejoins its groups from its data folder
//! on restart, resolves cross-shard transfers on the shards it leads, and drops replicas it
//! was moved off while it was down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tally_node::api::NodeApiService;
use tally_node::{Node, NodeConfig, RaftSwitches};
use tally_raft::transport::RaftTransportService;
use tally_raft::META_GROUP_ID;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

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
    let node = Node::start(config).await?;

    // The node reaches other shards (transfer resolver) like a gateway does.
    let cluster = ClusterClient::new(vec![advertised], Duration::from_millis(node_call_timeout_ms));
    let mut tasks = vec![cluster.spawn_refresh()];
    let backend = Arc::new(RemoteBackend::new(cluster.clone(), node.shard_count()));
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
        .add_service(RaftTransportService::server(node.config().node_id, node.registry()))
        .add_service(NodeApiService::server(node.clone()));
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
        let _ = shutdown_signal.await;
    }));
    Ok(NodeProcess { addr, node, shutdown: Some(shutdown), server: Some(server), tasks })
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
