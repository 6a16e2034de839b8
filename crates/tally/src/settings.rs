//! Configuration: one typed struct, [`TallyConfig`], loaded from an optional TOML file
//! (`[node]` and `[gateway]` sections, every field optional with a documented default); flags
//! and environment variables override it field by field (clap reads a `TALLY_*` variable for
//! every flag). `cluster/dev.toml` shows every field with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use tally_gateway::GatewayConfig;
use tally_node::NodeConfig;
use tally_raft::ClusterToken;

/// Everything a `tally dev` process is configured with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TallyConfig {
    pub node: NodeConfig,
    pub gateway: GatewaySettings,
}

/// The gateway's settings as they appear in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Longest time spent on one request, retries included (default 5000 ms); a smaller
    /// `grpc-timeout` from the caller wins.
    pub request_deadline_ms: u64,
    /// Write operations per second each partner may send (default 0: no limit).
    pub partner_operations_per_second_max: u64,
    /// `tally gateway` only: where partners and operators connect (default 127.0.0.1:50051).
    pub listen_addr: SocketAddr,
    /// `tally gateway` only: nodes (host:port) to learn the cluster layout from; any one that
    /// answers is enough (default: none, so it must be given).
    pub node_addresses: Vec<String>,
    /// `tally gateway` only: Prometheus /metrics (default 127.0.0.1:9200); `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// `tally gateway` and nodes: how long one call to one node may take before the gateway
    /// tries another replica (default 2000 ms).
    pub node_call_timeout_ms: u64,
    /// `tally gateway` only: the cluster token its calls to nodes carry, the nodes'
    /// `cluster_token` (default none).
    pub cluster_token: Option<ClusterToken>,
    /// `tally gateway` and nodes: node calls on their way to one shard's leader at once (default
    /// 1); partner calls that arrive meanwhile queue and travel together in the next one.
    pub calls_in_flight_per_shard: usize,
    /// `tally gateway` only: submissions and balance reads go to each node on one long-lived
    /// stream (default true); false sends one unary call each (as before 2026-12-05).
    pub node_calls_on_streams: bool,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        let defaults = GatewayConfig::default();
        Self {
            request_deadline_ms: defaults.request_deadline_ms,
            partner_operations_per_second_max: defaults.partner_operations_per_second_max,
            listen_addr: "127.0.0.1:50051".parse().expect("valid default address"),
            node_addresses: Vec::new(),
            metrics_addr: Some("127.0.0.1:9200".parse().expect("valid default address")),
            node_call_timeout_ms: crate::cluster_client::NODE_CALL_TIMEOUT_MS_DEFAULT,
            cluster_token: None,
            calls_in_flight_per_shard: tally_gateway::coalesce::CALLS_IN_FLIGHT_PER_SHARD_DEFAULT,
            node_calls_on_streams: true,
        }
    }
}

impl TallyConfig {
    /// The gateway's configuration; the retention comes from the node so both agree.
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            idempotency_retention_ms: self.node.idempotency_retention_ms,
            request_deadline_ms: self.gateway.request_deadline_ms,
            partner_operations_per_second_max: self.gateway.partner_operations_per_second_max,
        }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct NodeFlags {
    /// TOML file with any NodeConfig fields (see cluster/dev.toml); flags override it.
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id, 1 or more, unique in the cluster [default: 1].
    #[arg(long, env = "TALLY_NODE_ID")]
    pub node_id: Option<u64>,
    /// host:port other nodes and gateways use to reach this node [default: the listen address].
    #[arg(long, env = "TALLY_ADVERTISE_ADDR")]
    pub advertise: Option<String>,
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
    /// Number of shards for a new data folder [default: 8; `tally dev`: the folder's own count,
    /// or 1 for a new folder].
    #[arg(long, env = "TALLY_SHARDS")]
    pub shards: Option<u32>,
    /// Idempotency key retention in milliseconds of log time [default: 7 days].
    #[arg(long, env = "TALLY_IDEMPOTENCY_RETENTION_MS")]
    pub idempotency_retention_ms: Option<u64>,
    /// Abort the node when one sled flush has not returned after this many milliseconds, so that
    /// it restarts instead of hanging; at least 1000 [default: 30000].
    #[arg(long, env = "TALLY_FLUSH_STALL_ABORT_MS")]
    pub flush_stall_abort_ms: Option<u64>,
    /// The secret every internal call must carry, the same on every node, gateway and
    /// `tally cluster init`; 16 to 256 visible ASCII characters [default: none].
    #[arg(long, env = "TALLY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// `tally dev` only (its gateway): longest time spent on one request, retries included
    /// [default: 5000].
    #[arg(long, env = "TALLY_REQUEST_DEADLINE_MS")]
    pub request_deadline_ms: Option<u64>,
    /// `tally dev` only (its gateway): write operations per second each partner may send; 0 for
    /// no limit [default: 0].
    #[arg(long, env = "TALLY_PARTNER_OPERATIONS_PER_SECOND_MAX")]
    pub partner_operations_per_second_max: Option<u64>,
}

