//! A real multi-node cluster: three `tally node` processes, `tally cluster init`, and two
//! `tally gateway` processes (half the writers on each), under a mixed workload (earns and member-to-member transfers, many
//! across shards, some requests re-sent with the same key) while the node leading the most
//! shards is killed with SIGKILL and restarted, a fourth node is added and given a shard
//! replica and a shard's leadership, and a node is removed. At the end: every acknowledged
//! write is present exactly once (balances equal the writer's model), points are conserved,
//! and every replica of every group has the same state digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_gateway::transfer::{transfer_id, CrossShardTransfer};
use tally_ledger::routing::shard_of_member;
use tally_ledger::{CurrencyCode, IdempotencyKey, MemberId, PartnerId};
use tally_node::api::{NodeRequest, NodeResponse};
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    AddNodeRequest, ClusterStatusReply, ClusterStatusRequest, CreatePartnerRequest, EarnRequest,
    GetBalanceRequest, MoveLeaderRequest, MoveReplicaRequest, RemoveNodeRequest, TransferRequest,
    TriggerSnapshotRequest,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

const SHARDS: u32 = 8;
const MEMBERS: u64 = 24;
const WRITERS: usize = 4;
/// Writes must resume this soon after the leader of the most shards is killed: an election
/// (timeout 1-2 s), then the gateway's retries (documented in docs/operations.md).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

/// One `tally` process, killed when dropped; its output goes to a log file.
struct Process {
    name: String,
    log: PathBuf,
    child: Child,
}

impl Process {
    fn spawn(name: &str, dir: &Path, args: &[&str]) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = tally()
            .args(args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Process { name: name.to_string(), log, child }
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    dir: PathBuf,
    node_addrs: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, Process>,
    gateways: Vec<Process>,
}

impl Cluster {
    fn start_node(&mut self, node_id: u64) {
        let addr = self.node_addrs.entry(node_id).or_insert_with(free_addr).clone();
        let data_dir = self.dir.join(format!("node{node_id}"));
        let process = Process::spawn(
            &format!("node{node_id}"),
            &self.dir,
            &[
                "node",
                "--node-id",
                &node_id.to_string(),
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                &addr,
                "--advertise",
                &addr,
                "--no-metrics",
                "--shards",
                &SHARDS.to_string(),
            ],
        );
        self.nodes.insert(node_id, process);
    }

    fn logs(&self) -> String {
        self.nodes
            .values()
            .chain(&self.gateways)
            .map(|process| format!("--- {}:\n{}\n", process.name, process.log_tail()))
            .collect()
    }
}

async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            Ok(channel) => return channel,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("nothing listens on {addr}: {error}"),
        }
    }
}

fn authorized<T>(message: T, api_key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(format!("Bearer {api_key}")).unwrap());
    // Longer than the gateway's own deadline (5 s), so that the gateway's answer arrives.
    request.set_timeout(Duration::from_secs(8));
    request
}

fn member(index: u64) -> String {
    format!("member-{index}")
}

/// What the writers know: expected balance per member (from acknowledged writes only), and
/// counts for the report.
#[derive(Default)]
struct Model {
    balances: BTreeMap<String, u64>,
    acknowledged: u64,
    refused: u64,
    retries: u64,
    replays_checked: u64,
}

