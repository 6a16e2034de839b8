//! The openraft type configuration shared by every group, and the entry payloads.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use tally_ledger::meta::{MetaCommand, MetaError, MetaResult};
use tally_ledger::{CommandOutcome, ShardBatch};

/// Group 0 is the meta group; shard `k` (0-based) is group `k + 1`.
pub type GroupId = u32;
pub const META_GROUP_ID: GroupId = 0;

pub fn shard_group_id(shard: u32) -> GroupId {
    shard + 1
}

/// A node's addresses, recorded in every group's membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyNode {
    /// Where the node serves the internal Raft transport (host:port).
    pub raft_addr: String,
    /// Where the node serves partners and admins (host:port).
    pub api_addr: String,
}

impl fmt::Display for TallyNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// The payload of one Raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRequest {
    /// Ledger commands for a shard group, batched by the proposer.
    Shard(ShardBatch),
    /// One change to the meta group, stamped with the leader's log time.
    Meta { log_time_ms: u64, command: MetaCommand },
}

impl fmt::Display for GroupRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupRequest::Shard(batch) => write!(f, "shard batch of {} commands", batch.commands.len()),
            GroupRequest::Meta { command, .. } => write!(f, "meta {command:?}"),
        }
    }
}

/// What applying one entry produced. Business failures are values inside, never storage
/// errors: openraft stops a group on any storage error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupResponse {
    /// Blank and membership entries.
    Empty,
    Shard(Vec<CommandOutcome>),
    Meta(Result<MetaResult, MetaError>),
    /// The entry was meant for another kind of group (a routing bug, answered, not applied).
    WrongGroup(String),
}

openraft::declare_raft_types!(
    pub TallyRaft:
        D = GroupRequest,
        R = GroupResponse,
        NodeId = u64,
        Node = TallyNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TallyRaft>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, TallyNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, TallyNode>;
pub type Snapshot = openraft::Snapshot<TallyRaft>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, TallyNode>;
pub type Entry = openraft::Entry<TallyRaft>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, TallyNode>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, TallyNode>;
pub type RpcError<E = openraft::error::Infallible> =
    openraft::error::RPCError<NodeId, TallyNode, RaftError<E>>;
