//! A cluster of real `tally` processes for tests: node and gateway processes (killed when
//! dropped, output in a log file per process), clients, a writer workload with a model of
//! what was acknowledged, and the end-of-run checks (replicas identical, points conserved).

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{ClusterStatusReply, ClusterStatusRequest, EarnRequest, TransferRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Members the writers pick from.
pub const MEMBERS: u64 = 24;

pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The cluster token of every test cluster: each `tally` process started here (nodes,
/// gateways, `cluster init`) gets it through `TALLY_CLUSTER_TOKEN`, so the internal calls of
/// these tests all carry it and are all checked.
pub const CLUSTER_TOKEN: &str = "process-cluster-test-token";

pub fn cluster_token() -> tally_raft::ClusterToken {
    tally_raft::ClusterToken::parse(CLUSTER_TOKEN).expect("a valid token")
}

pub fn tally() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command.env("TALLY_CLUSTER_TOKEN", CLUSTER_TOKEN);
    command
}

/// One `tally` process, killed when dropped; its output goes to a log file.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    pub child: Child,
}

impl Process {
    pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Process {
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

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The exit status if the process ends within `timeout`, else `None` (it keeps running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole log of the process so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    /// Shard count of every node (`--shards`).
    pub shards: u32,
    /// Added to every `tally node` command line (for example `--config FILE`).
    pub node_args: Vec<String>,
    pub node_addrs: BTreeMap<u64, String>,
    pub nodes: BTreeMap<u64, Process>,
    pub gateways: Vec<Process>,
}

impl Cluster {
    pub fn new(dir: &Path, shards: u32) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            shards,
            node_args: Vec::new(),
            node_addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            gateways: Vec::new(),
        }
    }

    /// The data folder of `node_id` (kept across restarts).
    pub fn data_dir(&self, node_id: u64) -> PathBuf {
        self.dir.join(format!("node{node_id}"))
    }

    /// The `tally node` arguments of `node_id` (its address is chosen on first use).
    pub fn node_command(&mut self, node_id: u64) -> Vec<String> {
        let addr = self.node_addrs.entry(node_id).or_insert_with(free_addr).clone();
        let data_dir = self.data_dir(node_id);
        let mut args: Vec<String> = [
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
            &self.shards.to_string(),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.extend(self.node_args.iter().cloned());
        args
    }

    pub fn start_node(&mut self, node_id: u64) {
        let args = self.node_command(node_id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = Process::spawn(&format!("node{node_id}"), &self.dir, &args);
        self.nodes.insert(node_id, process);
    }

    /// The node ids and addresses joined for `--nodes`.
    pub fn node_list(&self) -> String {
        self.node_addrs.values().cloned().collect::<Vec<_>>().join(",")
    }

    /// Every panic message in the processes' logs, with the lines that follow it.
    pub fn panics(&self) -> String {
        let mut found = String::new();
        for process in self.nodes.values().chain(&self.gateways) {
            let text = process.log_text();
            let lines: Vec<&str> = text.lines().collect();
            for (index, line) in lines.iter().enumerate() {
                if line.contains("panicked at") {
                    let end = (index + 4).min(lines.len());
                    found.push_str(&format!("--- {}:\n{}\n", process.name, lines[index..end].join("\n")));
                }
            }
        }
        found
    }

    pub fn logs(&self) -> String {
        self.nodes
            .values()
            .chain(&self.gateways)
            .map(|process| format!("--- {}:\n{}\n", process.name, process.log_tail()))
            .collect()
    }
}

pub async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            Ok(channel) => return channel,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("nothing listens on {addr}: {error}"),
        }
    }
}

pub fn authorized<T>(message: T, api_key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(format!("Bearer {api_key}")).unwrap());
    // Longer than the gateway's own deadline (5 s), so that the gateway's answer arrives.
    request.set_timeout(Duration::from_secs(8));
    request
}

pub fn member(index: u64) -> String {
    format!("member-{index}")
}

/// What the writers know: expected balance per member (from acknowledged writes only), and
/// counts for the report.
#[derive(Default)]
pub struct Model {
    pub balances: BTreeMap<String, u64>,
    pub acknowledged: u64,
    pub refused: u64,
    pub retries: u64,
    pub replays_checked: u64,
}