/// `tally dev`'s shard count for a new data folder. One process on a small machine gains
/// nothing from more shards, and with more of them most requests pay a key claim (a second
/// Raft commit on the key's home shard): 12,585 against 6,033 transfers/s at 64 callers with 1
/// and 8 shards on the 2-core machine of docs/benchmarks.md.
pub const DEV_SHARD_COUNT_DEFAULT: u32 = 1;

impl NodeFlags {
    /// The configuration of `tally node`: file, then flags, over the defaults.
    pub fn load(&self) -> anyhow::Result<TallyConfig> {
        self.load_merged().map(|(config, _)| config)
    }

    /// The configuration of `tally dev`: as [`NodeFlags::load`], except that a shard count
    /// given neither in the file nor as a flag is the data folder's own (so a folder made with
    /// another count still starts), or [`DEV_SHARD_COUNT_DEFAULT`] for a new folder.
    pub fn load_dev(&self) -> anyhow::Result<TallyConfig> {
        let (mut config, shard_count_given) = self.load_merged()?;
        if !shard_count_given {
            config.node.shard_count =
                tally_node::stored_shard_count(&config.node.data_dir).unwrap_or(DEV_SHARD_COUNT_DEFAULT);
        }
        Ok(config)
    }

    /// The merged configuration, and whether the file or a flag gave the shard count.
    fn load_merged(&self) -> anyhow::Result<(TallyConfig, bool)> {
        let (mut file_config, file_fields) = load_file_fields(self.config.as_deref())?;
        let shard_count_given = self.shards.is_some() || file_fields.node_shard_count;
        if let Some(deadline_ms) = self.request_deadline_ms {
            file_config.gateway.request_deadline_ms = deadline_ms;
        }
        if let Some(rate) = self.partner_operations_per_second_max {
            file_config.gateway.partner_operations_per_second_max = rate;
        }
        let config = &mut file_config.node;
        if let Some(node_id) = self.node_id {
            config.node_id = node_id;
        }
        if let Some(advertise) = &self.advertise {
            config.advertise_addr = Some(advertise.clone());
        }
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
        if let Some(stall_abort_ms) = self.flush_stall_abort_ms {
            config.flush_stall_abort_ms = stall_abort_ms;
        }
        if let Some(token) = &self.cluster_token {
            config.cluster_token = Some(parse_cluster_token(token)?);
        }
        config.validate().map_err(|problem| anyhow::anyhow!("invalid configuration: {problem}"))?;
        Ok((file_config, shard_count_given))
    }
}

