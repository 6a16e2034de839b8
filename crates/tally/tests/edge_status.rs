//! What the gRPC edge of a dev cluster answers before any Tally service code runs: malformed
//! protobuf, a message over the size limit, an unknown service or method, a deadline that had
//! passed on arrival, and the internal services, which the dev cluster does not serve. Raw calls, so the client sends exactly the
//! bytes and path given.

mod common;

use common::TestCluster;
use prost::Message;
use tally_ledger::{Command, CurrencyCode, IdempotencyKey, MemberId, Operation, PartnerId};
use tally_node::api::NodeRequest;
use tally_proto::internal::node_api_client::NodeApiClient;
use tally_proto::internal::NodeCall;
use tally_proto::v1::{ClusterStatusRequest, EarnRequest, GetBalanceRequest};
use tally_raft::network::encode_wire;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Calls `path` with `body` and the partner key `api_key`; the call must fail.
async fn refused(channel: &Channel, path: &'static str, body: Vec<u8>, api_key: &str) -> Status {
    let mut request = tonic::Request::new(body);
    let bearer = MetadataValue::try_from(format!("Bearer {api_key}")).unwrap();
    request.metadata_mut().insert("authorization", bearer);
    match common::raw::unary(channel, path, request).await {
        Ok(reply) => panic!("{path} answered {} bytes instead of an error", reply.len()),
        Err(status) => status,
    }
}

