//! The server side of the Raft transport: decodes a message, finds its group, hands it to
//! openraft, and returns openraft's whole `Result` so remote errors keep their meaning.
//!
//! On `AppendEntriesStream` each message of a frame goes to its group as its own task (groups
//! never wait for each other), and the answers that are ready together leave in one frame.

use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tally_proto::internal::raft_transport_server::{RaftTransport, RaftTransportServer};
use tally_proto::internal::{RaftAnswer, RaftAnswerBatch, RaftCallBatch, RaftReply, RaftRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::call_stream::{for_each_frame, pack_answers, ANSWER_FRAMES_QUEUED_MAX};
use crate::cluster_token::check_cluster_token;
use crate::group::{Group, GroupRegistry};
use crate::network::{decode_wire, encode_wire, PeerPool, RAFT_MESSAGE_BYTES_MAX};
use crate::types::NodeId;

#[derive(Clone)]
pub struct RaftTransportService {
    node_id: NodeId,
    registry: Arc<GroupRegistry>,
    /// The pool whose incarnation guard checks every message (none: nothing is checked).
    peers: Option<Arc<PeerPool>>,
}

impl RaftTransportService {
    /// A transport that checks no incarnations and no cluster token (one-process clusters and
    /// tests).
    pub fn server(node_id: NodeId, registry: Arc<GroupRegistry>) -> RaftTransportServer<Self> {
        Self::build(Self { node_id, registry, peers: None })
    }

    /// A transport that refuses messages without `peers`' cluster token (when it has one), and
    /// messages from or to a replaced data folder, by `peers`' incarnation guard (see
    /// [`crate::network::IncarnationGuard`]).
    pub fn guarded(
        node_id: NodeId,
        registry: Arc<GroupRegistry>,
        peers: Arc<PeerPool>,
    ) -> RaftTransportServer<Self> {
        Self::build(Self { node_id, registry, peers: Some(peers) })
    }

    fn build(service: Self) -> RaftTransportServer<Self> {
        RaftTransportServer::new(service)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }

    /// Refuses a message without the pool's cluster token (when it has one).
    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let expected = self.peers.as_deref().and_then(PeerPool::cluster_token);
        check_cluster_token(expected, request.metadata())
    }

    fn route<T: DeserializeOwned>(&self, request: &Request<RaftRequest>) -> Result<(Arc<Group>, T), Status> {
        // Before anything of the message is read: a caller without the token learns nothing.
        self.check_token(request)?;
        self.route_message(request.get_ref())
    }

    /// Checks one message (target, incarnations), finds its group and decodes its payload.
    fn route_message<T: DeserializeOwned>(&self, request: &RaftRequest) -> Result<(Arc<Group>, T), Status> {
        // A message meant for another node means a peer has a wrong address for us; answering
        // it could make a leader replicate to itself, so refuse.
        if request.target_node_id != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}",
                self.node_id, request.target_node_id
            )));
        }
        if let Some(peers) = &self.peers {
            peers
                .guard()
                .check_incoming(
                    request.target_incarnation,
                    request.sender_node_id,
                    request.sender_incarnation,
                )
                .map_err(|conflict| Status::failed_precondition(conflict.to_string()))?;
        }
        let group = self.registry.get(request.group_id).ok_or_else(|| {
            Status::not_found(format!("node {} does not host group {}", self.node_id, request.group_id))
        })?;
        let message = decode_wire(&request.payload).map_err(Status::invalid_argument)?;
        Ok((group, message))
    }
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply { payload: encode_wire(result) }))
}

type AnswerFrames = Pin<Box<dyn Stream<Item = Result<RaftAnswerBatch, Status>> + Send>>;

/// Reads the frames of one stream and starts a task per message (see
/// [`for_each_frame`] for when it ends).
async fn serve_stream(
    service: RaftTransportService,
    frames: Streaming<RaftCallBatch>,
    answers: mpsc::UnboundedSender<RaftAnswer>,
) {
    let closed = served_streams_closed(service.peers.clone());
    for_each_frame(frames, closed, |frame| {
        for call in frame.calls {
            let call_id = call.call_id;
            let routed = call
                .request
                .ok_or_else(|| Status::invalid_argument("a Raft call without its message"))
                .and_then(|request| service.route_message(&request));
            let answers = answers.clone();
            match routed {
                Ok((group, message)) => {
                    tokio::spawn(async move {
                        let result = group.raft.append_entries(message).await;
                        let payload = encode_wire(&result);
                        let _ = answers.send(RaftAnswer { call_id, payload, ..RaftAnswer::default() });
                    });
                }
                Err(status) => {
                    let _ = answers.send(RaftAnswer {
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

/// Resolves when the node stops serving (never for a transport without a pool).
async fn served_streams_closed(peers: Option<Arc<PeerPool>>) {
    match peers {
        Some(peers) => peers.served_streams_closed().await,
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    type AppendEntriesStreamStream = AnswerFrames;

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftCallBatch>>,
    ) -> Result<Response<AnswerFrames>, Status> {
        // Once per stream, before any message is read.
        self.check_token(&request)?;
        let (answers, ready) = mpsc::unbounded_channel();
        let (frames, to_write) = mpsc::channel(ANSWER_FRAMES_QUEUED_MAX);
        tokio::spawn(serve_stream(self.clone(), request.into_inner(), answers));
        let frame = |answers| RaftAnswerBatch { answers };
        tokio::spawn(pack_answers(ready, frames, frame, served_streams_closed(self.peers.clone())));
        Ok(Response::new(Box::pin(ReceiverStream::new(to_write))))
    }

    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (group, message) = self.route(&request)?;
        reply(&group.raft.append_entries(message).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (group, message) = self.route(&request)?;
        reply(&group.raft.vote(message).await)
    }

    async fn install_snapshot(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (group, message) = self.route(&request)?;
        reply(&group.raft.install_snapshot(message).await)
    }
}
