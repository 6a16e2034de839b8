//! Three nodes in one process, each with its own sled store, group registry and tonic Raft
//! transport on a 127.0.0.1 port: replication, leader failover with exactly-once retries, and an
//! empty learner that can only catch up through a snapshot because the leader purged its log.
//! The three voters also host the meta group, over the same peer channels and servers.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use openraft::error::RaftError;
use openraft::{RaftLogReader, ServerState};
use tally_ledger::meta::{MetaCommand, MetaState};
use tally_ledger::{Command, CommandOutcome, Ledger};
use tally_raft::network::PeerPool;
use tally_raft::proposer::wall_clock_ms;
use tally_raft::transport::RaftTransportService;
use tally_raft::{
    ClientWriteError, Group, GroupRegistry, GroupRequest, GroupResponse, NodeId, ProposeError,
    ProposerConfig, RaftMetrics, RaftTuning, TallyRaft, META_GROUP_ID,
};
use tally_store::NodeStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// Bound on every wait; the whole test normally takes a few seconds.
const WAIT: Duration = Duration::from_secs(10);

/// The transport server's task, ended by a shutdown signal.
type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

struct TestNode {
    id: NodeId,
    addr: String,
    group: Arc<Group>,
    /// The meta group, on the three founding nodes.
    meta: Option<Arc<Group>>,
    registry: Arc<GroupRegistry>,
    /// The node's peer pool, which also ends the Raft streams its server holds when it stops.
    peers: Arc<PeerPool>,
    store: NodeStore,
    server: Option<(oneshot::Sender<()>, ServerTask)>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// A node hosting the shard group, and the meta group if `with_meta` (neither initialized),
    /// and serving the Raft transport of both.
    async fn start(id: NodeId, tuning: &RaftTuning, with_meta: bool) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let registry = Arc::new(GroupRegistry::default());
        let peers = Arc::new(PeerPool::new(id, 0, None));
        let group =
            Group::start(id, SHARD, &store, peers.clone(), tuning, ProposerConfig::default()).await.unwrap();
        let group = registry.insert(group);
        let meta = match with_meta {
            true => {
                let meta =
                    Group::start(id, META_GROUP_ID, &store, peers.clone(), tuning, ProposerConfig::default());
                Some(registry.insert(meta.await.unwrap()))
            }
            false => None,
        };
        let (shutdown, signal) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder().add_service(RaftTransportService::guarded(
            id,
            registry.clone(),
            peers.clone(),
        ));
        let server =
            tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = signal.await;
            }));
        TestNode {
            id,
            addr,
            group,
            meta,
            registry,
            peers,
            store,
            server: Some((shutdown, server)),
            _dir: dir,
        }
    }

    fn metrics(&self) -> RaftMetrics {
        self.group.raft.metrics().borrow().clone()
    }

    fn meta(&self) -> &Group {
        self.meta.as_deref().unwrap_or_else(|| panic!("node {} does not host the meta group", self.id))
    }

    /// Stops the group and the transport server (the process of this node "dies").
    async fn stop(&mut self) {
        self.group.raft.shutdown().await.expect("raft shutdown");
        if let Some(meta) = &self.meta {
            meta.raft.shutdown().await.expect("meta raft shutdown");
        }
        if let Some((shutdown, server)) = self.server.take() {
            self.peers.close_served_streams();
            let _ = shutdown.send(());
            match tokio::time::timeout(WAIT, server).await {
                Ok(result) => result.expect("server task").expect("server"),
                Err(_) => panic!("node {}: the transport server did not stop within {WAIT:?}", self.id),
            }
        }
        self.registry.clear();
        let _ = self.store.flush().await;
    }

    async fn wait_applied(&self, index: u64, what: &str) {
        self.group
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), what)
            .await
            .unwrap_or_else(|error| panic!("node {} did not apply up to {index} ({what}): {error}", self.id));
    }
}