/// Flags of `tally gateway`; each overrides the same field of the file's `[gateway]` section.
#[derive(Args, Debug, Clone, Default)]
pub struct GatewayFlags {
    /// TOML file with a `[gateway]` section (see cluster/local/gateway.toml); flags override it.
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where partners and operators connect [default: 127.0.0.1:50051].
    #[arg(long, env = "TALLY_GATEWAY_LISTEN_ADDR")]
    pub listen: Option<SocketAddr>,
    /// Node addresses (host:port, comma-separated) to learn the cluster from.
    #[arg(long, env = "TALLY_NODE_ADDRESSES", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9200].
    #[arg(long, env = "TALLY_GATEWAY_METRICS_ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Do not serve /metrics.
    #[arg(long, env = "TALLY_NO_METRICS")]
    pub no_metrics: bool,
    /// Longest time spent on one request, retries included [default: 5000].
    #[arg(long, env = "TALLY_REQUEST_DEADLINE_MS")]
    pub request_deadline_ms: Option<u64>,
    /// Write operations per second each partner may send; 0 for no limit [default: 0].
    #[arg(long, env = "TALLY_PARTNER_OPERATIONS_PER_SECOND_MAX")]
    pub partner_operations_per_second_max: Option<u64>,
    /// The nodes' cluster token, sent with every call to a node [default: none].
    #[arg(long, env = "TALLY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// Node calls on their way to one shard's leader at once; at least 1 [default: 1].
    #[arg(long, env = "TALLY_CALLS_IN_FLIGHT_PER_SHARD")]
    pub calls_in_flight_per_shard: Option<usize>,
    /// Submissions and reads to each node on one stream (true) or one unary call each (false)
    /// [default: true].
    #[arg(long, env = "TALLY_NODE_CALLS_ON_STREAMS")]
    pub node_calls_on_streams: Option<bool>,
}

impl GatewayFlags {
    pub fn load(&self) -> anyhow::Result<TallyConfig> {
        let mut config = load_file(self.config.as_deref())?;
        let gateway = &mut config.gateway;
        if let Some(listen) = self.listen {
            gateway.listen_addr = listen;
        }
        if !self.nodes.is_empty() {
            gateway.node_addresses.clone_from(&self.nodes);
        }
        if let Some(metrics_listen) = self.metrics_listen {
            gateway.metrics_addr = Some(metrics_listen);
        }
        if self.no_metrics {
            gateway.metrics_addr = None;
        }
        if let Some(deadline_ms) = self.request_deadline_ms {
            gateway.request_deadline_ms = deadline_ms;
        }
        if let Some(rate) = self.partner_operations_per_second_max {
            gateway.partner_operations_per_second_max = rate;
        }
        if let Some(token) = &self.cluster_token {
            gateway.cluster_token = Some(parse_cluster_token(token)?);
        }
        if let Some(calls) = self.calls_in_flight_per_shard {
            gateway.calls_in_flight_per_shard = calls;
        }
        if let Some(on_streams) = self.node_calls_on_streams {
            gateway.node_calls_on_streams = on_streams;
        }
        if gateway.calls_in_flight_per_shard == 0 {
            anyhow::bail!("invalid configuration: calls_in_flight_per_shard must be at least 1");
        }
        gateway.node_addresses.retain(|address| !address.trim().is_empty());
        if gateway.node_addresses.is_empty() {
            anyhow::bail!(
                "invalid configuration: the gateway needs node_addresses (or --nodes host:port,...)"
            );
        }
        Ok(config)
    }
}

/// A `cluster_token` given as a flag or a variable (`TALLY_CLUSTER_TOKEN`).
pub(crate) fn parse_cluster_token(text: &str) -> anyhow::Result<ClusterToken> {
    ClusterToken::parse(text).map_err(|problem| anyhow::anyhow!("invalid configuration: {problem}"))
}

fn load_file(path: Option<&std::path::Path>) -> anyhow::Result<TallyConfig> {
    load_file_fields(path).map(|(config, _)| config)
}

/// Which defaults a configuration file overrides, where the value alone cannot tell.
#[derive(Default)]
struct FileFields {
    node_shard_count: bool,
}

