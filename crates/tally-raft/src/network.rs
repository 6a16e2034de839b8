//! Raft between nodes over tonic: one lazily connected HTTP/2 channel per peer, shared by every
//! group; each message carries its group id and the node id it is meant for.
//!
//! Payloads are openraft's own messages in bincode behind a format-version byte, and replies
//! carry the remote's whole `Result`, so a remote Raft error comes back as `RemoteError` and a
//! transport failure as `Unreachable`/`Network` (which drive openraft's retry behaviour).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tally_proto::internal::raft_transport_client::RaftTransportClient;
use tally_proto::internal::{RaftReply, RaftRequest};
use tonic::transport::{Channel, Endpoint};

use crate::types::{GroupId, NodeId, RaftError, RpcError, TallyNode, TallyRaft};

/// Version of the bincode framing on the Raft transport; tied to the openraft version.
pub const WIRE_FORMAT_VERSION: u8 = 1;
/// Raft messages can carry batches of thousands of commands and snapshot chunks.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

pub fn encode_wire<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![WIRE_FORMAT_VERSION];
    bincode::serialize_into(&mut bytes, value).expect("encoding a Raft message into memory cannot fail");
    bytes
}

pub fn decode_wire<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&WIRE_FORMAT_VERSION, payload)) => {
            bincode::deserialize(payload).map_err(|error| error.to_string())
        }
        Some((version, _)) => Err(format!("unsupported Raft wire format version {version}")),
        None => Err("empty Raft message".to_string()),
    }
}

/// One channel per peer node, created on first use and shared by all groups.
#[derive(Default)]
pub struct PeerPool {
    channels: Mutex<BTreeMap<(NodeId, String), Channel>>,
}

impl PeerPool {
    fn channel(&self, target: NodeId, raft_addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("peer pool lock poisoned");
        if let Some(channel) = channels.get(&(target, raft_addr.to_string())) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{raft_addr}"))
            .map_err(|error| format!("bad raft address {raft_addr}: {error}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert((target, raft_addr.to_string()), channel.clone());
        Ok(channel)
    }
}

/// The `RaftNetworkFactory` of one group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pub group_id: GroupId,
    pub peers: Arc<PeerPool>,
}

impl RaftNetworkFactory<TallyRaft> for GroupNetworkFactory {
    type Network = GroupConnection;

    async fn new_client(&mut self, target: NodeId, node: &TallyNode) -> GroupConnection {
        // Must not fail or block: the channel connects on first use.
        let channel = self.peers.channel(target, &node.raft_addr);
        GroupConnection { group_id: self.group_id, target, channel }
    }
}

pub struct GroupConnection {
    group_id: GroupId,
    target: NodeId,
    channel: Result<Channel, String>,
}

impl GroupConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel =
            self.channel.clone().map_err(|reason| RpcError::Unreachable(Unreachable::new(&Text(reason))))?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let mut grpc_request = tonic::Request::new(RaftRequest {
            group_id: self.group_id,
            target_node_id: self.target,
            payload: encode_wire(request),
        });
        grpc_request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::AppendEntries => client.append_entries(grpc_request).await,
            Method::Vote => client.vote(grpc_request).await,
            Method::InstallSnapshot => client.install_snapshot(grpc_request).await,
        };
        let reply: RaftReply = reply.map_err(status_to_rpc_error)?.into_inner();
        let result: Result<Resp, RaftError<E>> = decode_wire(&reply.payload)
            .map_err(|reason| RpcError::Network(NetworkError::new(&Text(reason))))?;
        result.map_err(|error| RpcError::RemoteError(RemoteError::new(self.target, error)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// A plain message as an error, for openraft's error constructors.
#[derive(Debug)]
struct Text(String);

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Text {}

fn status_to_rpc_error<E: std::error::Error>(status: tonic::Status) -> RpcError<E> {
    let text = Text(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        // Refused connections, unknown groups and wrong targets: back off before retrying.
        tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
            RpcError::Unreachable(Unreachable::new(&text))
        }
        _ => RpcError::Network(NetworkError::new(&text)),
    }
}

impl RaftNetwork<TallyRaft> for GroupConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TallyRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.call(Method::AppendEntries, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TallyRaft>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call(Method::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(Method::Vote, &request, &option).await
    }
}
