//! The tonic Raft transport on its own: a `GroupConnection` from `GroupNetworkFactory` against a
//! real `RaftTransportService`, and the error mapping that drives openraft's retries.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;
use tally_proto::internal::raft_transport_client::RaftTransportClient;
use tally_proto::internal::RaftRequest;
use tally_raft::network::{encode_wire, GroupNetworkFactory, PeerPool};
use tally_raft::transport::RaftTransportService;
use tally_raft::{Group, GroupRegistry, ProposerConfig};
use tally_store::NodeStore;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Node 1 hosting the shard group (uninitialized), served on a fresh 127.0.0.1 port.
async fn serve_node_1() -> (String, Arc<Group>, tokio::sync::oneshot::Sender<()>, NodeStore) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = NodeStore::temporary().unwrap();
    let registry = Arc::new(GroupRegistry::default());
    let group = Group::start(
        1,
        SHARD,
        &store,
        Arc::new(PeerPool::default()),
        &fast_tuning(),
        ProposerConfig::default(),
    )
    .await
    .unwrap();
    let group = registry.insert(group);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder().add_service(RaftTransportService::server(1, registry));
    tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
        let _ = stopped.await;
    }));
    (addr, group, stop, store)
}

fn option() -> RPCOption {
    RPCOption::new(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reach_the_right_group_and_map_failures_for_openraft() {
    let (addr, group, stop, _store) = serve_node_1().await;
    let peers = Arc::new(PeerPool::default());
    let mut shard = GroupNetworkFactory { group_id: SHARD, peers: peers.clone() };
    let request = VoteRequest::new(Vote::new(5, 2), None);

    // A vote reaches node 1's shard group and comes back with its answer.
    let mut to_node_1 = shard.new_client(1, &node_info(&addr)).await;
    let response = to_node_1.vote(request.clone(), option()).await.expect("vote over the transport");
    assert!(response.vote_granted, "an empty replica grants the vote: {response:?}");
    assert_eq!(response.vote, Vote::new(5, 2));
    assert_eq!(group.raft.metrics().borrow().vote, Vote::new(5, 2), "node 1 saved the granted vote");

    // The address is node 1's but the message is for node 2 (a wrong address book): refused,
    // and reported as unreachable so openraft backs off instead of replicating to itself.
    let mut wrong_target = shard.new_client(2, &node_info(&addr)).await;
    match wrong_target.vote(request.clone(), option()).await {
        Err(RPCError::Unreachable(error)) => {
            assert!(error.to_string().contains("not node 2"), "{error}")
        }
        other => panic!("a message for another node must be refused: {other:?}"),
    }

    // A group node 1 does not host.
    let mut other_group = GroupNetworkFactory { group_id: 7, peers: peers.clone() };
    match other_group.new_client(1, &node_info(&addr)).await.vote(request.clone(), option()).await {
        Err(RPCError::Unreachable(error)) => assert!(error.to_string().contains("group 7"), "{error}"),
        other => panic!("an unknown group must be refused: {other:?}"),
    }

    // Nothing listens at this address.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    match shard.new_client(3, &node_info(&closed_addr)).await.vote(request.clone(), option()).await {
        Err(RPCError::Unreachable(_)) => {}
        other => panic!("a refused connection is unreachable: {other:?}"),
    }

    // A malformed address fails on use, not in `new_client` (which must not fail).
    let mut bad_address = shard.new_client(4, &node_info("not an address")).await;
    assert!(matches!(bad_address.vote(request.clone(), option()).await, Err(RPCError::Unreachable(_))));

    // Undecodable payloads are rejected by the server with InvalidArgument.
    let mut client = RaftTransportClient::connect(format!("http://{addr}")).await.unwrap();
    let garbage =
        RaftRequest { group_id: SHARD, target_node_id: 1, payload: vec![9, 1, 2, 3], ..Default::default() };
    let status = client.vote(garbage).await.expect_err("unknown wire version");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("version 9"), "{}", status.message());
    let mut truncated = encode_wire(&request);
    truncated.truncate(3);
    let status = client
        .vote(RaftRequest { group_id: SHARD, target_node_id: 1, payload: truncated, ..Default::default() })
        .await
        .expect_err("truncated payload");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // The remote's own error travels back whole: a stopped group answers Fatal.
    group.raft.shutdown().await.unwrap();
    match to_node_1.vote(VoteRequest::new(Vote::new(6, 2), None), option()).await {
        Err(RPCError::RemoteError(remote)) => {
            assert_eq!(remote.target, 1);
            assert!(matches!(remote.source, RaftError::Fatal(_)), "{:?}", remote.source);
        }
        other => panic!("a stopped group answers with its fatal error: {other:?}"),
    }
    let _ = stop.send(());
}