/// Sends one write until it has a definitive answer, always with the same key (a lost or
/// unavailable answer is retried; the cluster applies the key once). `Ok(true)`: applied;
/// `Ok(false)`: refused by the ledger (changes nothing).
pub async fn write_until_answered(
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
pub enum Operation {
    Earn { key: String, member: String, points: u64 },
    Transfer { key: String, from: String, to: String, points: u64 },
}

pub async fn writer(
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

pub async fn status(admin: &mut AdminClient<Channel>) -> ClusterStatusReply {
    let mut request = Request::new(ClusterStatusRequest { include_state_digests: true });
    request.set_timeout(Duration::from_secs(10));
    admin.cluster_status(request).await.unwrap().into_inner()
}

/// Whether every replica of every group has applied its leader's last entry, all replicas of
/// a group have the same digest, and `expected_nodes` nodes answer.
pub fn replicas_identical(reply: &ClusterStatusReply, expected_nodes: usize, shards: u32) -> bool {
    let by_group = replicas_by_group(reply);
    let reachable = reply.nodes.iter().filter(|node| node.reachable).count();
    reachable == expected_nodes
        && by_group.len() == shards as usize + 1
        && by_group.values().all(|replicas| {
            replicas.iter().any(|replica| replica.3 == "leader")
                && replicas.iter().all(|replica| replica.1 == replicas[0].1 && replica.2 == replicas[0].2)
        })
        && reply.groups.iter().all(|group| group.lag_entries == 0)
}

/// Per group: (node, applied index, digest, role) of each replica that is a member.
pub fn replicas_by_group(reply: &ClusterStatusReply) -> BTreeMap<u32, Vec<(u64, u64, String, String)>> {
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
    by_group
}

/// Waits until every replica of every group has applied its leader's last entry and all
/// replicas of a group have the same digest (call with writes paused).
pub async fn wait_replicas_identical(
    admin: &mut AdminClient<Channel>,
    expected_nodes: usize,
    cluster: &Cluster,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = status(admin).await;
        if replicas_identical(&reply, expected_nodes, cluster.shards) {
            return;
        }
        if Instant::now() > deadline {
            panic!("replicas did not converge: {:#?}\n{}", replicas_by_group(&reply), cluster.logs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn pause_writers(paused: &AtomicBool, in_flight: &AtomicU64) {
    paused.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(120);
    while in_flight.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < deadline, "writers did not finish their writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn assert_conserved(reply: &ClusterStatusReply) {
    assert!(!reply.currency_totals.is_empty());
    for total in &reply.currency_totals {
        assert_eq!(total.debits_points, total.credits_points, "{} is not conserved", total.currency);
    }
}

/// Runs `tally cluster init` on every started node and returns what it printed; panics with
/// the logs if it fails.
pub fn init_cluster(cluster: &Cluster) -> String {
    let init = tally()
        .args(["cluster", "init", "--nodes", &cluster.node_list(), "--wait-secs", "60"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "cluster init failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr),
        cluster.logs()
    );
    String::from_utf8_lossy(&init.stdout).into_owned()
}

/// Starts a gateway over the nodes started so far and connects to it.
pub async fn start_gateway(cluster: &mut Cluster) -> Channel {
    let addr = free_addr();
    let name = format!("gateway{}", cluster.gateways.len());
    let node_list = cluster.node_list();
    cluster.gateways.push(Process::spawn(
        &name,
        &cluster.dir,
        &["gateway", "--listen", &addr, "--nodes", &node_list, "--no-metrics"],
    ));
    connect(&addr).await
}

/// Writers over one gateway and the model of what they were acknowledged.
pub struct Workload {
    pub model: Arc<Mutex<Model>>,
    pub stop: Arc<AtomicBool>,
    pub paused: Arc<AtomicBool>,
    pub in_flight: Arc<AtomicU64>,
    pub writers: Vec<tokio::task::JoinHandle<()>>,
    pub api_key: String,
    pub channel: Channel,
}

impl Workload {
    /// Gives every member a starting balance, then starts `writer_count` writers.
    pub async fn start(channel: Channel, api_key: &str, writer_count: usize) -> Workload {
        let model = Arc::new(Mutex::new(Model::default()));
        let mut ledger = LedgerClient::new(channel.clone());
        for index in 0..MEMBERS {
            let operation =
                Operation::Earn { key: format!("start-{index}"), member: member(index), points: 1_000 };
            assert!(write_until_answered(&mut ledger, api_key, &operation, &model).await);
            *model.lock().unwrap().balances.entry(member(index)).or_default() += 1_000;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicU64::new(0));
        let writers = (0..writer_count)
            .map(|index| {
                tokio::spawn(writer(
                    index,
                    channel.clone(),
                    api_key.to_string(),
                    model.clone(),
                    stop.clone(),
                    paused.clone(),
                    in_flight.clone(),
                ))
            })
            .collect();
        Workload { model, stop, paused, in_flight, writers, api_key: api_key.to_string(), channel }
    }

    pub async fn pause(&self) {
        pause_writers(&self.paused, &self.in_flight).await;
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for writer in self.writers.drain(..) {
            writer.await.unwrap();
        }
    }

    pub fn acknowledged(&self) -> u64 {
        self.model.lock().unwrap().acknowledged
    }

    /// Every acknowledged write present exactly once: each member's balance, read through the
    /// gateway (linearizable), equals the model's (call with writers paused or stopped).
    pub async fn assert_balances(&self, context: &str) {
        let balances = self.model.lock().unwrap().balances.clone();
        let mut ledger = LedgerClient::new(self.channel.clone());
        for (member_id, expected) in &balances {
            let reply = ledger
                .get_balance(authorized(
                    tally_proto::v1::GetBalanceRequest { member_id: member_id.clone(), consistency: 0 },
                    &self.api_key,
                ))
                .await
                .unwrap_or_else(|status| panic!("{context}: reading {member_id}: {status:?}"))
                .into_inner();
            let balance = reply.balance.map_or(0, |balance| balance.balance_points);
            assert_eq!(balance, *expected, "{context}: {member_id}: cluster and model disagree");
        }
    }
}

/// Creates partner "air" (currency AIR) through `channel` and returns its API key.
pub async fn create_partner(channel: Channel) -> String {
    let mut admin = AdminClient::new(channel);
    admin
        .create_partner(tally_proto::v1::CreatePartnerRequest {
            partner_id: "air".into(),
            display_name: "Air".into(),
            currency: "AIR".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_key
}
