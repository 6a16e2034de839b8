//! The `tally.v1.Admin` service: partners, their API keys, exchange agreements and the
//! cluster's status. Partner and agreement changes are proposed to the meta group; reads come
//! from the latest applied meta state.
//!
//! API keys are `tly_` and 64 hex digits (32 bytes from the operating system's random source).
//! A key is returned once, by CreatePartner or RotatePartnerKey; only its SHA-256 is stored.

use std::sync::Arc;

use rand::rngs::OsRng;
use rand::RngCore;
use tally_ledger::meta::{validate_terms, MetaCommand, MetaResult};
use tally_ledger::{PartnerId, ValidationError};
use tally_proto::v1::admin_server::Admin;
use tally_proto::v1::{
    AddNodeRequest, Agreement, ClusterChangeReply, ClusterStatusReply, ClusterStatusRequest,
    CreatePartnerReply, CreatePartnerRequest, ListAgreementsReply, ListAgreementsRequest, ListPartnersReply,
    ListPartnersRequest, MoveLeaderRequest, MoveReplicaRequest, RemoveAgreementRequest, RemoveNodeRequest,
    RotatePartnerKeyRequest, SetAgreementRequest, TriggerSnapshotRequest,
};
use tonic::{Request, Response, Status};

use crate::backend::{AdminAction, Backend, BackendError};
use crate::metrics::observe;
use crate::status::ApiError;
use crate::submit::{once, with_retry, Deadline, Purpose};
use crate::{auth, convert, validate, Shared};

/// Default time an operator action (moving replicas, removing a node) may take when the caller
/// sets no `grpc-timeout`: a replica catching up on a large shard takes a while.
pub const ADMIN_ACTION_DEADLINE_MS_DEFAULT: u64 = 600_000;

/// Longest partner display name.
pub const DISPLAY_NAME_BYTES_MAX: usize = 200;

/// The operator API. Build it with [`Gateway::admin_service`](crate::Gateway::admin_service).
/// Time budget of `ClusterStatus` unless the caller's `grpc-timeout` is shorter: every node
/// computes its groups' state digests, which read every retained record back.
pub const CLUSTER_STATUS_DEADLINE_MS: u64 = 60_000;

pub struct AdminService<B> {
    shared: Arc<Shared<B>>,
}

/// A new API key: `tly_` and the hex of 32 random bytes.
pub fn new_api_key() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("tly_{}", hex::encode(bytes))
}

fn partner_id(value: &str) -> Result<PartnerId, ValidationError> {
    PartnerId::parse(value).map_err(|mut error| {
        error.field = "partner_id".to_string();
        error
    })
}

fn display_name(value: &str, partner_id: &PartnerId) -> Result<String, ValidationError> {
    let value = value.trim();
    if value.len() > DISPLAY_NAME_BYTES_MAX {
        return Err(ValidationError::new(
            "display_name",
            format!("is {} bytes long; the limit is {DISPLAY_NAME_BYTES_MAX}", value.len()),
        ));
    }
    if let Some(position) = value.chars().position(char::is_control) {
        return Err(ValidationError::new(
            "display_name",
            format!("contains a control character at position {position}"),
        ));
    }
    // An empty display name defaults to the partner id.
    Ok(if value.is_empty() { partner_id.to_string() } else { value.to_string() })
}

impl<B: Backend> AdminService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }

    fn deadline<R>(&self, request: &Request<R>) -> Deadline {
        Deadline::for_request(request.metadata(), self.shared.config.request_deadline_ms)
    }

    /// Runs an operator action once (it is not idempotent as a whole). It runs in a task of
    /// its own, so that an operator whose connection drops cannot leave a leadership or replica
    /// move half-done; the task logs the outcome whether or not anyone still waits for it.
    async fn act<R>(
        &self,
        request: &Request<R>,
        action: AdminAction,
    ) -> Result<ClusterChangeReply, ApiError> {
        let deadline = Deadline::for_request(request.metadata(), ADMIN_ACTION_DEADLINE_MS_DEFAULT);
        let backend = Arc::clone(&self.shared.backend);
        let task = tokio::spawn(async move {
            let description = format!("{action:?}");
            let result = backend.admin(action).await;
            match &result {
                Ok(steps) => tracing::info!(action = %description, ?steps, "operator action done"),
                Err(error) => tracing::warn!(action = %description, %error, "operator action failed"),
            }
            result
        });
        let outcome = async move {
            task.await
                .unwrap_or_else(|error| Err(BackendError::Unavailable(format!("the action failed: {error}"))))
        };
        once(deadline, Purpose::Read, "the cluster", outcome).await.map(|steps| ClusterChangeReply { steps })
    }

    /// Proposes a meta command once (meta commands carry no idempotency key).
    /// Every change is logged (without key material): the audit trail of partner credentials
    /// and exchange agreements.
    async fn propose(&self, deadline: Deadline, command: MetaCommand) -> Result<MetaResult, ApiError> {
        let description = describe(&command);
        let result =
            once(deadline, Purpose::Read, "the meta group", self.shared.backend.propose_meta(command))
                .await?
                .map_err(ApiError::Meta);
        match &result {
            Ok(_) => tracing::info!(change = %description, "meta change applied"),
            Err(error) => tracing::info!(change = %description, %error, "meta change refused"),
        }
        result
    }
}