/// Waits until every node in `nodes` names the same leader, which is one of them and says so.
async fn wait_for_leader(nodes: &[&TestNode], what: &str) -> NodeId {
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics: Vec<RaftMetrics> = nodes.iter().map(|node| node.metrics()).collect();
        let leader = metrics[0].current_leader;
        if let Some(leader) = leader {
            let agreed = metrics.iter().all(|m| m.current_leader == Some(leader));
            let is_leader = metrics.iter().any(|m| m.id == leader && m.state == ServerState::Leader);
            if agreed && is_leader {
                return leader;
            }
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = metrics.iter().map(|m| format!("{m}")).collect();
            panic!("no agreed leader within {WAIT:?} ({what}): {summary:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node<'a>(nodes: &[&'a TestNode], id: NodeId) -> &'a TestNode {
    nodes.iter().find(|node| node.id == id).unwrap_or_else(|| panic!("no live node {id}"))
}

/// Proposes on whichever node leads, retrying with the same commands (the same idempotency
/// keys) while leadership moves, until the proposal is acknowledged.
async fn propose_until_acknowledged(nodes: &[&TestNode], commands: &[Command]) -> Vec<CommandOutcome> {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = nodes.iter().find(|node| node.metrics().state == ServerState::Leader);
        if let Some(leader) = leader {
            let proposer = leader.group.proposer.as_ref().unwrap();
            match proposer.propose(commands.to_vec()).await {
                Ok(outcomes) => return outcomes,
                Err(ProposeError::NotLeader { .. } | ProposeError::Unavailable { .. }) => {}
                Err(error) => panic!("unexpected proposal error: {error}"),
            }
        }
        assert!(Instant::now() < deadline, "no proposal acknowledged within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes until acknowledged and checks every command succeeded. A retry after an error
/// that hid a commit answers with replays; the stored first answers are returned either way.
async fn acknowledge(nodes: &[&TestNode], commands: &[Command]) -> Vec<CommandOutcome> {
    let outcomes = propose_until_acknowledged(nodes, commands).await;
    assert_outcomes(&outcomes, commands, outcomes[0].replay);
    outcomes.into_iter().map(|outcome| CommandOutcome { replay: false, ..outcome }).collect()
}

/// Writes to the meta group on whichever node leads it, after checking that a follower refuses.
async fn meta_write_until_acknowledged(nodes: &[&TestNode], command: MetaCommand) {
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics: Vec<RaftMetrics> =
            nodes.iter().map(|node| node.meta().raft.metrics().borrow().clone()).collect();
        let leader = metrics.iter().find(|m| m.state == ServerState::Leader).map(|m| m.id);
        if let Some(leader) = leader {
            if let Some(follower) = nodes.iter().find(|node| node.id != leader) {
                let request = GroupRequest::Meta { log_time_ms: wall_clock_ms(), command: command.clone() };
                match follower.meta().raft.client_write(request).await {
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                    other => panic!("meta follower {} must refuse a write: {other:?}", follower.id),
                }
            }
            let request = GroupRequest::Meta { log_time_ms: wall_clock_ms(), command: command.clone() };
            if let Ok(response) = node(nodes, leader).meta().raft.client_write(request).await {
                match response.data {
                    GroupResponse::Meta(Ok(_)) => return,
                    other => panic!("meta write {command:?} failed: {other:?}"),
                }
            }
        }
        assert!(Instant::now() < deadline, "no meta write acknowledged within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node's meta group applied its leader's log and holds the same meta state.
async fn assert_meta_converged(nodes: &[&TestNode], what: &str) -> Arc<MetaState> {
    let leader = nodes
        .iter()
        .find(|node| node.meta().raft.metrics().borrow().state == ServerState::Leader)
        .unwrap_or_else(|| panic!("{what}: no meta leader"));
    let last_log_index = leader.meta().raft.metrics().borrow().last_log_index;
    let reference = leader.meta().shared.meta_state();
    for node in nodes {
        node.meta()
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(last_log_index, what)
            .await
            .unwrap_or_else(|error| panic!("{what}: meta group of node {} lags: {error}", node.id));
        assert_eq!(*node.meta().shared.meta_state(), *reference, "{what}: meta state of node {}", node.id);
        assert_eq!(node.meta().shared.read().applied, leader.meta().shared.read().applied);
    }
    reference
}

/// Waits until every node applied everything the leader has in its log, then checks that all
/// replicas hold identical state: applied id, digest, membership, ledger and statements.
async fn assert_converged(nodes: &[&TestNode], leader: NodeId, what: &str) -> Ledger {
    let last_log_index = node(nodes, leader).metrics().last_log_index.expect("the leader has a log");
    for node in nodes {
        node.wait_applied(last_log_index, what).await;
    }
    let reference = fingerprint(&node(nodes, leader).group.shared);
    let reference_ledger = ledger(&node(nodes, leader).group.shared);
    let reference_lines = all_statement_lines(&node(nodes, leader).group.shared, &reference_ledger);
    for node in nodes {
        let shared = &node.group.shared;
        assert_eq!(fingerprint(shared), reference, "{what}: node {} differs from leader {leader}", node.id);
        let node_ledger = ledger(shared);
        assert_eq!(node_ledger, reference_ledger, "{what}: ledger of node {}", node.id);
        assert_eq!(
            all_statement_lines(shared, &node_ledger),
            reference_lines,
            "{what}: lines of node {}",
            node.id
        );
    }
    reference_ledger
}

/// Every acknowledged command is in the ledger exactly as acknowledged: same request, first
/// applied at the acknowledged log index.
fn assert_acknowledged(ledger: &Ledger, acknowledged: &[(Vec<Command>, Vec<CommandOutcome>)]) {
    for (commands, outcomes) in acknowledged {
        for (command, outcome) in commands.iter().zip(outcomes) {
            let (operation, stored) = ledger
                .operation(&command.partner_id, &command.idempotency_key)
                .unwrap_or_else(|| panic!("acknowledged {} is missing", command.idempotency_key));
            assert_eq!(operation, command.operation, "{}", command.idempotency_key);
            assert!(!stored.replay);
            assert_eq!(
                (stored.log_index, stored.log_time_ms, &stored.result),
                (outcome.log_index, outcome.log_time_ms, &outcome.result),
                "{}: the stored first answer is the acknowledged one",
                command.idempotency_key
            );
        }
    }
}

fn replication_tuning() -> RaftTuning {
    RaftTuning { snapshot_logs_since_last: 20, logs_kept_after_snapshot: 5, ..fast_tuning() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up_a_learner_by_snapshot() {
    let started = Instant::now();
    let tuning = replication_tuning();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(TestNode::start(id, &tuning, true).await);
    }
    let members: BTreeMap<NodeId, _> = nodes.iter().map(|node| (node.id, node_info(&node.addr))).collect();
    nodes[0].group.raft.initialize(members.clone()).await.expect("initialize on node 1");
    nodes[0].meta().raft.initialize(members.clone()).await.expect("initialize the meta group on node 1");

    // --- replication
    let all: Vec<&TestNode> = nodes.iter().collect();
    let leader = wait_for_leader(&all, "initial election").await;
    for follower in all.iter().filter(|node| node.id != leader) {
        // An enrol moves no points, so the balances stay predictable even if it were applied.
        let probe = command(
            &format!("probe-{}", follower.id),
            tally_ledger::Operation::Enrol { member_id: member(0), currency: currency_of(0) },
        );
        let refused = follower.group.proposer.as_ref().unwrap().propose(vec![probe]).await;
        match refused {
            Err(ProposeError::NotLeader { leader_id, leader: Some(leader_node), .. }) => {
                assert_eq!(leader_id, Some(leader), "follower {} names the leader", follower.id);
                assert_eq!(leader_node, members[&leader], "with its address");
            }
            other => panic!("a proposal to follower {} must be refused: {other:?}", follower.id),
        }
    }
    let mut acknowledged: Vec<(Vec<Command>, Vec<CommandOutcome>)> = Vec::new();
    for round in 0..10 {
        let commands = round_commands(round);
        let outcomes = acknowledge(&all, &commands).await;
        acknowledged.push((commands, outcomes));
    }
    let converged = assert_converged(&all, leader, "three replicas after 10 rounds").await;
    assert_ledger_after_rounds(&converged, 10, "three replicas");
    assert_acknowledged(&converged, &acknowledged);
    let partner_created = MetaCommand::CreatePartner {
        partner_id: partner(),
        display_name: "Sky Air".into(),
        currency: currency_of(0),
        api_key_sha256: "00".repeat(32),
    };
    meta_write_until_acknowledged(&all, partner_created).await;
    assert_meta_converged(&all, "three replicas").await;

    // --- failover: the leader dies with a proposal in flight.
    let in_flight_commands = round_commands(10);
    let in_flight = {
        let group = node(&all, leader).group.clone();
        let commands = in_flight_commands.clone();
        tokio::spawn(async move { group.proposer.as_ref().unwrap().propose(commands).await })
    };
    tokio::task::yield_now().await;
    let old_leader = leader;
    let failed_at = Instant::now();
    nodes.iter_mut().find(|node| node.id == old_leader).unwrap().stop().await;
    let in_flight = in_flight.await.unwrap();
    let survivors: Vec<&TestNode> = nodes.iter().filter(|node| node.id != old_leader).collect();
    let leader = wait_for_leader(&survivors, "election after the leader stopped").await;
    assert_ne!(leader, old_leader);
    let failover = failed_at.elapsed();
    assert!(failover < Duration::from_secs(5), "a new leader took {failover:?}");

    // The client retries the in-flight round with the same keys: applied once either way.
    let retried = propose_until_acknowledged(&survivors, &in_flight_commands).await;
    match &in_flight {
        Ok(first) => {
            assert_outcomes(first, &in_flight_commands, false);
            let replays: Vec<CommandOutcome> =
                first.iter().map(|outcome| CommandOutcome { replay: true, ..outcome.clone() }).collect();
            assert_eq!(retried, replays, "acknowledged before the crash, so the retry is a replay");
        }
        Err(_) => {
            // Lost or committed without an answer: either every command replays or none does.
            let replay = retried[0].replay;
            assert_outcomes(&retried, &in_flight_commands, replay);
        }
    }
    let first_answers: Vec<CommandOutcome> =
        retried.iter().map(|outcome| CommandOutcome { replay: false, ..outcome.clone() }).collect();
    acknowledged.push((in_flight_commands, first_answers));
    for round in 11..30 {
        let commands = round_commands(round);
        let outcomes = acknowledge(&survivors, &commands).await;
        acknowledged.push((commands, outcomes));
    }
    // Retrying an early round on the new leader is a replay too.
    let replays = propose_until_acknowledged(&survivors, &acknowledged[3].0).await;
    assert_outcomes(&replays, &acknowledged[3].0, true);
    let leader = wait_for_leader(&survivors, "after the rounds on the new leader").await;
    let converged = assert_converged(&survivors, leader, "two survivors after 30 rounds").await;
    assert_ledger_after_rounds(&converged, 30, "two survivors");
    assert_acknowledged(&converged, &acknowledged);
    // The meta group lost a voter too (its leader, maybe) and still takes writes.
    let rotated = MetaCommand::RotatePartnerKey { partner_id: partner(), api_key_sha256: "11".repeat(32) };
    meta_write_until_acknowledged(&survivors, rotated).await;
    let meta = assert_meta_converged(&survivors, "two survivors").await;
    assert_eq!(meta.partners[&partner()].api_key_sha256, "11".repeat(32));

    // --- a learner that must catch up from a snapshot: the leader has purged its early log.
    // The tuning snapshots every 20 entries, but `RaftTuning` sets openraft's
    // `purge_batch_size` to 256, so nothing is purged by itself before ~260 entries: purge
    // explicitly up to the snapshot.
    let leader_raft = node(&survivors, leader).group.raft.clone();
    let snapshot = leader_raft.metrics().borrow().snapshot;
    let snapshot = snapshot.unwrap_or_else(|| panic!("30+ entries and a snapshot every 20, yet none"));
    leader_raft.trigger().purge_log(snapshot.index).await.unwrap();
    leader_raft
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|purged| purged.index > 0), "purge")
        .await
        .unwrap_or_else(|error| panic!("the leader did not purge its log up to {snapshot}: {error}"));
    let purged = leader_raft.metrics().borrow().purged.unwrap();
    drop(survivors);
    nodes.push(TestNode::start(4, &tuning, false).await);
    let learner = nodes.last().unwrap();
    assert_eq!(learner.metrics().last_applied, None, "the learner starts empty");
    leader_raft.add_learner(4, node_info(&learner.addr), true).await.expect("add the learner");

    let live: Vec<&TestNode> = nodes.iter().filter(|node| node.id != old_leader).collect();
    let converged = assert_converged(&live, leader, "two voters and the learner").await;
    assert_ledger_after_rounds(&converged, 30, "with the learner");
    assert_acknowledged(&converged, &acknowledged);
    let learner_metrics = node(&live, 4).metrics();
    assert_eq!(learner_metrics.state, ServerState::Learner);
    let installed = learner_metrics.snapshot.expect("the learner installed a snapshot");
    assert!(installed.index >= purged.index, "snapshot at {installed} covers the purged log up to {purged}");
    let learner_snapshot =
        node(&live, 4).group.raft.get_snapshot().await.unwrap().expect("a current snapshot");
    assert_eq!(learner_snapshot.meta.last_log_id, Some(installed));
    // It never received the early log: its own log starts after the snapshot.
    let mut learner_log = node(&live, 4).store.log_store::<TallyRaft>(SHARD).unwrap();
    let early = learner_log.try_get_log_entries(0..=purged.index).await.unwrap();
    assert!(early.is_empty(), "the learner holds purged entries from {:?}", early.first().map(|e| e.log_id));

    // The learner follows the log after its snapshot too.
    let commands = round_commands(30);
    acknowledge(&live, &commands).await;
    let converged = assert_converged(&live, leader, "after a round with the learner").await;
    assert_ledger_after_rounds(&converged, 31, "after a round with the learner");

    for node in nodes.iter_mut().filter(|node| node.id != old_leader) {
        node.stop().await;
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