/// Sends one write until it has a definitive answer, always with the same key (a lost or
/// unavailable answer is retried; the cluster applies the key once). `Ok(true)`: applied;
/// `Ok(false)`: refused by the ledger (changes nothing).
async fn write_until_answered(
    ledger: &mut LedgerClient<Channel>,
    api_key: &str,
    operation: &Operation,
    model: &Mutex<Model>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let result = match operation {
            Operation::Earn { key, member, points } => ledger
                .earn(authorized(
                    EarnRequest {
                        idempotency_key: key.clone(),
                        member_id: member.clone(),
                        amount_points: *points,
                    },
                    api_key,
                ))
                .await
                .map(|reply| reply.into_inner()),
            Operation::Transfer { key, from, to, points } => ledger
                .transfer(authorized(
                    TransferRequest {
                        idempotency_key: key.clone(),
                        from_member_id: from.clone(),
                        to_member_id: to.clone(),
                        amount_points: *points,
                    },
                    api_key,
                ))
                .await
                .map(|reply| reply.into_inner()),
        };
        match result {
            Ok(_) => return true,
            Err(status) if status.code() == Code::FailedPrecondition => return false,
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                ) && Instant::now() < deadline =>
            {
                model.lock().unwrap().retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{operation:?} failed for good: {status:?}"),
        }
    }
}

#[derive(Clone, Debug)]
enum Operation {
    Earn { key: String, member: String, points: u64 },
    Transfer { key: String, from: String, to: String, points: u64 },
}

