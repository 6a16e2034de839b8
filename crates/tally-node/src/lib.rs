//! A Tally node: hosts the meta group and shard group replicas on one sled database, and
//! offers the calls a gateway makes on them (proposals, linearizable reads, status).
//!
//! Layout:
//! - [`config`]: [`NodeConfig`], the node's one typed configuration.
//! - [`node`]: [`Node`], starting groups, bootstrap, reads and proposals.
//! - [`api`]: the node API (`tally.internal.NodeApi`) server and client.
//! - [`metrics`]: the Prometheus exporter and Raft/storage gauges.

pub mod api;
pub mod config;
pub mod metrics;
pub mod node;

pub use config::NodeConfig;
pub use node::{
    stored_shard_count, BalanceReadout, GroupStatusView, Node, NodeError, RaftSwitches, StatusDetail,
};