/// A guarded transport whose pool has a cluster token answers only messages that carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_transport_answers_only_messages_with_the_cluster_token() {
    let token = tally_raft::ClusterToken::parse("transport-test-cluster-token").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = NodeStore::temporary().unwrap();
    let registry = Arc::new(GroupRegistry::default());
    let node_1_peers = Arc::new(PeerPool::new(1, 0, Some(token.clone())));
    let group =
        Group::start(1, SHARD, &store, node_1_peers.clone(), &fast_tuning(), ProposerConfig::default())
            .await
            .unwrap();
    registry.insert(group);
    let router = tonic::transport::Server::builder().add_service(RaftTransportService::guarded(
        1,
        registry,
        node_1_peers,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
        let _ = stopped.await;
    }));
    let request = VoteRequest::new(Vote::new(5, 2), None);

    let with_token = Arc::new(PeerPool::new(2, 0, Some(token)));
    let mut shard = GroupNetworkFactory { group_id: SHARD, peers: with_token };
    let response = shard.new_client(1, &node_info(&addr)).await.vote(request.clone(), option()).await;
    assert!(response.expect("a vote with the token").vote_granted);

    let wrong = tally_raft::ClusterToken::parse("another-cluster-token").unwrap();
    for (peers, expected) in [
        (PeerPool::default(), "need the cluster token"),
        (PeerPool::new(2, 0, Some(wrong)), "does not match this node's"),
    ] {
        let mut shard = GroupNetworkFactory { group_id: SHARD, peers: Arc::new(peers) };
        let mut to_node_1 = shard.new_client(1, &node_info(&addr)).await;
        let refused = to_node_1.vote(request.clone(), option()).await;
        let error = refused.expect_err("a vote without the right token").to_string();
        assert!(error.contains(expected), "{error}");
        let append = AppendEntriesRequest {
            vote: Vote::new_committed(5, 2),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let refused = to_node_1.append_entries(append, option()).await;
        let error = refused.expect_err("a stream without the right token").to_string();
        assert!(error.contains(expected), "{error}");
    }
    let _ = stop.send(());
}

fn heartbeat_from_node_2() -> AppendEntriesRequest<tally_raft::TallyRaft> {
    AppendEntriesRequest {
        vote: Vote::new_committed(5, 2),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    }
}

/// Serves `group` as node 1 on `listener` with a guarded transport over `pool`, until the
/// returned sender fires.
fn serve_group(
    listener: TcpListener,
    group: Arc<Group>,
    pool: Arc<PeerPool>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
    let registry = Arc::new(GroupRegistry::default());
    registry.insert_arc(group);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router =
        tonic::transport::Server::builder().add_service(RaftTransportService::guarded(1, registry, pool));
    let serving =
        tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        }));
    (stop, serving)
}

