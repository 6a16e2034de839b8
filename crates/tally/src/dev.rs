//! The one-process dev cluster: one node holding the meta group and every shard, plus the
//! gateway, the admin API, health and reflection, all on one gRPC address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_gateway::{Gateway, GatewayConfig};
use tally_node::{Node, NodeConfig};
use tally_raft::transport::RaftTransportService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::local_backend::LocalBackend;

/// A running dev cluster. Dropping it does not stop it; call [`DevCluster::stop`].
pub struct DevCluster {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    health: JoinHandle<()>,
}

/// Starts the node, makes it the sole voter of every group, waits for leaders, then serves.
/// `config.listen_addr` may use port 0; the bound address is in [`DevCluster::addr`].
pub async fn start(config: NodeConfig, gateway_config: GatewayConfig) -> anyhow::Result<DevCluster> {
    let listener = TcpListener::bind(config.listen_addr).await?;
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
    let gateway = Gateway::new(Arc::new(LocalBackend::new(node.clone())), gateway_config);
    tally_gateway::describe_metrics();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    update_health(&node, &health_reporter).await;
    let health = tokio::spawn(report_health(node.clone(), health_reporter));
    // Both reflection versions: grpcurl and many other tools still ask for v1alpha.
    let reflection = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(gateway.ledger_service())
        .add_service(gateway.admin_service())
        .add_service(RaftTransportService::server(node.config().node_id, node.registry()));
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let incoming = TcpListenerStream::new(listener);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = shutdown_signal.await;
    }));
    Ok(DevCluster { addr, node, shutdown: Some(shutdown), server: Some(server), health })
}

/// Server reflection over every Tally proto and the health proto.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tally_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps `grpc.health.v1` in step with the node: SERVING while every group runs and has a
/// leader, NOT_SERVING otherwise (checked every second).
async fn report_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        update_health(&node, &reporter).await;
    }
}

async fn update_health(node: &Node, reporter: &tonic_health::server::HealthReporter) {
    let status = if node.is_healthy() {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in ["", "tally.v1.Ledger", "tally.v1.Admin"] {
        reporter.set_service_status(service, status).await;
    }
}

impl DevCluster {
    /// Stops serving, shuts every group down and flushes the database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.health.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await??;
        }
        self.node.shutdown().await;
        Ok(())
    }
}