fn load_file_fields(path: Option<&std::path::Path>) -> anyhow::Result<(TallyConfig, FileFields)> {
    let Some(path) = path else { return Ok((TallyConfig::default(), FileFields::default())) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: TallyConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let node_shard_count = table
        .get("node")
        .and_then(toml::Value::as_table)
        .is_some_and(|node| node.contains_key("shard_count"));
    Ok((config, FileFields { node_shard_count }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_file_is_exactly_the_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../cluster/dev.toml")).unwrap();
        let parsed: TallyConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed, TallyConfig::default());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "[node]\nshard_count = 4\n[gateway]\nrequest_deadline_ms = 100\n").unwrap();
        let flags = NodeFlags {
            config: Some(path),
            shards: Some(16),
            partner_operations_per_second_max: Some(50),
            ..NodeFlags::default()
        };
        let config = flags.load().unwrap();
        assert_eq!(config.node.shard_count, 16, "the flag wins over the file");
        assert_eq!(config.gateway.request_deadline_ms, 100, "the file wins over the default");
        assert_eq!(config.gateway_config().partner_operations_per_second_max, 50);
    }

    #[test]
    fn dev_uses_one_shard_for_a_new_folder_and_keeps_an_existing_folders_count() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let flags = NodeFlags { data_dir: Some(data_dir.clone()), ..NodeFlags::default() };
        assert_eq!(flags.load_dev().unwrap().node.shard_count, DEV_SHARD_COUNT_DEFAULT);
        assert_eq!(flags.load().unwrap().node.shard_count, 8, "tally node keeps its default");
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::write(
            data_dir.join("node-identity.json"),
            r#"{"node_id": 1, "shard_count": 6, "incarnation": 7}"#,
        )
        .unwrap();
        assert_eq!(flags.load_dev().unwrap().node.shard_count, 6, "the folder's count");
        let flagged = NodeFlags { shards: Some(3), ..flags.clone() };
        assert_eq!(flagged.load_dev().unwrap().node.shard_count, 3, "a flag wins (and the node refuses it)");
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "[node]\nshard_count = 5\n").unwrap();
        let from_file = NodeFlags { config: Some(path.clone()), ..flags.clone() };
        assert_eq!(from_file.load_dev().unwrap().node.shard_count, 5, "the file wins over the folder");
        std::fs::write(&path, "[node]\nnode_id = 1\n").unwrap();
        let silent_file = NodeFlags { config: Some(path), ..flags };
        assert_eq!(silent_file.load_dev().unwrap().node.shard_count, 6, "a file without the field");
    }

    #[test]
    fn the_flush_stall_bound_comes_from_the_file_then_the_flag_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "[node]\nflush_stall_abort_ms = 60000\n").unwrap();
        let from_file = NodeFlags { config: Some(path.clone()), ..NodeFlags::default() }.load().unwrap();
        assert_eq!(from_file.node.flush_stall_abort_ms, 60_000);
        let flags = NodeFlags {
            config: Some(path.clone()),
            flush_stall_abort_ms: Some(45_000),
            ..NodeFlags::default()
        };
        assert_eq!(flags.load().unwrap().node.flush_stall_abort_ms, 45_000, "the flag wins over the file");
        std::fs::write(&path, "[node]\nflush_stall_abort_ms = 10\n").unwrap();
        let error = NodeFlags { config: Some(path), ..NodeFlags::default() }.load().unwrap_err();
        assert!(format!("{error:#}").contains("flush_stall_abort_ms"), "{error:#}");
    }

    #[test]
    fn the_cluster_token_comes_from_the_file_then_the_flag_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(
            &path,
            "[node]\ncluster_token = \"token-from-the-file\"\n[gateway]\nnode_addresses = [\"n1:7100\"]\n\
             cluster_token = \"token-from-the-file\"\n",
        )
        .unwrap();
        let token = |text: &str| Some(ClusterToken::parse(text).unwrap());
        let node = NodeFlags { config: Some(path.clone()), ..NodeFlags::default() }.load().unwrap();
        assert_eq!(node.node.cluster_token, token("token-from-the-file"));
        let gateway = GatewayFlags { config: Some(path.clone()), ..GatewayFlags::default() }.load().unwrap();
        assert_eq!(gateway.gateway.cluster_token, token("token-from-the-file"));
        let flag = Some("token-from-the-flag".to_string());
        let node =
            NodeFlags { config: Some(path.clone()), cluster_token: flag.clone(), ..NodeFlags::default() };
        assert_eq!(node.load().unwrap().node.cluster_token, token("token-from-the-flag"));
        let gateway =
            GatewayFlags { config: Some(path.clone()), cluster_token: flag, ..GatewayFlags::default() };
        assert_eq!(gateway.load().unwrap().gateway.cluster_token, token("token-from-the-flag"));

        let short = NodeFlags { cluster_token: Some("short".into()), ..NodeFlags::default() };
        let error = format!("{:#}", short.load().unwrap_err());
        assert!(error.contains("cluster_token is 5 characters long"), "{error}");
        std::fs::write(&path, "[node]\ncluster_token = \"has a space in it\"\n").unwrap();
        let error =
            format!("{:#}", NodeFlags { config: Some(path), ..NodeFlags::default() }.load().unwrap_err());
        assert!(error.contains("not visible ASCII"), "{error}");
    }

    #[test]
    fn gateway_flags_override_the_file_and_nodes_are_required() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "[gateway]\nnode_addresses = [\"n1:7100\"]\nrequest_deadline_ms = 900\n")
            .unwrap();
        let from_file =
            GatewayFlags { config: Some(path.clone()), ..GatewayFlags::default() }.load().unwrap();
        assert_eq!(from_file.gateway.node_addresses, vec!["n1:7100".to_string()]);
        assert_eq!(from_file.gateway_config().request_deadline_ms, 900);
        let flags = GatewayFlags {
            config: Some(path),
            nodes: vec!["a:1".into(), "b:2".into()],
            listen: Some("127.0.0.1:6000".parse().unwrap()),
            no_metrics: true,
            ..GatewayFlags::default()
        };
        let config = flags.load().unwrap();
        assert_eq!(config.gateway.node_addresses, vec!["a:1".to_string(), "b:2".to_string()]);
        assert_eq!(config.gateway.listen_addr.port(), 6000);
        assert_eq!(config.gateway.metrics_addr, None);
        let error = GatewayFlags::default().load().unwrap_err();
        assert!(error.to_string().contains("node_addresses"), "{error}");
    }

    #[test]
    fn calls_in_flight_per_shard_comes_from_the_file_or_the_flag_and_is_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        let flags = GatewayFlags { config: Some(path.clone()), ..GatewayFlags::default() };
        std::fs::write(&path, "[gateway]\nnode_addresses = [\"n1:7100\"]\n").unwrap();
        assert_eq!(
            flags.load().unwrap().gateway.calls_in_flight_per_shard,
            tally_gateway::coalesce::CALLS_IN_FLIGHT_PER_SHARD_DEFAULT
        );
        std::fs::write(&path, "[gateway]\nnode_addresses = [\"n1:7100\"]\ncalls_in_flight_per_shard = 4\n")
            .unwrap();
        assert_eq!(flags.load().unwrap().gateway.calls_in_flight_per_shard, 4);
        let flagged = GatewayFlags { calls_in_flight_per_shard: Some(1), ..flags.clone() };
        assert_eq!(flagged.load().unwrap().gateway.calls_in_flight_per_shard, 1, "the flag wins");
        let zero = GatewayFlags { calls_in_flight_per_shard: Some(0), ..flags };
        let error = zero.load().unwrap_err();
        assert!(error.to_string().contains("calls_in_flight_per_shard must be at least 1"), "{error}");
    }

    #[test]
    fn the_local_cluster_configs_parse() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cluster");
        for (index, name) in ["local/node1.toml", "local/node2.toml", "local/node3.toml", "local/node4.toml"]
            .iter()
            .enumerate()
        {
            let path = std::path::Path::new(root).join(name);
            let config = NodeFlags { config: Some(path), ..NodeFlags::default() }.load().unwrap();
            assert_eq!(config.node.node_id, index as u64 + 1, "{name}");
        }
        for name in ["local/gateway.toml", "docker/gateway.toml"] {
            let path = std::path::Path::new(root).join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            toml::from_str::<TallyConfig>(&text).unwrap_or_else(|error| panic!("{name}: {error}"));
        }
        let docker_node = std::path::Path::new(root).join("docker/node.toml");
        NodeFlags { config: Some(docker_node), ..NodeFlags::default() }.load().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "[node]\nshard_cuont = 4\n").unwrap();
        let error = NodeFlags { config: Some(path.clone()), ..NodeFlags::default() }.load().unwrap_err();
        assert!(format!("{error:#}").contains("shard_cuont"), "{error:#}");
        std::fs::write(&path, "[node]\nshard_count = 0\n").unwrap();
        let error = NodeFlags { config: Some(path), ..NodeFlags::default() }.load().unwrap_err();
        assert!(format!("{error:#}").contains("shard_count"), "{error:#}");
    }
}