async fn writer(
    writer_index: usize,
    channel: Channel,
    api_key: String,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    in_flight: Arc<AtomicU64>,
) {
    let mut ledger = LedgerClient::new(channel);
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        sequence += 1;
        // A fixed mix: a third earns, two thirds transfers (most across shards).
        let pick = sequence.wrapping_mul(2_654_435_761).wrapping_add(writer_index as u64 * 97);
        let key = format!("w{writer_index}-{sequence}");
        let operation = if sequence.is_multiple_of(3) {
            Operation::Earn { key, member: member(pick % MEMBERS), points: 50 + pick % 50 }
        } else {
            let from = pick % MEMBERS;
            let to = (from + 1 + (pick / MEMBERS) % (MEMBERS - 1)) % MEMBERS;
            Operation::Transfer { key, from: member(from), to: member(to), points: 1 + pick % 20 }
        };
        let applied = write_until_answered(&mut ledger, &api_key, &operation, &model).await;
        {
            let mut model = model.lock().unwrap();
            if applied {
                model.acknowledged += 1;
                match &operation {
                    Operation::Earn { member, points, .. } => {
                        *model.balances.entry(member.clone()).or_default() += points
                    }
                    Operation::Transfer { from, to, points, .. } => {
                        let sender = model.balances.entry(from.clone()).or_default();
                        *sender = sender.checked_sub(*points).expect("the ledger refused overdrafts");
                        *model.balances.entry(to.clone()).or_default() += points;
                    }
                }
            } else {
                model.refused += 1;
            }
        }
        // Every fifth acknowledged write is sent again: it must replay, not apply twice.
        if applied && sequence.is_multiple_of(5) {
            assert!(
                write_until_answered(&mut ledger, &api_key, &operation, &model).await,
                "a replay is an answer"
            );
            model.lock().unwrap().replays_checked += 1;
        }
        in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn status(admin: &mut AdminClient<Channel>) -> ClusterStatusReply {
    let mut request = Request::new(ClusterStatusRequest {});
    request.set_timeout(Duration::from_secs(10));
    admin.cluster_status(request).await.unwrap().into_inner()
}

/// Waits until every replica of every group has applied its leader's last entry and all
/// replicas of a group have the same digest (call with writes paused).
async fn wait_replicas_identical(admin: &mut AdminClient<Channel>, expected_nodes: usize, cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = status(admin).await;
        let mut by_group: BTreeMap<u32, Vec<(u64, u64, String, String)>> = BTreeMap::new();
        for group in &reply.groups {
            if group.voters.is_empty() && group.learners.is_empty() {
                continue;
            }
            by_group.entry(group.group_id).or_default().push((
                group.node_id,
                group.applied_index,
                group.state_digest.clone(),
                group.role.clone(),
            ));
        }
        let reachable = reply.nodes.iter().filter(|node| node.reachable).count();
        let converged = reachable == expected_nodes
            && by_group.len() == SHARDS as usize + 1
            && by_group.values().all(|replicas| {
                replicas.iter().any(|replica| replica.3 == "leader")
                    && replicas.iter().all(|replica| replica.1 == replicas[0].1 && replica.2 == replicas[0].2)
            })
            && reply.groups.iter().all(|group| group.lag_entries == 0);
        if converged {
            return;
        }
        if Instant::now() > deadline {
            panic!("replicas did not converge: {by_group:#?}\n{}", cluster.logs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn pause_writers(paused: &AtomicBool, in_flight: &AtomicU64) {
    paused.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(120);
    while in_flight.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < deadline, "writers did not finish their writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_conserved(reply: &ClusterStatusReply) {
    assert!(!reply.currency_totals.is_empty());
    for total in &reply.currency_totals {
        assert_eq!(total.debits_points, total.credits_points, "{} is not conserved", total.currency);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_node_cluster_survives_kill_restart_and_reshaping_under_load() {
    let temp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster {
        dir: temp.path().to_path_buf(),
        node_addrs: BTreeMap::new(),
        nodes: BTreeMap::new(),
        gateways: Vec::new(),
    };
    for node_id in 1..=3 {
        cluster.start_node(node_id);
    }
    let node_list = (1..=3).map(|id| cluster.node_addrs[&id].clone()).collect::<Vec<_>>().join(",");
    let init =
        tally().args(["cluster", "init", "--nodes", &node_list, "--wait-secs", "60"]).output().unwrap();
    assert!(
        init.status.success(),
        "cluster init failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr),
        cluster.logs()
    );
    let init_output = String::from_utf8_lossy(&init.stdout);
    assert!(init_output.contains("every group has a leader"), "{init_output}");

    // Two gateways: any of them serves any request.
    let gateway_addrs = [free_addr(), free_addr()];
    for (index, addr) in gateway_addrs.iter().enumerate() {
        cluster.gateways.push(Process::spawn(
            &format!("gateway{index}"),
            &cluster.dir,
            &["gateway", "--listen", addr, "--nodes", &node_list, "--no-metrics"],
        ));
    }
    let channel = connect(&gateway_addrs[0]).await;
    let second_gateway = connect(&gateway_addrs[1]).await;
    let mut admin = AdminClient::new(channel.clone());
    let before = status(&mut admin).await;
    assert_eq!(before.nodes.len(), 3);
    assert!(before.nodes.iter().all(|node| node.reachable && node.healthy), "{:?}", before.nodes);
    // First leaders are spread: every node leads at least two of the eight shards.
    for node_id in 1..=3u64 {
        let led = before.shards.iter().filter(|shard| shard.leader_node_id == node_id).count();
        assert!(led >= 2, "node {node_id} leads {led} shards: {:?}", before.shards);
    }

    let api_key = admin
        .create_partner(CreatePartnerRequest {
            partner_id: "air".into(),
            display_name: "Air".into(),
            currency: "AIR".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_key;
    // Give every member a starting balance so transfers mostly succeed. Through the second
    // gateway, right after the partner was created through the first: its new key must work
    // there at once.
    let model = Arc::new(Mutex::new(Model::default()));
    {
        let mut ledger = LedgerClient::new(second_gateway.clone());
        for index in 0..MEMBERS {
            let operation =
                Operation::Earn { key: format!("start-{index}"), member: member(index), points: 1_000 };
            assert!(write_until_answered(&mut ledger, &api_key, &operation, &model).await);
            *model.lock().unwrap().balances.entry(member(index)).or_default() += 1_000;
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            // Half the writers go through the second gateway.
            let gateway = if index % 2 == 0 { channel.clone() } else { second_gateway.clone() };
            tokio::spawn(writer(
                index,
                gateway,
                api_key.clone(),
                model.clone(),
                stop.clone(),
                paused.clone(),
                in_flight.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Kill -9 the node leading the most shards; a write to one of its shards must go through
    // within the bound.
    let reply = status(&mut admin).await;
    let victim = (1..=3u64)
        .max_by_key(|node_id| reply.shards.iter().filter(|shard| shard.leader_node_id == *node_id).count())
        .unwrap();
    let victim_shard = reply.shards.iter().find(|shard| shard.leader_node_id == victim).unwrap().shard;
    let probe_member = (0..)
        .map(|index| format!("probe-{index}"))
        .find(|name| shard_of_member(&MemberId::parse(name.clone()).unwrap(), SHARDS) == victim_shard)
        .unwrap();
    cluster.nodes.get_mut(&victim).unwrap().kill_9();
    let killed_at = Instant::now();
    let probe = Operation::Earn { key: "failover-probe".into(), member: probe_member.clone(), points: 7 };
    let mut probe_ledger = LedgerClient::new(channel.clone());
    assert!(write_until_answered(&mut probe_ledger, &api_key, &probe, &model).await);
    let failover = killed_at.elapsed();
    *model.lock().unwrap().balances.entry(probe_member).or_default() += 7;
    println!("failover: node {victim} (leading shard {victim_shard} and others) killed; first write to that shard after {failover:?}");
    assert!(failover < FAILOVER_BOUND, "writes resumed only after {failover:?}\n{}", cluster.logs());
    let degraded = status(&mut admin).await;
    assert!(degraded.nodes.iter().any(|node| node.node_id == victim && !node.reachable));

    // Restart it on its data folder: it rejoins by itself and catches up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_node(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pause_writers(&paused, &in_flight).await;
    wait_replicas_identical(&mut admin, 3, &cluster).await;
    assert_conserved(&status(&mut admin).await);
    paused.store(false, Ordering::SeqCst);

    // A fourth node joins; a shard replica and then the shard's leadership move to it, under load.
    cluster.start_node(4);
    let node4 = cluster.node_addrs[&4].clone();
    let _ = connect(&node4).await;
    admin.add_node(AddNodeRequest { address: node4.clone() }).await.unwrap();
    let layout = status(&mut admin).await;

    // Refused operator requests name the problem and change nothing.
    let placement = |reply: &ClusterStatusReply| {
        let shards: Vec<_> =
            reply.shards.iter().map(|shard| (shard.replicas.clone(), shard.placement_version)).collect();
        let nodes: Vec<_> = reply.nodes.iter().map(|node| node.node_id).collect();
        (shards, nodes)
    };
    let not_replica = (1..=4).find(|id| !layout.shards[0].replicas.contains(id)).unwrap();
    let refusals = [
        (
            admin.move_replica(MoveReplicaRequest { shard: 0, from_node_id: 1, to_node_id: 1 }).await.err(),
            Code::InvalidArgument,
            "must differ",
        ),
        (
            admin.move_replica(MoveReplicaRequest { shard: 99, from_node_id: 1, to_node_id: 4 }).await.err(),
            Code::FailedPrecondition,
            "no shard 99",
        ),
        (
            admin
                .move_replica(MoveReplicaRequest { shard: 0, from_node_id: not_replica, to_node_id: 1 })
                .await
                .err(),
            Code::FailedPrecondition,
            "holds no replica",
        ),
        (
            admin.move_leader(MoveLeaderRequest { shard: 0, to_node_id: not_replica }).await.err(),
            Code::FailedPrecondition,
            "holds no replica",
        ),
        (
            admin.add_node(AddNodeRequest { address: node4.clone() }).await.err(),
            Code::FailedPrecondition,
            "already part of the cluster",
        ),
        (
            admin.add_node(AddNodeRequest { address: String::new() }).await.err(),
            Code::InvalidArgument,
            "address",
        ),
        (
            admin.remove_node(RemoveNodeRequest { node_id: 99 }).await.err(),
            Code::FailedPrecondition,
            "not part of the cluster",
        ),
    ];
    for (refused, code, named) in refusals {
        let refused = refused.expect("the request is refused");
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().contains(named), "{refused:?} should say {named:?}");
    }
    assert_eq!(
        placement(&status(&mut admin).await),
        placement(&layout),
        "a refused request changed the layout"
    );

    let moved = &layout.shards[0];
    let (moved_shard, from) =
        (moved.shard, *moved.replicas.iter().find(|id| **id != moved.leader_node_id).unwrap());
    let steps = admin
        .move_replica(MoveReplicaRequest { shard: moved_shard, from_node_id: from, to_node_id: 4 })
        .await
        .unwrap_or_else(|status| panic!("move failed: {status:?}\n{}", cluster.logs()))
        .into_inner()
        .steps;
    println!("move replica: {steps:#?}");
    let steps = admin
        .move_leader(MoveLeaderRequest { shard: moved_shard, to_node_id: 4 })
        .await
        .unwrap_or_else(|status| panic!("leader move failed: {status:?}\n{}", cluster.logs()))
        .into_inner()
        .steps;
    println!("move leader: {steps:#?}");
    let reshaped = status(&mut admin).await;
    let placement = &reshaped.shards[moved_shard as usize];
    assert!(placement.replicas.contains(&4) && !placement.replicas.contains(&from), "{placement:?}");
    assert_eq!(placement.leader_node_id, 4, "{placement:?}");
    admin.trigger_snapshot(TriggerSnapshotRequest { shard: None }).await.unwrap();

    // Remove node 2 (a meta voter holding replicas): its replicas move away, under load.
    let steps = admin
        .remove_node(RemoveNodeRequest { node_id: 2 })
        .await
        .unwrap_or_else(|status| panic!("remove failed: {status:?}\n{}", cluster.logs()))
        .into_inner()
        .steps;
    println!("remove node 2: {steps:#?}");
    let after_removal = status(&mut admin).await;
    assert!(after_removal
        .shards
        .iter()
        .all(|shard| !shard.replicas.contains(&2) && shard.replicas.len() == 3));
    assert!(!after_removal.nodes.iter().any(|node| node.node_id == 2));
    cluster.nodes.remove(&2);

    // A gateway that dies between transfer steps, played by sending the steps straight to the
    // node API: after step 1 only, and after steps 1 and 2. The resolver on the sender shard's
    // leader must finish both, paying each recipient once.
    let cluster_client = tally::cluster_client::ClusterClient::new(
        vec![cluster.node_addrs[&1].clone()],
        Duration::from_secs(2),
    );
    assert!(cluster_client.wait_for_layout(Duration::from_secs(10)).await);
    let partner = PartnerId::parse("air").unwrap();
    let mut interrupted = Vec::new();
    for (case, steps_done) in [("after-out", 1), ("after-in", 2)] {
        let (from, to) = (0..)
            .map(|index| (format!("resolve-{case}-{index}"), format!("resolve-{case}-to-{index}")))
            .find(|(from, to)| {
                shard_of_member(&MemberId::parse(from.clone()).unwrap(), SHARDS)
                    != shard_of_member(&MemberId::parse(to.clone()).unwrap(), SHARDS)
            })
            .unwrap();
        let mut ledger = LedgerClient::new(channel.clone());
        let fund = Operation::Earn { key: format!("fund-{case}"), member: from.clone(), points: 500 };
        assert!(write_until_answered(&mut ledger, &api_key, &fund, &model).await);
        let key = IdempotencyKey::parse(format!("interrupted-{case}")).unwrap();
        let transfer = CrossShardTransfer {
            transfer_id: transfer_id(&partner, &key).unwrap(),
            partner_id: partner.clone(),
            idempotency_key: key,
            from_member_id: MemberId::parse(from.clone()).unwrap(),
            to_member_id: MemberId::parse(to.clone()).unwrap(),
            currency: CurrencyCode::parse("AIR").unwrap(),
            amount_points: 123,
            from_shard: shard_of_member(&MemberId::parse(from.clone()).unwrap(), SHARDS),
            to_shard: shard_of_member(&MemberId::parse(to.clone()).unwrap(), SHARDS),
        };
        let mut steps = vec![(transfer.from_shard, transfer.out_command())];
        if steps_done == 2 {
            steps.push((transfer.to_shard, transfer.in_command()));
        }
        for (shard, command) in steps {
            let request = NodeRequest::Submit { shard, commands: vec![command] };
            let answer = cluster_client.call_group(shard + 1, &request, true).await.unwrap();
            let NodeResponse::Outcomes(outcomes) = answer else { panic!("{answer:?}") };
            assert!(outcomes[0].result.is_ok(), "{outcomes:?}");
        }
        let mut model = model.lock().unwrap();
        *model.balances.entry(from.clone()).or_default() += 500 - 123;
        *model.balances.entry(to.clone()).or_default() += 123;
        interrupted.push((to, transfer.from_shard));
    }
    // The resolver leaves a record alone for 2 s, then looks every second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ledger = LedgerClient::new(channel.clone());
    for (recipient, _) in &interrupted {
        loop {
            let read = ledger
                .get_balance(authorized(
                    GetBalanceRequest { member_id: recipient.clone(), consistency: 0 },
                    &api_key,
                ))
                .await;
            if read.is_ok_and(|reply| {
                reply.into_inner().balance.is_some_and(|balance| balance.balance_points == 123)
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "the resolver did not finish the transfer to {recipient}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    println!("resolver finished transfers interrupted after step 1 and after step 2");

    // Let the writers run a little on the final shape, then stop them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    wait_replicas_identical(&mut admin, 3, &cluster).await;

    // Every acknowledged write exactly once: each balance is what the model expects.
    let final_status = status(&mut admin).await;
    assert_conserved(&final_status);
    let model = std::mem::take(&mut *model.lock().unwrap());
    let mut ledger = LedgerClient::new(channel.clone());
    for (member_id, expected) in &model.balances {
        let reply = ledger
            .get_balance(authorized(
                GetBalanceRequest { member_id: member_id.clone(), consistency: 0 },
                &api_key,
            ))
            .await
            .unwrap()
            .into_inner();
        let balance = reply.balance.unwrap();
        assert_eq!(balance.balance_points, *expected, "{member_id}: cluster and model disagree");
    }
    println!(
        "acknowledged {} writes ({} refused by the ledger, {} retries after unavailability, {} replays checked), \
         failover {failover:?}",
        model.acknowledged, model.refused, model.retries, model.replays_checked
    );
    assert!(model.acknowledged > 100, "the workload ran");
    let expected_member_0 = model.balances[&member(0)];

    // Two of the three nodes gone: no shard has a quorum. Writes and linearizable reads answer
    // UNAVAILABLE with the cause within the gateway's deadline; a stale read still answers
    // from the surviving replica and says how stale it may be.
    cluster.nodes.get_mut(&3).unwrap().kill_9();
    cluster.nodes.get_mut(&4).unwrap().kill_9();
    let started = Instant::now();
    let mut request = authorized(
        EarnRequest { idempotency_key: "no-quorum".into(), member_id: member(0), amount_points: 1 },
        &api_key,
    );
    request.set_timeout(Duration::from_secs(15));
    let refused = ledger.earn(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("retry with the same idempotency key"), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(12), "answered after {:?}", started.elapsed());
    println!("no quorum: {:?} after {:?}", refused.message(), started.elapsed());
    let mut request = authorized(GetBalanceRequest { member_id: member(0), consistency: 0 }, &api_key);
    request.set_timeout(Duration::from_secs(15));
    assert_eq!(ledger.get_balance(request).await.unwrap_err().code(), Code::Unavailable);
    let stale = ledger
        .get_balance(authorized(GetBalanceRequest { member_id: member(0), consistency: 2 }, &api_key))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.linearizable && stale.staleness_bound_ms > 0, "{stale:?}");
    assert_eq!(stale.balance.unwrap().balance_points, expected_member_0, "nothing changed since");
}
