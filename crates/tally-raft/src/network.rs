//! Raft between nodes over tonic: one lazily connected HTTP/2 channel per peer, shared by every
//! group; each message carries its group id and the node id it is meant for. AppendEntries
//! travel on one long-lived stream per peer ([`crate::call_stream`], `RaftStream`), votes and snapshots as
//! unary calls.
//!
//! Payloads are openraft's own messages in bincode behind a format-version byte, and replies
//! carry the remote's whole `Result`, so a remote Raft error comes back as `RemoteError` and a
//! transport failure as `Unreachable`/`Network` (which drive openraft's retry behaviour).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
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
use tally_proto::internal::{RaftAnswerBatch, RaftCall, RaftCallBatch, RaftRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::call_stream::{answer_from_wire, Answer, CallStream, Opening, StreamProtocol};
use crate::cluster_token::ClusterToken;
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

/// One channel per peer node, created on first use and shared by all groups, the incarnation
/// guard that both ends of the transport apply, and the cluster token both ends use.
pub struct PeerPool {
    channels: Mutex<BTreeMap<(NodeId, String), Channel>>,
    /// Per peer and address, the stream that carries AppendEntries (when they go on streams).
    links: Mutex<BTreeMap<(NodeId, String), Arc<PeerLink>>>,
    /// False: AppendEntries go as unary calls, one each (see [`crate::RaftTuning`]).
    append_entries_on_streams: bool,
    /// Set when the node stops serving: the streams its transport serves end, so that the
    /// server's drain does not wait for streams that peers would keep open for ever.
    closing: tokio::sync::watch::Sender<bool>,
    guard: IncarnationGuard,
    /// Sent with every message, and required of every message received (see
    /// [`crate::cluster_token`]); none: not sent, not checked.
    cluster_token: Option<ClusterToken>,
}

/// Keeps a node whose data folder was wiped or replaced from taking part in Raft as the member
/// it used to be (Raft amnesia: it could vote twice in a term, or count toward a quorum for
/// entries it no longer has). Each data folder has a random incarnation made with it; the
/// cluster layout records it when the node joins. Messages carry the sender's incarnation and
/// the one the sender expects of the target; a mismatch on either side is refused.
///
/// Incarnation 0 means unknown and is not checked (single-process clusters, tests, and
/// nodes whose layout entry predates incarnations).
#[derive(Default)]
pub struct IncarnationGuard {
    node_id: NodeId,
    own: u64,
    /// Per peer, the incarnation the cluster layout records (updated as the meta state changes).
    expected: RwLock<BTreeMap<NodeId, u64>>,
    /// Refused messages, by the node whose folder does not match: (found, expected).
    conflicts: Mutex<BTreeMap<NodeId, (u64, u64)>>,
}

/// A message refused by the incarnation guard; the text is what the operator needs to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncarnationConflict {
    pub node_id: NodeId,
    pub found: u64,
    pub expected: u64,
}

impl IncarnationGuard {
    /// Checks a received message: meant for this folder, and from the folder the layout
    /// records for its sender. Records (and logs once per pair) any conflict.
    pub fn check_incoming(
        &self,
        target_incarnation: u64,
        sender_node_id: NodeId,
        sender_incarnation: u64,
    ) -> Result<(), IncarnationConflict> {
        let conflict = if self.own != 0 && target_incarnation != 0 && target_incarnation != self.own {
            Some(IncarnationConflict { node_id: self.node_id, found: self.own, expected: target_incarnation })
        } else {
            let expected = self.expected_of(sender_node_id);
            (sender_incarnation != 0 && expected != 0 && sender_incarnation != expected).then_some(
                IncarnationConflict { node_id: sender_node_id, found: sender_incarnation, expected },
            )
        };
        let Some(conflict) = conflict else { return Ok(()) };
        let previous = self
            .conflicts
            .lock()
            .expect("incarnation conflicts lock poisoned")
            .insert(conflict.node_id, (conflict.found, conflict.expected));
        if previous != Some((conflict.found, conflict.expected)) {
            tracing::error!(node_id = self.node_id, "Raft message refused: {conflict}");
        }
        Err(conflict)
    }

    /// The incarnation the layout records for `node_id`, 0 if none.
    pub fn expected_of(&self, node_id: NodeId) -> u64 {
        self.expected.read().expect("incarnations lock poisoned").get(&node_id).copied().unwrap_or(0)
    }

    /// This node's folder incarnation (0: not checked).
    pub fn own(&self) -> u64 {
        self.own
    }

    /// Conflicts seen so far (a conflict about a peer ends when the layout stops recording the
    /// old incarnation for it, for example after `remove-node`).
    pub fn conflicts(&self) -> Vec<IncarnationConflict> {
        let expected = self.expected.read().expect("incarnations lock poisoned");
        self.conflicts
            .lock()
            .expect("incarnation conflicts lock poisoned")
            .iter()
            .filter(|(node_id, (_, was_expected))| {
                **node_id == self.node_id || expected.get(node_id) == Some(was_expected)
            })
            .map(|(node_id, (found, expected))| IncarnationConflict {
                node_id: *node_id,
                found: *found,
                expected: *expected,
            })
            .collect()
    }
}

impl std::fmt::Display for IncarnationConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&tally_ledger::meta::replaced_folder_message(self.node_id, self.found, self.expected))
    }
}

impl Default for PeerPool {
    /// A pool that checks no incarnations and carries no cluster token.
    fn default() -> Self {
        PeerPool::new(0, 0, None)
    }
}

