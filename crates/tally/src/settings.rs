//! Configuration: a TOML file (optional) gives a [`NodeConfig`]; flags and environment
//! variables override it field by field (clap reads `TALLY_*` variables for every flag).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tally_node::NodeConfig;

#[derive(Args, Debug, Clone, Default)]
pub struct NodeFlags {
    /// TOML file with any NodeConfig fields (see cluster/dev.toml); flags override it.
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder for the node's data [default: ./tally-data].
    #[arg(long, env = "TALLY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "TALLY_LISTEN_ADDR")]
    pub listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9100].
    #[arg(long, env = "TALLY_METRICS_ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Do not serve /metrics.
    #[arg(long, env = "TALLY_NO_METRICS")]
    pub no_metrics: bool,
    /// Number of shards for a new data folder [default: 8].
    #[arg(long, env = "TALLY_SHARDS")]
    pub shards: Option<u32>,
    /// Idempotency key retention in milliseconds of log time [default: 7 days].
    #[arg(long, env = "TALLY_IDEMPOTENCY_RETENTION_MS")]
    pub idempotency_retention_ms: Option<u64>,
}

impl NodeFlags {
    pub fn load(&self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        if let Some(data_dir) = &self.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(listen) = self.listen {
            config.listen_addr = listen;
        }
        if let Some(metrics_listen) = self.metrics_listen {
            config.metrics_addr = Some(metrics_listen);
        }
        if self.no_metrics {
            config.metrics_addr = None;
        }
        if let Some(shards) = self.shards {
            config.shard_count = shards;
        }
        if let Some(retention_ms) = self.idempotency_retention_ms {
            config.idempotency_retention_ms = retention_ms;
        }
        config.validate().map_err(|problem| anyhow::anyhow!("invalid configuration: {problem}"))?;
        Ok(config)
    }
}
