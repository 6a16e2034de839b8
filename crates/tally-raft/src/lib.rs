//! openraft glue for Tally. Only this crate (with tally-store) names openraft, so an upgrade
//! to openraft 0.10 touches these two crates.
//!
//! Layout:
//! - [`types`]: the type config (`TallyRaft`), node addresses, entry payloads and responses.
//! - [`keys`]: key layout of a group's state-machine tree.
//! - [`state_machine`]: `RaftStateMachine` over the ledger/meta state with atomic sled batches,
//!   consistent snapshot cuts, install.
//! - [`proposer`]: per-shard group commit with bounded queues.
//! - [`network`]: `RaftNetworkFactory` over tonic with one channel per peer for all groups.
//! - `call_stream`: many calls on one gRPC stream to a node (the Raft transport's AppendEntries
//!   to each peer, the node API's calls from a gateway).
//! - [`transport`]: the Raft transport server, dispatching by group id.
//! - [`cluster_token`]: the shared secret that internal calls carry and nodes check.
//! - [`group`]: a hosted group replica, its tuning, and the node's registry of groups.

pub mod background;
pub mod call_stream;
pub mod cluster_token;
pub mod group;
pub mod journal;
pub mod keys;
pub mod network;
pub mod proposer;
pub mod state_machine;
pub mod transport;
pub mod types;

pub use cluster_token::ClusterToken;
pub use group::{Group, GroupError, GroupRegistry, RaftTuning};
pub use proposer::{ProposeError, Proposer, ProposerConfig};
pub use state_machine::{GroupData, GroupShared, GroupState};
pub use types::*;