impl PeerPool {
    /// A pool for node `node_id` whose data folder has incarnation `incarnation`, in a cluster
    /// whose internal calls carry `cluster_token`.
    pub fn new(node_id: NodeId, incarnation: u64, cluster_token: Option<ClusterToken>) -> PeerPool {
        PeerPool {
            channels: Mutex::default(),
            links: Mutex::default(),
            append_entries_on_streams: true,
            closing: tokio::sync::watch::Sender::new(false),
            guard: IncarnationGuard { node_id, own: incarnation, ..IncarnationGuard::default() },
            cluster_token,
        }
    }

    /// Ends every stream this node's transport serves (see [`crate::transport`]); called when
    /// the node stops serving. Peers open new streams to wherever the node serves next.
    pub fn close_served_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`PeerPool::close_served_streams`] was called.
    pub async fn served_streams_closed(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives as long as the pool, which the caller holds.
        let _ = closing.wait_for(|closing| *closing).await;
    }

    /// Chooses how AppendEntries travel: one stream per peer (true, the default) or one unary
    /// call each.
    pub fn with_append_entries_on_streams(mut self, on_streams: bool) -> PeerPool {
        self.append_entries_on_streams = on_streams;
        self
    }

    pub fn cluster_token(&self) -> Option<&ClusterToken> {
        self.cluster_token.as_ref()
    }

    /// Replaces the incarnations expected of peers (from the cluster layout).
    pub fn set_expected_incarnations(&self, expected: BTreeMap<NodeId, u64>) {
        *self.guard.expected.write().expect("incarnations lock poisoned") = expected;
    }

    pub fn guard(&self) -> &IncarnationGuard {
        &self.guard
    }

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

    /// The AppendEntries stream to `target`, started on first use (on the current runtime).
    fn link(&self, target: NodeId, raft_addr: &str) -> Result<Arc<PeerLink>, String> {
        let channel = self.channel(target, raft_addr)?;
        let mut links = self.links.lock().expect("peer links lock poisoned");
        let link = links
            .entry((target, raft_addr.to_string()))
            .or_insert_with(|| Arc::new(PeerLink::start(channel, self.cluster_token.clone())));
        Ok(Arc::clone(link))
    }
}

/// `AppendEntriesStream`: every group's AppendEntries from this node to one peer.
pub struct RaftStream;

impl StreamProtocol for RaftStream {
    type Request = RaftRequest;
    type CallFrame = RaftCallBatch;
    type AnswerFrame = RaftAnswerBatch;
    const NAME: &'static str = "the Raft stream";

    fn call_frame(calls: Vec<(u64, RaftRequest)>) -> RaftCallBatch {
        RaftCallBatch {
            calls: calls
                .into_iter()
                .map(|(call_id, request)| RaftCall { call_id, request: Some(request) })
                .collect(),
        }
    }

    fn answers(frame: RaftAnswerBatch) -> Vec<(u64, Answer)> {
        frame
            .answers
            .into_iter()
            .map(|answer| {
                (answer.call_id, answer_from_wire(answer.status_code, answer.status_message, answer.payload))
            })
            .collect()
    }

    fn open(
        channel: Channel,
        request: tonic::Request<ReceiverStream<RaftCallBatch>>,
    ) -> Opening<RaftAnswerBatch> {
        Box::pin(async move {
            let mut client = RaftTransportClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
            client.append_entries_stream(request).await.map(tonic::Response::into_inner)
        })
    }
}

type PeerLink = CallStream<RaftStream>;

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
        let link = self
            .peers
            .append_entries_on_streams
            .then(|| self.peers.link(target, &node.raft_addr))
            .and_then(Result::ok);
        GroupConnection { group_id: self.group_id, target, channel, link, peers: self.peers.clone() }
    }
}

pub struct GroupConnection {
    group_id: GroupId,
    target: NodeId,
    channel: Result<Channel, String>,
    /// The peer's AppendEntries stream; none: AppendEntries go as unary calls.
    link: Option<Arc<PeerLink>>,
    peers: Arc<PeerPool>,
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
        let message = RaftRequest {
            group_id: self.group_id,
            target_node_id: self.target,
            payload: encode_wire(request),
            // Read per message: the layout may record the target's incarnation after this
            // connection was made.
            target_incarnation: self.peers.guard.expected_of(self.target),
            sender_node_id: self.peers.guard.node_id,
            sender_incarnation: self.peers.guard.own,
        };
        let link = self.link.as_ref().filter(|link| link.peer_has_streams());
        let payload = match (method, link) {
            (Method::AppendEntries, Some(link)) => {
                match tokio::time::timeout(option.hard_ttl(), link.call(message)).await {
                    Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                        // A peer of an older version (a rolling upgrade): unary calls from now
                        // on; openraft sends this message again.
                        link.peer_has_no_streams();
                        Err(tonic::Status::unavailable(format!(
                            "node {} has no Raft streams; AppendEntries go as unary calls",
                            self.target
                        )))
                    }
                    Ok(answer) => answer,
                    Err(_) => Err(tonic::Status::deadline_exceeded("no answer on the Raft stream in time")),
                }
            }
            _ => {
                let mut client = RaftTransportClient::new(channel)
                    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
                let mut grpc_request = tonic::Request::new(message);
                grpc_request.set_timeout(option.hard_ttl());
                if let Some(token) = &self.peers.cluster_token {
                    token.attach(&mut grpc_request);
                }
                let reply = match method {
                    Method::AppendEntries => client.append_entries(grpc_request).await,
                    Method::Vote => client.vote(grpc_request).await,
                    Method::InstallSnapshot => client.install_snapshot(grpc_request).await,
                };
                reply.map(|reply| reply.into_inner().payload)
            }
        };
        let payload = payload.map_err(status_to_rpc_error)?;
        let result: Result<Resp, RaftError<E>> =
            decode_wire(&payload).map_err(|reason| RpcError::Network(NetworkError::new(&Text(reason))))?;
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
