//! The node's one typed configuration, with documented defaults. Loaded from a TOML file by the
//! `tally` binary, then overridden by flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tally_raft::{ClusterToken, ProposerConfig, RaftTuning};
use tally_store::StoreConfig;

/// Default of [`NodeConfig::retained_keys_per_shard_max`].
pub const RETAINED_KEYS_PER_SHARD_MAX_DEFAULT: usize = 8_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, the same in every group (default 1).
    pub node_id: u64,
    /// Where the node keeps its data (the Raft log, checkpoints, identity file; default
    /// `./tally-data`).
    pub data_dir: PathBuf,
    /// gRPC address for partners, admins and (in one-process mode) Raft (default 127.0.0.1:50051).
    pub listen_addr: SocketAddr,
    /// The address other nodes and gateways use to reach `listen_addr` (default: the same).
    pub advertise_addr: Option<String>,
    /// Prometheus `/metrics` over HTTP (default 127.0.0.1:9100); `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Number of shards, fixed when the node's data is created (default 8).
    pub shard_count: u32,
    /// How long idempotency keys are kept, in log time (default 7 days).
    pub idempotency_retention_ms: u64,
    /// Proposals (a single call, or one shard's part of a SubmitBatch) waiting for a batch per
    /// shard, before callers get RESOURCE_EXHAUSTED.
    pub queued_proposals_max: usize,
    /// Raft entries proposed and not yet applied, per shard.
    pub inflight_entries_max: usize,
    /// Idempotency keys a shard may retain (each for `idempotency_retention_ms`) before writes
    /// with new keys get RESOURCE_EXHAUSTED, so that a flood of writes meets a clear refusal
    /// instead of exhausting memory (default 8,000,000; retries of retained keys still answer).
    pub retained_keys_per_shard_max: usize,
    /// How long one sled flush may go without returning before the node aborts, so that it is
    /// restarted instead of hanging with its shard leaderships (default 30000, at least 1000;
    /// only time the process was running counts). See `tally_store::StoreConfig`.
    pub flush_stall_abort_ms: u64,
    /// Memory for sled's page cache, which holds the state-machine checkpoints (default 32 MiB).
    pub sled_cache_bytes: u64,
    /// The secret every internal call (node API, Raft transport) must carry; the same for every
    /// node, gateway and CLI of the cluster, 16 to 256 visible ASCII characters. Default none:
    /// the internal services answer anyone who reaches `listen_addr`, and the node says so in
    /// its log. See `tally_raft::cluster_token`.
    pub cluster_token: Option<ClusterToken>,
    pub raft: RaftTuning,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let proposer = ProposerConfig::default();
        Self {
            node_id: 1,
            data_dir: PathBuf::from("tally-data"),
            listen_addr: "127.0.0.1:50051".parse().expect("valid default address"),
            advertise_addr: None,
            metrics_addr: Some("127.0.0.1:9100".parse().expect("valid default address")),
            shard_count: 8,
            idempotency_retention_ms: tally_ledger::limits::IDEMPOTENCY_RETENTION_MS_DEFAULT,
            queued_proposals_max: proposer.queued_proposals_max,
            inflight_entries_max: proposer.inflight_entries_max,
            retained_keys_per_shard_max: RETAINED_KEYS_PER_SHARD_MAX_DEFAULT,
            flush_stall_abort_ms: tally_store::FLUSH_STALL_ABORT_MS_DEFAULT,
            sled_cache_bytes: tally_store::SLED_CACHE_BYTES_DEFAULT,
            cluster_token: None,
            raft: RaftTuning::default(),
        }
    }
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be at least 1".into());
        }
        if !(1..=256).contains(&self.shard_count) {
            return Err(format!("shard_count must be 1 to 256, got {}", self.shard_count));
        }
        if self.idempotency_retention_ms < tally_ledger::limits::IDEMPOTENCY_RETENTION_MS_MIN {
            return Err(format!(
                "idempotency_retention_ms must be at least {} (one hour)",
                tally_ledger::limits::IDEMPOTENCY_RETENTION_MS_MIN
            ));
        }
        if self.queued_proposals_max == 0
            || self.inflight_entries_max == 0
            || self.retained_keys_per_shard_max == 0
        {
            return Err(
                "queued_proposals_max, inflight_entries_max and retained_keys_per_shard_max must be at least 1"
                    .into(),
            );
        }
        self.store_config().validate()?;
        self.raft.openraft_config(0).map(|_| ()).map_err(|error| error.to_string())
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            flush_stall_abort_ms: self.flush_stall_abort_ms,
            sled_cache_bytes: self.sled_cache_bytes,
        }
    }

    pub fn proposer_config(&self) -> ProposerConfig {
        ProposerConfig {
            queued_proposals_max: self.queued_proposals_max,
            inflight_entries_max: self.inflight_entries_max,
            idempotency_retention_ms: self.idempotency_retention_ms,
        }
    }

    pub fn advertised(&self) -> String {
        self.advertise_addr.clone().unwrap_or_else(|| self.listen_addr.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flush_stall_bound_defaults_to_the_store_default_and_reaches_the_store() {
        let defaults = NodeConfig::default();
        assert_eq!(defaults.flush_stall_abort_ms, tally_store::FLUSH_STALL_ABORT_MS_DEFAULT);
        assert_eq!(defaults.validate(), Ok(()));
        let config = NodeConfig { flush_stall_abort_ms: 45_000, ..NodeConfig::default() };
        assert_eq!(
            config.store_config(),
            StoreConfig {
                flush_stall_abort_ms: 45_000,
                sled_cache_bytes: tally_store::SLED_CACHE_BYTES_DEFAULT
            }
        );
    }

    #[test]
    fn a_flush_stall_bound_below_the_minimum_is_refused() {
        let config = NodeConfig {
            flush_stall_abort_ms: tally_store::FLUSH_STALL_ABORT_MS_MIN - 1,
            ..NodeConfig::default()
        };
        let problem = config.validate().unwrap_err();
        assert!(problem.contains("flush_stall_abort_ms"), "{problem}");
    }
}
