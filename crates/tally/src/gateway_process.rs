//! `tally gateway`: the stateless partner and admin API in front of a multi-node cluster. It
//! learns the layout from any node, follows its changes, and routes each call to its shard's
//! leader. Several gateways can serve the same cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tally_gateway::Gateway;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster_client::ClusterClient;
use crate::remote_backend::RemoteBackend;
use crate::serve::{reflection_builder, report_health, set_health};
use crate::settings::TallyConfig;

/// How long the gateway waits at start for a node to tell it the layout.
pub const LAYOUT_WAIT_MS: u64 = 120_000;

pub struct GatewayProcess {
    pub addr: SocketAddr,
    pub cluster: Arc<ClusterClient>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tasks: Vec<JoinHandle<()>>,
}

const HEALTH_SERVICES: &[&str] = &["tally.v1.Ledger", "tally.v1.Admin"];

/// Waits for the layout (the cluster must be initialized), then serves.
pub async fn start(settings: &TallyConfig) -> anyhow::Result<GatewayProcess> {
    let listener = TcpListener::bind(settings.gateway.listen_addr)
        .await
        .with_context(|| format!("listening on {}", settings.gateway.listen_addr))?;
    let addr = listener.local_addr()?;
    let cluster = ClusterClient::new(
        settings.gateway.node_addresses.clone(),
        Duration::from_millis(settings.gateway.node_call_timeout_ms),
        settings.gateway.cluster_token.clone(),
    );
    cluster.set_node_calls_on_streams(settings.gateway.node_calls_on_streams);
    tracing::info!(nodes = ?settings.gateway.node_addresses, "waiting for the cluster layout");
    if !cluster.wait_for_layout(Duration::from_millis(LAYOUT_WAIT_MS)).await {
        anyhow::bail!(
            "no node among {:?} told the cluster layout within {} s; is the cluster initialized (`tally cluster init`)?",
            settings.gateway.node_addresses,
            LAYOUT_WAIT_MS / 1000
        );
    }
    let layout = cluster.layout().expect("waited for the layout");
    let mut tasks = vec![cluster.spawn_refresh()];
    let backend = Arc::new(RemoteBackend::new(
        cluster.clone(),
        layout.shard_count,
        settings.gateway.calls_in_flight_per_shard,
    ));
    let gateway = Gateway::new(backend, settings.gateway_config());
    tally_gateway::describe_metrics();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, HEALTH_SERVICES, true).await;
    let health_cluster = cluster.clone();
    tasks.push(tokio::spawn(async move {
        // Serving while some node answers layout reads; each call still reports its own shard's trouble.
        report_health(health_reporter, HEALTH_SERVICES, || {
            let cluster = health_cluster.clone();
            async move { cluster.refresh().await }
        })
        .await
    }));

    let router = crate::serve::server_builder()
        .add_service(health_service)
        .add_service(reflection_builder().build_v1()?)
        .add_service(reflection_builder().build_v1alpha()?)
        .add_service(gateway.ledger_service())
        .add_service(gateway.admin_service());
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(listener, async {
        let _ = shutdown_signal.await;
    }));
    tracing::info!(%addr, shards = layout.shard_count, nodes = layout.nodes.len(), "gateway serving");
    Ok(GatewayProcess { addr, cluster, shutdown: Some(shutdown), server: Some(server), tasks })
}

impl GatewayProcess {
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
        Ok(())
    }
}