fn assert_status(status: &Status, code: Code, fragments: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for fragment in fragments {
        assert!(status.message().contains(fragment), "{fragment:?} missing from {:?}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_an_invalid_argument_naming_message_and_field() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("sky", "SKYMILES").await;
    let channel = cluster.channel().await;

    // Field 1 (the key) "k", field 2 (member_id) holding bytes that are not UTF-8.
    let non_utf8_member = vec![0x0a, 0x01, b'k', 0x12, 0x02, 0xff, 0xfe];
    let status = refused(&channel, "/tally.v1.Ledger/Earn", non_utf8_member, &sky).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        &[
            "the request body is not a valid tally.v1.EarnRequest message: EarnRequest.member_id: invalid \
             string value",
            "generated from Tally's .proto files",
        ],
    );
    assert!(!status.message().contains("failed to decode Protobuf message"), "{status:?}");

    // Field 2 announces 127 bytes and one follows.
    let truncated = vec![0x12, 0x7f, b'a'];
    let status = refused(&channel, "/tally.v1.Admin/ListPartners", truncated, &sky).await;
    assert_status(&status, Code::InvalidArgument, &["not a valid tally.v1.ListPartnersRequest message"]);

    // Nothing was applied: the partner's member has no balance.
    let balance = common::balance(&mut cluster.ledger().await, &sky, "k").await;
    assert!(balance.is_none(), "{balance:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_limit_is_resource_exhausted_and_says_to_split_it() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("sky", "SKYMILES").await;
    let channel = cluster.channel().await;

    let ledger_limit_bytes = tally_gateway::MAX_DECODING_MESSAGE_BYTES;
    let status =
        refused(&channel, "/tally.v1.Ledger/SubmitBatch", vec![0; ledger_limit_bytes + 1], &sky).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        &[
            &format!("the request to /tally.v1.Ledger/SubmitBatch is {} bytes", ledger_limit_bytes + 1),
            "accepts at most 8388608 bytes (8 MiB) in one request",
            "split it into smaller requests (for SubmitBatch, fewer operations per batch)",
        ],
    );

    // The admin service keeps tonic's default limit of 4 MiB.
    let status = refused(&channel, "/tally.v1.Admin/CreatePartner", vec![0; 5 * 1024 * 1024], &sky).await;
    assert_status(&status, Code::ResourceExhausted, &["accepts at most 4194304 bytes (4 MiB)"]);

    // A message just under the limit reaches the codec (and is refused there as malformed).
    let status = refused(&channel, "/tally.v1.Ledger/SubmitBatch", vec![0; 1024], &sky).await;
    assert_status(&status, Code::InvalidArgument, &["not a valid tally.v1.SubmitBatchRequest message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_or_method_is_named_with_what_is_served() {
    let cluster = TestCluster::start().await;
    let channel = cluster.channel().await;

    let status = refused(&channel, "/tally.v1.Ledger/Mint", Vec::new(), "any").await;
    assert_status(
        &status,
        Code::Unimplemented,
        &["tally.v1.Ledger has no method \"Mint\" (path /tally.v1.Ledger/Mint)"],
    );

    let status = refused(&channel, "/tally.v9.Vault/Open", Vec::new(), "any").await;
    assert_status(
        &status,
        Code::Unimplemented,
        &[
            "no service \"tally.v9.Vault\" is served here (path /tally.v9.Vault/Open); this address serves ",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "tally.v1.Ledger",
            "tally.v1.Admin",
        ],
    );
    assert!(!status.message().contains("tally.internal"), "{status:?}");
}

/// The node API does not authenticate; on the partner address it would let anyone submit a
/// command in any partner's name. The dev cluster does not serve it, nor the Raft transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_partner_address_does_not_serve_the_internal_services() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("sky", "SKYMILES").await;
    let channel = cluster.channel().await;

    let earn = Command {
        partner_id: PartnerId::parse("sky").unwrap(),
        idempotency_key: IdempotencyKey::parse("forged").unwrap(),
        operation: Operation::Earn {
            member_id: MemberId::parse("mallory").unwrap(),
            currency: CurrencyCode::parse("SKYMILES").unwrap(),
            amount_points: 1_000,
        },
    };
    let shard_count = common::node_config(std::path::Path::new(".")).shard_count;
    let shard = tally_ledger::routing::shard_of_member(&MemberId::parse("mallory").unwrap(), shard_count);
    let submit = NodeRequest::Submit { shard, commands: vec![earn] };
    let status = NodeApiClient::new(channel.clone())
        .call(NodeCall { payload: encode_wire(&submit) })
        .await
        .expect_err("the node API must not be served on the dev partner address");
    assert_status(
        &status,
        Code::Unimplemented,
        &["no service \"tally.internal.NodeApi\" is served here (path /tally.internal.NodeApi/Call)"],
    );

    let status = refused(&channel, "/tally.internal.RaftTransport/AppendEntries", Vec::new(), "any").await;
    assert_status(&status, Code::Unimplemented, &["no service \"tally.internal.RaftTransport\""]);

    let balance = common::balance(&mut cluster.ledger().await, &sky, "mallory").await;
    assert!(balance.is_none(), "the forged earn was applied: {balance:?}");
}

/// A call whose `grpc-timeout` had passed when it arrived is answered DEADLINE_EXCEEDED by the
/// edge, every time. Before, tonic's server timer raced the gateway's own check and some of
/// these calls were answered CANCELLED "Timeout expired" instead. The client is a plain HTTP/2
/// one, so the answer is the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passed_on_arrival_is_deadline_exceeded_every_time() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("sky", "SKYMILES").await;
    // Not a tonic channel: it would answer CANCELLED itself without asking the server.
    let client = common::raw::plain_client();
    let origin: tonic::codegen::http::Uri = cluster.url().parse().unwrap();
    let earn = EarnRequest { idempotency_key: "late".into(), member_id: "alice".into(), amount_points: 5 };
    let balance = GetBalanceRequest { member_id: "alice".into(), consistency: 0 };
    let calls: [(&'static str, Vec<u8>); 3] = [
        ("/tally.v1.Ledger/Earn", earn.encode_to_vec()),
        ("/tally.v1.Ledger/GetBalance", balance.encode_to_vec()),
        ("/tally.v1.Admin/ClusterStatus", ClusterStatusRequest::default().encode_to_vec()),
    ];
    const ROUNDS: usize = 30;
    for (path, body) in calls {
        for _ in 0..ROUNDS {
            let mut request = tonic::Request::new(body.clone());
            let bearer = MetadataValue::try_from(format!("Bearer {sky}")).unwrap();
            request.metadata_mut().insert("authorization", bearer);
            request.metadata_mut().insert("grpc-timeout", MetadataValue::from_static("1n"));
            let status = common::raw::unary_plain(&client, origin.clone(), path, request)
                .await
                .expect_err("a call past its deadline must fail");
            assert_status(
                &status,
                Code::DeadlineExceeded,
                &["the request's deadline (grpc-timeout of 1ns) had passed", "nothing was done"],
            );
        }
    }
    let balance = common::balance(&mut cluster.ledger().await, &sky, "alice").await;
    assert!(balance.is_none(), "the late earn was applied: {balance:?}");
}