/// AppendEntries go on the peer's stream: each message reaches its group or is refused on its
/// own (the stream goes on); a node that stops serving ends the streams it serves (its drain
/// does not wait for them), and the stream is opened again once the node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_entries_on_the_stream_are_answered_or_refused_one_by_one() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = NodeStore::temporary().unwrap();
    let node_1_peers = Arc::new(PeerPool::new(1, 0, None));
    let group = Arc::new(
        Group::start(1, SHARD, &store, node_1_peers.clone(), &fast_tuning(), ProposerConfig::default())
            .await
            .unwrap(),
    );
    let (stop, serving) = serve_group(listener, group.clone(), node_1_peers.clone());

    let peers = Arc::new(PeerPool::new(2, 0, None));
    let mut shard = GroupNetworkFactory { group_id: SHARD, peers: peers.clone() };
    let mut to_node_1 = shard.new_client(1, &node_info(&addr)).await;
    let mut wrong_target = shard.new_client(3, &node_info(&addr)).await;
    let mut other_group =
        GroupNetworkFactory { group_id: 7, peers: peers.clone() }.new_client(1, &node_info(&addr)).await;

    // Sent together, so that they share frames: two refusals between answered messages.
    let (first, wrong, unknown, second) = tokio::join!(
        to_node_1.append_entries(heartbeat_from_node_2(), option()),
        wrong_target.append_entries(heartbeat_from_node_2(), option()),
        other_group.append_entries(heartbeat_from_node_2(), option()),
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            shard
                .new_client(1, &node_info(&addr))
                .await
                .append_entries(heartbeat_from_node_2(), option())
                .await
        },
    );
    assert!(first.is_ok() && second.is_ok(), "{first:?} / {second:?}");
    assert_eq!(
        group.raft.metrics().borrow().vote,
        Vote::new_committed(5, 2),
        "node 1 took node 2's leadership"
    );
    match wrong {
        Err(RPCError::Unreachable(error)) => assert!(error.to_string().contains("not node 3"), "{error}"),
        other => panic!("a message for another node must be refused: {other:?}"),
    }
    match unknown {
        Err(RPCError::Unreachable(error)) => assert!(error.to_string().contains("group 7"), "{error}"),
        other => panic!("an unknown group must be refused: {other:?}"),
    }

    // Node 1 stops serving: its drain ends although node 2's stream was open, and node 2's
    // next call fails instead of waiting for ever.
    node_1_peers.close_served_streams();
    let _ = stop.send(());
    let drained = tokio::time::timeout(Duration::from_secs(3), serving).await;
    assert!(matches!(drained, Ok(Ok(Ok(())))), "the server did not drain: {drained:?}");
    let failed = to_node_1.append_entries(heartbeat_from_node_2(), option()).await;
    assert!(matches!(failed, Err(RPCError::Unreachable(_) | RPCError::Network(_))), "{failed:?}");

    // The same port serves again (the same group behind it): the next call opens a new stream.
    let listener = TcpListener::bind(&addr).await.unwrap();
    let (stop, _serving) = serve_group(listener, group.clone(), Arc::new(PeerPool::new(1, 0, None)));
    let mut answered = None;
    for _ in 0..50 {
        match to_node_1.append_entries(heartbeat_from_node_2(), option()).await {
            Ok(response) => {
                answered = Some(response);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(answered.is_some(), "the stream was not opened again after the peer came back");
    let _ = stop.send(());
}

/// With streams off, AppendEntries go as unary calls and are answered the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_entries_go_as_unary_calls_when_streams_are_off() {
    let (addr, group, stop, _store) = serve_node_1().await;
    let peers = Arc::new(PeerPool::new(2, 0, None).with_append_entries_on_streams(false));
    let mut shard = GroupNetworkFactory { group_id: SHARD, peers };
    let response =
        shard.new_client(1, &node_info(&addr)).await.append_entries(heartbeat_from_node_2(), option()).await;
    assert!(response.is_ok(), "{response:?}");
    assert_eq!(group.raft.metrics().borrow().vote, Vote::new_committed(5, 2));
    let _ = stop.send(());
}