fn describe(command: &MetaCommand) -> String {
    match command {
        MetaCommand::CreatePartner { partner_id, currency, .. } => {
            format!("create partner {partner_id} issuing {currency}")
        }
        MetaCommand::RotatePartnerKey { partner_id, .. } => format!("rotate the API key of {partner_id}"),
        MetaCommand::SetAgreement { from_currency, to_currency, terms } => format!(
            "set agreement {from_currency} -> {to_currency} at {}/{}",
            terms.rate_numerator, terms.rate_denominator
        ),
        MetaCommand::RemoveAgreement { from_currency, to_currency } => {
            format!("remove agreement {from_currency} -> {to_currency}")
        }
        MetaCommand::InitCluster { layout } => {
            format!("initialize the cluster on nodes {:?}", layout.nodes.keys())
        }
        MetaCommand::AddNode { node_id, address } => format!("add node {node_id} at {address}"),
        MetaCommand::RecordIncarnation { node_id, incarnation } => {
            format!("record node {node_id}'s data folder incarnation {incarnation:016x}")
        }
        MetaCommand::RemoveNode { node_id } => format!("remove node {node_id}"),
        MetaCommand::SetShardReplicas { shard, replicas, .. } => {
            format!("place shard {shard} on nodes {replicas:?}")
        }
    }
}

fn unexpected(result: &MetaResult) -> ApiError {
    ApiError::Internal(format!("the meta group answered {result:?}"))
}

