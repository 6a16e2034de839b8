//! The server side of the Raft transport: decodes a message, finds its group, hands it to
//! openraft, and returns openraft's whole `Result` so remote errors keep their meaning.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tally_proto::internal::raft_transport_server::{RaftTransport, RaftTransportServer};
use tally_proto::internal::{RaftReply, RaftRequest};
use tonic::{Request, Response, Status};

use crate::group::{Group, GroupRegistry};
use crate::network::{decode_wire, encode_wire, RAFT_MESSAGE_BYTES_MAX};
use crate::types::NodeId;

pub struct RaftTransportService {
    node_id: NodeId,
    registry: Arc<GroupRegistry>,
}

impl RaftTransportService {
    pub fn server(node_id: NodeId, registry: Arc<GroupRegistry>) -> RaftTransportServer<Self> {
        RaftTransportServer::new(Self { node_id, registry })
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }

    fn route<T: DeserializeOwned>(&self, request: &RaftRequest) -> Result<(Arc<Group>, T), Status> {
        // A message meant for another node means a peer has a wrong address for us; answering
        // it could make a leader replicate to itself, so refuse.
        if request.target_node_id != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}",
                self.node_id, request.target_node_id
            )));
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

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (group, message) = self.route(request.get_ref())?;
        reply(&group.raft.append_entries(message).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (group, message) = self.route(request.get_ref())?;
        reply(&group.raft.vote(message).await)
    }

    async fn install_snapshot(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (group, message) = self.route(request.get_ref())?;
        reply(&group.raft.install_snapshot(message).await)
    }
}
