//! The node API served by a real one-node cluster: submissions and reads on the stream and as
//! unary calls, a bad call on the stream refused alone, the cluster token on the stream.

use std::sync::Arc;
use std::time::Duration;

use tally_ledger::routing::shard_of_member;
use tally_ledger::{Command, CurrencyCode, IdempotencyKey, MemberId, Operation, OperationResult, PartnerId};
use tally_node::api::{NodeApiService, NodeClient, NodeRequest, NodeResponse};
use tally_node::{Node, NodeConfig};
use tally_proto::internal::node_api_client::NodeApiClient;
use tally_proto::internal::{NodeCallBatch, NodeStreamCall};
use tally_raft::network::{decode_wire, encode_wire};
use tally_raft::ClusterToken;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

const SHARDS: u32 = 2;
const TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN: &str = "node-api-test-token";

/// A one-node cluster with every group led by it, its node API on a fresh 127.0.0.1 port.
async fn serve_node(data_dir: &std::path::Path) -> (String, Arc<Node>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let config = NodeConfig {
        node_id: 1,
        data_dir: data_dir.to_path_buf(),
        listen_addr: listener.local_addr().unwrap(),
        advertise_addr: Some(address.clone()),
        metrics_addr: None,
        shard_count: SHARDS,
        cluster_token: Some(token()),
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    node.initialize_alone().await.unwrap();
    assert!(node.wait_until_ready(TIMEOUT).await, "the groups elected no leader");
    let router = tonic::transport::Server::builder().add_service(NodeApiService::server(node.clone()));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    (address, node)
}

fn token() -> ClusterToken {
    ClusterToken::parse(TOKEN).unwrap()
}

fn member(index: usize) -> MemberId {
    MemberId::parse(format!("member-{index}")).unwrap()
}

fn earn(index: usize, key: &str, amount_points: u64) -> (u32, Command) {
    let command = Command {
        partner_id: PartnerId::parse("air").unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        operation: Operation::Earn {
            member_id: member(index),
            currency: CurrencyCode::parse("AIR").unwrap(),
            amount_points,
        },
    };
    (shard_of_member(&member(index), SHARDS), command)
}

async fn balance(client: &NodeClient, index: usize) -> u64 {
    let request = NodeRequest::Balance {
        shard: shard_of_member(&member(index), SHARDS),
        member_id: member(index),
        currency: CurrencyCode::parse("AIR").unwrap(),
        linearizable: true,
    };
    match client.call(&request, TIMEOUT).await.unwrap() {
        NodeResponse::Balance(readout) => readout.balance.map_or(0, |balance| balance.balance_points),
        other => panic!("a balance read answered {other:?}"),
    }
}

/// Many concurrent submissions, each answered with its own outcome, on the stream and as unary
/// calls; a replay on the other path gets the stored answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_on_the_stream_and_as_unary_calls_get_their_own_answers() {
    let folder = tempfile::tempdir().unwrap();
    let (address, node) = serve_node(folder.path()).await;
    for on_streams in [true, false] {
        let client = NodeClient::new(&address, Some(token())).unwrap().with_calls_on_streams(on_streams);
        let offset = if on_streams { 0 } else { 1_000 };
        let calls = (0..200).map(|i| {
            let client = client.clone();
            async move {
                let (shard, command) = earn(offset + i, &format!("earn-{}", offset + i), 10 + i as u64);
                let answer =
                    client.call(&NodeRequest::Submit { shard, commands: vec![command] }, TIMEOUT).await;
                (i, answer)
            }
        });
        let answers = futures_join_all(calls).await;
        for (i, answer) in answers {
            let NodeResponse::Outcomes(outcomes) = answer.unwrap() else { panic!("call {i}: not outcomes") };
            assert_eq!(outcomes.len(), 1);
            match &outcomes[0].result {
                Ok(OperationResult::Earned { balance }) => {
                    assert_eq!(balance.member_id, member(offset + i), "call {i} got another call's answer");
                    assert_eq!(balance.balance_points, 10 + i as u64);
                }
                other => panic!("call {i}: {other:?}"),
            }
            assert!(!outcomes[0].replay);
        }
        assert_eq!(balance(&client, offset + 7).await, 17, "streams {on_streams}");
        assert_eq!(client.stream_in_use(), on_streams, "the calls took the chosen path");
    }
    // The same key again, on the other path: the stored answer, marked as a replay.
    let unary = NodeClient::new(&address, Some(token())).unwrap().with_calls_on_streams(false);
    let (shard, command) = earn(5, "earn-5", 15);
    let NodeResponse::Outcomes(outcomes) =
        unary.call(&NodeRequest::Submit { shard, commands: vec![command] }, TIMEOUT).await.unwrap()
    else {
        panic!("not outcomes")
    };
    assert!(outcomes[0].replay, "{outcomes:?}");
    assert_eq!(balance(&unary, 5).await, 15, "applied once");
    node.shutdown().await;
}

/// A call whose payload is not a node request is refused with INVALID_ARGUMENT, alone: the
/// call beside it in the same frame is answered, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_call_on_the_stream_is_refused_alone() {
    let folder = tempfile::tempdir().unwrap();
    let (address, node) = serve_node(folder.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (frames, to_send) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(to_send));
    token().attach(&mut request);
    let (shard, command) = earn(1, "beside-garbage", 42);
    let valid = encode_wire(&NodeRequest::Submit { shard, commands: vec![command] });
    frames
        .send(NodeCallBatch {
            calls: vec![
                NodeStreamCall { call_id: 1, payload: vec![0xff, 0x00, 0x13] },
                NodeStreamCall { call_id: 2, payload: valid },
            ],
        })
        .await
        .unwrap();
    let mut answers = NodeApiClient::new(channel).call_stream(request).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = tokio::time::timeout(TIMEOUT, answers.message()).await.unwrap().unwrap().unwrap();
        seen.extend(frame.answers);
    }
    seen.sort_by_key(|answer| answer.call_id);
    assert_eq!(seen[0].status_code, Code::InvalidArgument as i32, "{:?}", seen[0]);
    assert!(seen[0].status_message.contains("not a valid node request"), "{:?}", seen[0]);
    assert_eq!(seen[1].status_code, Code::Ok as i32, "{:?}", seen[1]);
    let answer: tally_node::api::NodeResult = decode_wire(&seen[1].payload).unwrap();
    assert!(
        matches!(answer, Ok(NodeResponse::Outcomes(ref outcomes)) if outcomes[0].result.is_ok()),
        "{answer:?}"
    );
    drop(frames);
    node.shutdown().await;
}

/// Without the cluster token, or with another, the stream is refused before any call is read,
/// and nothing is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_the_cluster_token() {
    let folder = tempfile::tempdir().unwrap();
    let (address, node) = serve_node(folder.path()).await;
    for (token, expected) in [
        (None, "need the cluster token"),
        (
            Some(ClusterToken::parse("another-token-of-the-right-length").unwrap()),
            "does not match this node's",
        ),
    ] {
        let client = NodeClient::new(&address, token).unwrap();
        let (shard, command) = earn(3, "forged", 1_000);
        let error = client
            .call(&NodeRequest::Submit { shard, commands: vec![command] }, TIMEOUT)
            .await
            .expect_err("a call without the right token")
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
    let client = NodeClient::new(&address, Some(token())).unwrap();
    assert_eq!(balance(&client, 3).await, 0, "the forged earn was applied");
    node.shutdown().await;
}

/// Runs the futures concurrently and gives back their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}
