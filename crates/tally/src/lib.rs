//! The `tally` binary's library side: the dev cluster, configuration loading, and the CLI.
//!
//! Layout:
//! - [`dev`]: the one-process dev cluster (node + gateway on one address).
//! - [`local_backend`]: the gateway's backend over an in-process node.
//! - [`node_process`], [`gateway_process`]: `tally node` and `tally gateway` of a multi-node
//!   cluster.
//! - [`cluster_client`]: reaching a multi-node cluster (layout, leader hints);
//!   [`remote_backend`]: the gateway's backend over it; [`cluster_admin`]: bootstrap and the
//!   SRE actions (add/remove node, move replica, move leader, snapshot);
//!   [`cluster_status`]: one status view from every node's report.
//! - [`resolver`]: finishes cross-shard transfers left open, on every shard leader.
//! - [`serve`]: reflection, health and the stop signal shared by the serving processes.
//! - [`settings`]: configuration from file, flags and environment.
//! - [`cli`]: the SRE commands and partner reads that call a running cluster.
//! - [`operations`]: every partner write from the shell (`tally write ...`).

pub mod cli;
pub mod cluster_admin;
pub mod cluster_client;
pub mod cluster_status;
pub mod dev;
pub mod gateway_process;
pub mod local_backend;
pub mod node_process;
pub mod operations;
pub mod remote_backend;
pub mod resolver;
pub mod serve;
pub mod settings;