#[tonic::async_trait]
impl<B: Backend> Admin for AdminService<B> {
    async fn create_partner(
        &self,
        request: Request<CreatePartnerRequest>,
    ) -> Result<Response<CreatePartnerReply>, Status> {
        observe("create_partner", async move {
            let deadline = self.deadline(&request);
            let message = request.get_ref();
            let partner_id = partner_id(&message.partner_id)?;
            let currency = validate::currency("currency", &message.currency)?;
            let display_name = display_name(&message.display_name, &partner_id)?;
            let api_key = new_api_key();
            let command = MetaCommand::CreatePartner {
                partner_id,
                display_name,
                currency,
                api_key_sha256: auth::api_key_sha256(&api_key),
            };
            match self.propose(deadline, command).await? {
                MetaResult::PartnerCreated(partner) => {
                    Ok(CreatePartnerReply { partner: Some(convert::partner(&partner)), api_key })
                }
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn list_partners(
        &self,
        _request: Request<ListPartnersRequest>,
    ) -> Result<Response<ListPartnersReply>, Status> {
        observe("list_partners", async move {
            let meta = self.shared.backend.meta();
            Ok(ListPartnersReply { partners: meta.partners.values().map(convert::partner).collect() })
        })
        .await
    }

    async fn rotate_partner_key(
        &self,
        request: Request<RotatePartnerKeyRequest>,
    ) -> Result<Response<CreatePartnerReply>, Status> {
        observe("rotate_partner_key", async move {
            let deadline = self.deadline(&request);
            let partner_id = partner_id(&request.get_ref().partner_id)?;
            let api_key = new_api_key();
            let command =
                MetaCommand::RotatePartnerKey { partner_id, api_key_sha256: auth::api_key_sha256(&api_key) };
            match self.propose(deadline, command).await? {
                MetaResult::PartnerKeyRotated(partner) => {
                    Ok(CreatePartnerReply { partner: Some(convert::partner(&partner)), api_key })
                }
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn set_agreement(
        &self,
        request: Request<SetAgreementRequest>,
    ) -> Result<Response<Agreement>, Status> {
        observe("set_agreement", async move {
            let deadline = self.deadline(&request);
            let message = request.get_ref();
            let from_currency = validate::currency("from_currency", &message.from_currency)?;
            let to_currency = validate::currency("to_currency", &message.to_currency)?;
            if from_currency == to_currency {
                return Err(ValidationError::new("to_currency", "must differ from from_currency").into());
            }
            let Some(terms) = message.terms.as_ref() else {
                return Err(ValidationError::new(
                    "terms",
                    "must be set (rate_numerator and rate_denominator are required)",
                )
                .into());
            };
            let terms = convert::terms_from_proto(terms);
            validate_terms(&terms)?;
            match self
                .propose(deadline, MetaCommand::SetAgreement { from_currency, to_currency, terms })
                .await?
            {
                MetaResult::AgreementSet(agreement) => Ok(convert::agreement(&agreement)),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn list_agreements(
        &self,
        _request: Request<ListAgreementsRequest>,
    ) -> Result<Response<ListAgreementsReply>, Status> {
        observe("list_agreements", async move {
            let meta = self.shared.backend.meta();
            Ok(ListAgreementsReply { agreements: meta.agreements.values().map(convert::agreement).collect() })
        })
        .await
    }

    async fn remove_agreement(
        &self,
        request: Request<RemoveAgreementRequest>,
    ) -> Result<Response<Agreement>, Status> {
        observe("remove_agreement", async move {
            let deadline = self.deadline(&request);
            let message = request.get_ref();
            let from_currency = validate::currency("from_currency", &message.from_currency)?;
            let to_currency = validate::currency("to_currency", &message.to_currency)?;
            match self.propose(deadline, MetaCommand::RemoveAgreement { from_currency, to_currency }).await? {
                MetaResult::AgreementRemoved(agreement) => Ok(convert::agreement(&agreement)),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        observe("cluster_status", async move {
            // The state digests read every retained record back: longer than a write may take.
            let deadline = Deadline::for_request(request.metadata(), CLUSTER_STATUS_DEADLINE_MS);
            let include_state_digests = request.get_ref().include_state_digests;
            with_retry(deadline, Purpose::Read, "the cluster", || {
                self.shared.backend.cluster_status(include_state_digests)
            })
            .await
        })
        .await
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<ClusterChangeReply>, Status> {
        observe("add_node", async move {
            let address = request.get_ref().address.trim().to_string();
            if address.is_empty() || address.len() > 255 || address.contains(char::is_whitespace) {
                return Err(
                    ValidationError::new("address", "must be host:port of the node's gRPC address").into()
                );
            }
            self.act(&request, AdminAction::AddNode { address }).await
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<ClusterChangeReply>, Status> {
        observe("remove_node", async move {
            let node_id = request.get_ref().node_id;
            if node_id == 0 {
                return Err(ValidationError::new("node_id", "must be set (node ids start at 1)").into());
            }
            self.act(&request, AdminAction::RemoveNode { node_id }).await
        })
        .await
    }

    async fn move_replica(
        &self,
        request: Request<MoveReplicaRequest>,
    ) -> Result<Response<ClusterChangeReply>, Status> {
        observe("move_replica", async move {
            let message = request.get_ref();
            let (shard, from_node_id, to_node_id) = (message.shard, message.from_node_id, message.to_node_id);
            if from_node_id == 0 || to_node_id == 0 {
                return Err(ValidationError::new("from_node_id", "and to_node_id must both be set").into());
            }
            if from_node_id == to_node_id {
                return Err(ValidationError::new("to_node_id", "must differ from from_node_id").into());
            }
            self.act(&request, AdminAction::MoveReplica { shard, from_node_id, to_node_id }).await
        })
        .await
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<ClusterChangeReply>, Status> {
        observe("move_leader", async move {
            let message = request.get_ref();
            if message.to_node_id == 0 {
                return Err(ValidationError::new("to_node_id", "must be set (node ids start at 1)").into());
            }
            self.act(
                &request,
                AdminAction::MoveLeader { shard: message.shard, to_node_id: message.to_node_id },
            )
            .await
        })
        .await
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<ClusterChangeReply>, Status> {
        observe("trigger_snapshot", async move {
            let shard = request.get_ref().shard;
            let shard_count = self.shared.backend.shard_count();
            if let Some(shard) = shard.filter(|shard| *shard >= shard_count) {
                return Err(ValidationError::new(
                    "shard",
                    format!(
                        "is {shard}; shards are 0 to {} (leave it unset for every group)",
                        shard_count - 1
                    ),
                )
                .into());
            }
            self.act(&request, AdminAction::TriggerSnapshot { shard }).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_random_and_shaped() {
        let key = new_api_key();
        assert!(key.starts_with("tly_"));
        assert_eq!(key.len(), 4 + 64);
        assert_ne!(key, new_api_key());
    }
}
