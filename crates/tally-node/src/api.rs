//! The node API (`tally.internal.NodeApi`): the calls gateways, the CLI's cluster commands and
//! other nodes make on a node. Requests and answers are the Rust types below in bincode behind
//! the Raft transport's format-version byte, so they cannot drift from the domain types.
//!
//! A node answers for the replicas it hosts. Calls that need a group's leader answer
//! [`NodeApiError::NotLeader`] with the leader's address when this replica is not it, and the
//! caller follows the hint.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_ledger::meta::{MetaCommand, MetaError, MetaResult, MetaState};
use tally_ledger::state::StatementLine;
use tally_ledger::{Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId};
use tally_proto::internal::node_api_client::NodeApiClient;
use tally_proto::internal::node_api_server::{NodeApi, NodeApiServer};
use tally_proto::internal::{
    NodeAnswer, NodeAnswerBatch, NodeCall, NodeCallBatch, NodeReply, NodeStreamCall,
};
use tally_raft::call_stream::{
    answer_from_wire, for_each_frame, pack_answers, Answer, CallStream, Opening, StreamProtocol,
    ANSWER_FRAMES_QUEUED_MAX,
};
use tally_raft::cluster_token::check_cluster_token;
use tally_raft::network::{decode_wire, encode_wire, PeerPool, RAFT_MESSAGE_BYTES_MAX};
use tally_raft::{ClusterToken, GroupId, NodeId, ProposeError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::node::{BalanceReadout, GroupStatusView, Node, RaftSwitches, StatusDetail};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    Identity,
    Submit {
        shard: u32,
        commands: Vec<Command>,
    },
    Balance {
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        linearizable: bool,
    },
    Statement {
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        start_sequence: Option<u64>,
        newest_first: bool,
        limit: u32,
    },
    Operation {
        shard: u32,
        partner_id: PartnerId,
        idempotency_key: IdempotencyKey,
    },
    /// The meta state as applied on this node, with the meta group's leader and voters.
    Meta,
    ProposeMeta {
        command: MetaCommand,
    },
    Status {
        detail: StatusDetail,
    },
    HostGroup {
        group_id: GroupId,
    },
    InitializeGroup {
        group_id: GroupId,
        members: BTreeMap<NodeId, String>,
    },
    /// `removal_confirmed`: the caller saw the leader commit a membership without this node.
    DropGroup {
        group_id: GroupId,
        removal_confirmed: bool,
    },
    AddLearner {
        group_id: GroupId,
        node_id: NodeId,
        address: String,
    },
    ChangeVoters {
        group_id: GroupId,
        voters: Vec<NodeId>,
    },
    /// Switched back on by the node after `restore_after_ms` whatever happens to the caller.
    SetRaftSwitches {
        group_id: GroupId,
        switches: RaftSwitches,
        restore_after_ms: u64,
    },
    RemoveLearners {
        group_id: GroupId,
        learners: Vec<NodeId>,
    },
    TriggerElect {
        group_id: GroupId,
    },
    TriggerSnapshot {
        group_id: GroupId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentityView {
    pub node_id: NodeId,
    pub shard_count: u32,
    pub address: String,
    /// The data folder's incarnation (recorded in the layout when the node joins).
    pub incarnation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaView {
    pub meta: MetaState,
    pub applied_index: u64,
    pub leader_node_id: Option<NodeId>,
    pub voters: Vec<NodeId>,
    /// Addresses of the meta group's members as its membership records them (known before the
    /// layout is).
    pub member_addresses: BTreeMap<NodeId, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusView {
    pub node_id: NodeId,
    pub address: String,
    pub healthy: bool,
    /// Also the leader lease: how long a leadership move waits for followers' leases to lapse.
    pub election_timeout_max_ms: u64,
    pub groups: Vec<GroupStatusView>,
    /// The data folder's incarnation.
    pub incarnation: u64,
    /// Raft messages this node refused because a data folder was replaced (its own or a
    /// peer's), as messages for the operator.
    pub incarnation_conflicts: Vec<String>,
}

// One answer per call, built once and moved once: the size of the largest variant (an
// operation with its outcome, whose ids are inline strings) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    Identity(NodeIdentityView),
    Outcomes(Vec<CommandOutcome>),
    Balance(BalanceReadout),
    Statement { lines: Vec<StatementLine>, total_lines: u64 },
    Operation(Option<(Operation, CommandOutcome)>),
    Meta(Box<MetaView>),
    MetaResult(Result<MetaResult, MetaError>),
    Status(NodeStatusView),
    Done,
}

/// Why a node could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeApiError {
    #[error("node {node_id} is not the leader of group {group_id} (leader: {leader:?})")]
    NotLeader { node_id: NodeId, group_id: GroupId, leader: Option<(NodeId, String)> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Refused(String),
    /// The call never reached a node or its answer was lost (the outcome is unknown).
    #[error("{0}")]
    Transport(String),
}

impl NodeApiError {
    fn from_propose(node_id: NodeId, error: ProposeError) -> Self {
        match error {
            ProposeError::NotLeader { group_id, leader_id, leader } => NodeApiError::NotLeader {
                node_id,
                group_id,
                leader: leader_id.zip(leader.map(|node| node.api_addr)),
            },
            ProposeError::Overloaded { .. } | ProposeError::RetentionFull { .. } => {
                NodeApiError::Overloaded(error.to_string())
            }
            ProposeError::Unavailable { .. } => NodeApiError::Unavailable(error.to_string()),
            ProposeError::Refused { .. } => NodeApiError::Refused(error.to_string()),
        }
    }
}

pub type NodeResult = Result<NodeResponse, NodeApiError>;

/// The server side, over a running [`Node`].
pub struct NodeApiService {
    node: Arc<Node>,
}

impl NodeApiService {
    /// The server; it refuses calls without the node's cluster token when it has one.
    pub fn server(node: Arc<Node>) -> NodeApiServer<Self> {
        NodeApiServer::new(Self { node })
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }
}

type AnswerFrames = Pin<Box<dyn Stream<Item = Result<NodeAnswerBatch, Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for NodeApiService {
    type CallStreamStream = AnswerFrames;

    async fn call(&self, request: Request<NodeCall>) -> Result<Response<NodeReply>, Status> {
        check_cluster_token(self.node.config().cluster_token.as_ref(), request.metadata())?;
        let request = decode_request(&request.get_ref().payload)?;
        let result = handle(&self.node, request).await;
        Ok(Response::new(NodeReply { payload: encode_wire(&result) }))
    }

    async fn call_stream(
        &self,
        request: Request<Streaming<NodeCallBatch>>,
    ) -> Result<Response<AnswerFrames>, Status> {
        // Once per stream, before any call is read.
        check_cluster_token(self.node.config().cluster_token.as_ref(), request.metadata())?;
        let (answers, ready) = mpsc::unbounded_channel();
        let (frames, to_write) = mpsc::channel(ANSWER_FRAMES_QUEUED_MAX);
        let peers = self.node.peers();
        tokio::spawn(serve_calls(self.node.clone(), request.into_inner(), answers, peers.clone()));
        let frame = |answers| NodeAnswerBatch { answers };
        tokio::spawn(pack_answers(ready, frames, frame, async move { peers.served_streams_closed().await }));
        Ok(Response::new(Box::pin(ReceiverStream::new(to_write))))
    }
}

/// Reads the frames of one stream and runs each call as its own task, so that a slow call
/// never holds up the others (see [`for_each_frame`] for when it ends).
async fn serve_calls(
    node: Arc<Node>,
    frames: Streaming<NodeCallBatch>,
    answers: mpsc::UnboundedSender<NodeAnswer>,
    peers: Arc<PeerPool>,
) {
    for_each_frame(frames, peers.served_streams_closed(), |frame| {
        for NodeStreamCall { call_id, payload } in frame.calls {
            match decode_request(&payload) {
                Ok(request) => {
                    let node = node.clone();
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let payload = encode_wire(&handle(&node, request).await);
                        let _ = answers.send(NodeAnswer { call_id, payload, ..NodeAnswer::default() });
                    });
                }
                Err(status) => {
                    let _ = answers.send(NodeAnswer {
                        call_id,
                        payload: Vec::new(),
                        status_code: status.code() as i32,
                        status_message: status.message().to_string(),
                    });
                }
            }
        }
    })
    .await;
}

/// `NodeApi.CallStream`: a caller's calls to one node.
pub struct NodeStream;

impl StreamProtocol for NodeStream {
    type Request = Vec<u8>;
    type CallFrame = NodeCallBatch;
    type AnswerFrame = NodeAnswerBatch;
    const NAME: &'static str = "the node API stream";

    fn call_frame(calls: Vec<(u64, Vec<u8>)>) -> NodeCallBatch {
        NodeCallBatch {
            calls: calls.into_iter().map(|(call_id, payload)| NodeStreamCall { call_id, payload }).collect(),
        }
    }

    fn answers(frame: NodeAnswerBatch) -> Vec<(u64, Answer)> {
        frame
            .answers
            .into_iter()
            .map(|answer| {
                (answer.call_id, answer_from_wire(answer.status_code, answer.status_message, answer.payload))
            })
            .collect()
    }

    fn open(channel: Channel, request: Request<ReceiverStream<NodeCallBatch>>) -> Opening<NodeAnswerBatch> {
        Box::pin(async move {
            let mut client = NodeApiClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
            client.call_stream(request).await.map(Response::into_inner)
        })
    }
}

/// A `NodeCall` payload to the request it carries. Ids in it are checked as they decode (the
/// id types' `Deserialize` runs their `parse`), so a request with an empty or control-character
/// member id or key is refused here, before any group sees it.
pub fn decode_request(payload: &[u8]) -> Result<NodeRequest, Status> {
    decode_wire(payload).map_err(|reason| {
        Status::invalid_argument(format!("the NodeCall payload is not a valid node request: {reason}"))
    })
}

/// Runs one request on the node; also used directly by in-process callers.
pub async fn handle(node: &Node, request: NodeRequest) -> NodeResult {
    let node_id = node.config().node_id;
    let propose = |error| NodeApiError::from_propose(node_id, error);
    let refused = |error: crate::NodeError| NodeApiError::Refused(error.to_string());
    match request {
        NodeRequest::Identity => Ok(NodeResponse::Identity(NodeIdentityView {
            node_id,
            shard_count: node.shard_count(),
            address: node.config().advertised(),
            incarnation: node.incarnation(),
        })),
        NodeRequest::Submit { shard, commands } => {
            node.submit(shard, commands).await.map(NodeResponse::Outcomes).map_err(propose)
        }
        NodeRequest::Balance { shard, member_id, currency, linearizable } => node
            .balance(shard, &member_id, &currency, linearizable)
            .await
            .map(NodeResponse::Balance)
            .map_err(propose),
        NodeRequest::Statement { shard, member_id, currency, start_sequence, newest_first, limit } => node
            .statement(shard, &member_id, &currency, start_sequence, newest_first, limit as usize)
            .await
            .map(|(lines, total_lines)| NodeResponse::Statement { lines, total_lines })
            .map_err(propose),
        NodeRequest::Operation { shard, partner_id, idempotency_key } => node
            .operation(shard, &partner_id, &idempotency_key)
            .await
            .map(NodeResponse::Operation)
            .map_err(propose),
        NodeRequest::Meta => {
            let (leader_node_id, voters, applied_index, member_addresses) = node.meta_view();
            let meta = MetaState::clone(&node.meta_state());
            Ok(NodeResponse::Meta(Box::new(MetaView {
                meta,
                applied_index,
                leader_node_id,
                voters,
                member_addresses,
            })))
        }
        NodeRequest::ProposeMeta { command } => {
            node.propose_meta(command).await.map(NodeResponse::MetaResult).map_err(propose)
        }
        NodeRequest::Status { detail } => Ok(NodeResponse::Status(NodeStatusView {
            node_id,
            address: node.config().advertised(),
            healthy: node.is_healthy(),
            election_timeout_max_ms: node.config().raft.election_timeout_max_ms,
            groups: node.status(detail).await,
            incarnation: node.incarnation(),
            incarnation_conflicts: node.incarnation_conflicts(),
        })),
        NodeRequest::HostGroup { group_id } => {
            node.host_group(group_id).await.map(|_| NodeResponse::Done).map_err(refused)
        }
        NodeRequest::InitializeGroup { group_id, members } => {
            node.initialize_group(group_id, members).await.map(|()| NodeResponse::Done).map_err(refused)
        }
        NodeRequest::DropGroup { group_id, removal_confirmed } => {
            node.drop_group(group_id, removal_confirmed).await.map(|_| NodeResponse::Done).map_err(refused)
        }
        NodeRequest::AddLearner { group_id, node_id: learner, address } => {
            node.add_learner(group_id, learner, address).await.map(|()| NodeResponse::Done).map_err(propose)
        }
        NodeRequest::ChangeVoters { group_id, voters } => node
            .change_voters(group_id, voters.into_iter().collect())
            .await
            .map(|()| NodeResponse::Done)
            .map_err(propose),
        NodeRequest::SetRaftSwitches { group_id, switches, restore_after_ms } => node
            .set_raft_switches(group_id, switches, restore_after_ms)
            .map(|()| NodeResponse::Done)
            .map_err(propose),
        NodeRequest::RemoveLearners { group_id, learners } => node
            .remove_learners(group_id, learners.into_iter().collect())
            .await
            .map(|()| NodeResponse::Done)
            .map_err(propose),
        NodeRequest::TriggerElect { group_id } => {
            node.trigger_elect(group_id).await.map(|()| NodeResponse::Done).map_err(propose)
        }
        NodeRequest::TriggerSnapshot { group_id } => {
            node.trigger_snapshot(group_id).await.map(|()| NodeResponse::Done).map_err(propose)
        }
    }
}

/// A client of one node's API. Cheap to clone; the channel connects lazily.
///
/// Submissions and balance reads (a gateway's traffic) go on one stream per node
/// ([`NodeStream`]) unless streams are off; the other calls (rare, some with large answers)
/// and every call to a node that does not serve the stream go as unary calls.
#[derive(Clone)]
pub struct NodeClient {
    address: String,
    channel: Channel,
    client: NodeApiClient<Channel>,
    cluster_token: Option<ClusterToken>,
    /// Started on the first call that uses it (it needs a runtime); `None` inside: streams off.
    stream: Arc<OnceLock<Option<CallStream<NodeStream>>>>,
    calls_on_streams: bool,
}

impl NodeClient {
    /// A client of the node at `address` that sends `cluster_token` with every call, with
    /// submissions and reads on a stream.
    pub fn new(address: &str, cluster_token: Option<ClusterToken>) -> Result<NodeClient, NodeApiError> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| NodeApiError::Refused(format!("bad node address {address}: {error}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        let client = NodeApiClient::new(channel.clone())
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        Ok(NodeClient {
            address: address.to_string(),
            channel,
            client,
            cluster_token,
            stream: Arc::default(),
            calls_on_streams: true,
        })
    }

    /// Chooses how submissions and reads travel: on one stream (true, the default) or as one
    /// unary call each.
    pub fn with_calls_on_streams(mut self, on_streams: bool) -> NodeClient {
        self.calls_on_streams = on_streams;
        self
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether calls went on the stream so far (started, and the node serves it).
    pub fn stream_in_use(&self) -> bool {
        self.stream.get().is_some_and(|stream| stream.as_ref().is_some_and(CallStream::peer_has_streams))
    }

    /// The stream for `request`, if it goes on one.
    fn stream_for(&self, request: &NodeRequest) -> Option<&CallStream<NodeStream>> {
        if !matches!(request, NodeRequest::Submit { .. } | NodeRequest::Balance { .. }) {
            return None;
        }
        let stream = self.stream.get_or_init(|| {
            self.calls_on_streams.then(|| CallStream::start(self.channel.clone(), self.cluster_token.clone()))
        });
        stream.as_ref().filter(|stream| stream.peer_has_streams())
    }

    /// Sends one request and waits at most `timeout` for the answer.
    pub async fn call(&self, request: &NodeRequest, timeout: Duration) -> NodeResult {
        let timed_out =
            || NodeApiError::Transport(format!("node {} did not answer within {timeout:?}", self.address));
        let reply = match self.stream_for(request) {
            Some(stream) => match tokio::time::timeout(timeout, stream.call(encode_wire(request))).await {
                Err(_elapsed) => return Err(timed_out()),
                Ok(Err(status)) if status.code() == Code::Unimplemented => {
                    // A node of an older version (a rolling upgrade): unary calls from now on.
                    stream.peer_has_no_streams();
                    self.unary(request, timeout).await.ok_or_else(timed_out)?
                }
                Ok(answer) => answer,
            },
            None => self.unary(request, timeout).await.ok_or_else(timed_out)?,
        };
        let payload = reply.map_err(|status| {
            NodeApiError::Transport(format!("node {}: {}: {}", self.address, status.code(), status.message()))
        })?;
        decode_wire::<NodeResult>(&payload).map_err(|reason| {
            NodeApiError::Transport(format!("node {}: undecodable answer: {reason}", self.address))
        })?
    }

    /// One unary call; `None` when `timeout` passed first.
    async fn unary(&self, request: &NodeRequest, timeout: Duration) -> Option<Answer> {
        let mut grpc_request = Request::new(NodeCall { payload: encode_wire(request) });
        grpc_request.set_timeout(timeout);
        if let Some(token) = &self.cluster_token {
            token.attach(&mut grpc_request);
        }
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(timeout, client.call(grpc_request)).await.ok()?;
        Some(reply.map(|reply| reply.into_inner().payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance_request(member_id: &str) -> NodeRequest {
        NodeRequest::Balance {
            shard: 0,
            member_id: MemberId::parse(member_id).unwrap(),
            currency: CurrencyCode::parse("SKYMILES").unwrap(),
            linearizable: true,
        }
    }

    /// The encoding of a request for `alice` with her name's bytes replaced: what a client that
    /// does not go through `parse` could send.
    fn with_member_bytes(replacement: &[u8; 5]) -> Vec<u8> {
        let mut payload = encode_wire(&balance_request("alice"));
        let at = payload.windows(5).position(|window| window == b"alice").expect("the id is in the bytes");
        payload[at..at + 5].copy_from_slice(replacement);
        payload
    }

    #[test]
    fn a_valid_request_decodes_unchanged() {
        assert_eq!(decode_request(&with_member_bytes(b"alice")).unwrap(), balance_request("alice"));
    }

    #[test]
    fn a_control_character_in_a_member_id_is_refused_as_invalid_argument() {
        let status = decode_request(&with_member_bytes(b"al\x07ce")).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("the NodeCall payload is not a valid node request: ")
                && status.message().contains("member_id contains a control character at position 2"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn an_empty_idempotency_key_in_a_submit_is_refused() {
        let command = |key: &str| Command {
            partner_id: PartnerId::parse("sky").unwrap(),
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            operation: Operation::Enrol {
                member_id: MemberId::parse("bob").unwrap(),
                currency: CurrencyCode::parse("SKYMILES").unwrap(),
            },
        };
        let mut payload = encode_wire(&NodeRequest::Submit { shard: 1, commands: vec![command("k")] });
        // bincode writes a string as its u64 length, then the bytes: make "k" the empty key.
        let at = payload.windows(9).position(|window| window == b"\x01\0\0\0\0\0\0\0k").unwrap();
        payload.splice(at..at + 9, [0u8; 8]);
        let status = decode_request(&payload).unwrap_err();
        assert!(status.message().contains("idempotency_key must not be empty"), "{}", status.message());
    }
}
