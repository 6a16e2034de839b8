//! What every serving process shares: reflection, health reporting, and the stop signal.

use std::future::Future;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Server reflection over every Tally proto and the health proto.
pub fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tally_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps `grpc.health.v1` in step with `healthy()` for `services` (and the server as a whole,
/// ""): SERVING or NOT_SERVING, checked every second.
pub async fn report_health<F, Fut>(reporter: HealthReporter, services: &'static [&'static str], healthy: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        set_health(&reporter, services, healthy().await).await;
    }
}

pub async fn set_health(reporter: &HealthReporter, services: &[&str], healthy: bool) {
    let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(*service, status).await;
    }
}

/// How long a stopping server waits for open calls and connections to finish.
pub const DRAIN_TIMEOUT_MS: u64 = 5_000;

/// A tonic server builder with keepalives: a peer that vanished (killed, partitioned) is
/// noticed, so its connection does not stay half-open for the kernel's retransmission time.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .tcp_keepalive(Some(Duration::from_secs(30)))
}

/// Waits for a server that was told to stop to drain, at most [`DRAIN_TIMEOUT_MS`]: a
/// connection to a peer that disappeared may never acknowledge the shutdown, and a stop must
/// not wait for it.
pub async fn drain(
    mut server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), &mut server).await {
        Ok(result) => Ok(result??),
        Err(_elapsed) => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT_MS} ms; closing them");
            server.abort();
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what `docker stop` and most supervisors send).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logging to stdout at `info` (openraft at `warn`), or as `RUST_LOG` says.
pub fn init_logging() {
    tracing_subscriber::fmt()
        // Colour codes only on a terminal, so that log files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
}
