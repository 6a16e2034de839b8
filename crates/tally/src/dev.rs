//! The one-process dev cluster: one node holding the meta group and every shard, plus the
//! gateway, the admin API, health and reflection, all on one gRPC address.
//!
//! The node's internal services (`tally.internal.NodeApi`, `tally.internal.RaftTransport`)
//! are not served: they do not authenticate, so on the partner address anyone could submit
//! commands in any partner's name, and nothing needs them here. The gateway reaches the node
//! in process (`LocalBackend`), and a one-node cluster has no peers to send Raft messages to;
//! adding nodes is what `tally node` and `tally gateway` are for (docs/operations.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tally_gateway::{Gateway, GatewayConfig};
use tally_node::{Node, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::local_backend::LocalBackend;
use crate::serve::{reflection_builder, report_health, set_health};

/// A running dev cluster. Dropping it does not stop it; call [`DevCluster::stop`].
pub struct DevCluster {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    health: JoinHandle<()>,
    resolver: JoinHandle<()>,
}

/// Starts the node, makes it the sole voter of every group, waits for leaders, then serves.
/// `config.listen_addr` may use port 0; the bound address is in [`DevCluster::addr`].
pub async fn start(config: NodeConfig, gateway_config: GatewayConfig) -> anyhow::Result<DevCluster> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("listening on {}", config.listen_addr))?;
    let addr = listener.local_addr()?;
    let mut config = config;
    if config.advertise_addr.is_none() {
        config.advertise_addr = Some(addr.to_string());
    }
    let node = Node::start(config).await?;
    node.initialize_alone().await?;
    if !node.wait_until_ready(Duration::from_secs(30)).await {
        anyhow::bail!("the groups did not elect a leader within 30 s");
    }
    let backend = Arc::new(LocalBackend::new(node.clone()));
    let gateway = Gateway::new(backend.clone(), gateway_config);
    tally_gateway::describe_metrics();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, HEALTH_SERVICES, node.is_healthy()).await;
    let health_node = node.clone();
    let health = tokio::spawn(async move {
        report_health(health_reporter, HEALTH_SERVICES, || {
            let node = health_node.clone();
            async move { node.is_healthy() }
        })
        .await
    });
    // Both reflection versions: grpcurl and many other tools still ask for v1alpha.
    let reflection = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;
    let resolver = crate::resolver::spawn(node.clone(), backend.clone());

    let router = crate::serve::server_builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(gateway.ledger_service())
        .add_service(gateway.admin_service());
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(listener, async {
        let _ = shutdown_signal.await;
    }));
    Ok(DevCluster { addr, node, shutdown: Some(shutdown), server: Some(server), health, resolver })
}

/// Services whose health the dev cluster reports (the node's: every group has a leader).
const HEALTH_SERVICES: &[&str] = &["tally.v1.Ledger", "tally.v1.Admin"];

impl DevCluster {
    /// Stops serving, shuts every group down and flushes the database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.health.abort();
        self.resolver.abort();
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
