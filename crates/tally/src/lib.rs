//! The `tally` binary's library side: the dev cluster, configuration loading, and the CLI.
//!
//! Layout:
//! - [`dev`]: the one-process dev cluster (node + gateway on one address).
//! - [`local_backend`]: the gateway's backend over an in-process node.
//! - [`settings`]: configuration from file, flags and environment.
//! - [`cli`]: the SRE commands and partner reads that call a running cluster.
//! - [`operations`]: every partner write from the shell (`tally write ...`).

pub mod cli;
pub mod dev;
pub mod local_backend;
pub mod operations;
pub mod settings;
