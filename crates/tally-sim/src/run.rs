//! One simulated run from one seed: start the cluster, run the clients, the resolver and the
//! fault schedule, stop the faults, wait for quiescence, then audit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tally_gateway::submit::Deadline;
use tally_gateway::transfer::resolve_open_transfers;
use tally_ledger::state::{AccountKey, StateItem};
use tally_raft::{GroupData, GroupShared};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::audit::{audit, AuditInput, ReplicaView, Violation, ViolationKind};
use crate::cluster::SimCluster;
use crate::history::Recorder;
use crate::net::{LinkFaults, SimNet};
use crate::schedule::{self, Event};
use crate::stats::{FaultCounters, Totals};
use crate::workload::{self, ClientTimes, WorkloadShape};

/// The shape of a run. Everything random in it comes from `seed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u64,
    pub shards: u32,
    pub clients: usize,
    pub members: usize,
    pub steps_per_client: usize,
    /// How long clients start new requests and the fault schedule runs.
    pub workload_ms: u64,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 3,
            shards: 4,
            clients: 6,
            members: 16,
            steps_per_client: 400,
            workload_ms: 3_000,
        }
    }
}

#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub totals: Totals,
    pub violations: Vec<Violation>,
    pub elapsed: Duration,
    /// The audited state, kept so tests can look at or tamper with it.
    pub audit_input: Option<AuditInput>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The failure message: the seed, the command to replay it, and every violation.
    pub fn failure_message(&self, config: &SimConfig) -> String {
        let mut message = format!(
            "simulation seed {} failed with {} violation(s); replay with:\n  TALLY_SIM_SEED={} cargo test -p tally-sim --test sim replay_seed_from_env -- --ignored --nocapture\n  cargo run --release -p tally-sim -- run --seed {} --nodes {} --shards {}\n",
            self.seed,
            self.violations.len(),
            self.seed,
            self.seed,
            config.nodes,
            config.shards
        );
        for violation in &self.violations {
            message.push_str(&format!("  seed {}: {violation}\n", self.seed));
        }
        message
    }
}

/// Runs one seed on a fresh current-thread runtime (one thread makes task interleavings far
/// more repeatable than a pool; sled's own threads and I/O timing still vary).
pub fn run(config: &SimConfig) -> RunReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    runtime.block_on(run_async(config))
}

const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);
const RESOLVER_INTERVAL: Duration = Duration::from_millis(250);
/// Transfers younger than this (log time) are left to the gateway that is driving them.
const RESOLVER_MIN_AGE_MS: u64 = 400;

pub async fn run_async(config: &SimConfig) -> RunReport {
    let started = std::time::Instant::now();
    let counters = Arc::new(FaultCounters::default());
    let mut violations = Vec::new();
    let data_dir = tempfile::Builder::new().prefix("tally-sim-").tempdir().expect("a temporary folder");
    let net = SimNet::new(config.seed, counters.clone());
    let cluster = match SimCluster::start(
        net.clone(),
        data_dir.path().to_path_buf(),
        config.nodes,
        config.shards,
    )
    .await
    {
        Ok(cluster) => cluster,
        Err(error) => {
            return RunReport {
                seed: config.seed,
                totals: counters.snapshot(),
                violations: vec![Violation {
                    kind: ViolationKind::Liveness,
                    detail: format!("start: {error}"),
                }],
                elapsed: started.elapsed(),
                audit_input: None,
            }
        }
    };
    let mut rng = StdRng::seed_from_u64(config.seed);
    net.set_faults(LinkFaults::from_rng(&mut rng));
    let events = schedule::generate(&mut rng, &cluster.node_ids, config.workload_ms);

    let recorder = Arc::new(Recorder::default());
    let workload_start = Instant::now();
    let times = ClientTimes {
        new_steps_until: workload_start + Duration::from_millis(config.workload_ms),
        give_up_at: workload_start + Duration::from_millis(config.workload_ms) + QUIESCE_TIMEOUT,
    };
    let shape = WorkloadShape {
        members: config.members,
        shard_count: config.shards,
        steps_per_client: config.steps_per_client,
        pause_max_ms: 40,
    };
    let mut clients = JoinSet::new();
    for client in 0..config.clients {
        let plan = workload::plan(config.seed, client, &shape);
        clients.spawn(workload::run_client(
            cluster.clone(),
            recorder.clone(),
            counters.clone(),
            plan,
            times,
            config.seed,
        ));
    }
    let (stop_resolver, resolver_stopped) = tokio::sync::watch::channel(false);
    let resolver = tokio::spawn(resolver_loop(cluster.clone(), counters.clone(), resolver_stopped));

    run_schedule(&cluster, &counters, events, workload_start).await;
    tokio::time::sleep_until(times.new_steps_until).await;

    // Quiescence: no more faults, every node back, the clients finish their retries.
    net.set_faults(LinkFaults::NONE);
    if cluster.net.partitioned_any() {
        cluster.net.heal();
        counters.add(&counters.heals);
    }
    for node_id in cluster.down_nodes() {
        restart(&cluster, &counters, node_id).await;
    }
    while clients.join_next().await.is_some() {}
    if Instant::now() >= times.give_up_at {
        violations.push(Violation {
            kind: ViolationKind::Liveness,
            detail: format!(
                "clients still had unanswered requests {QUIESCE_TIMEOUT:?} after the faults stopped"
            ),
        });
    }
    if let Err(detail) = resolve_all(&cluster, &counters).await {
        violations.push(Violation { kind: ViolationKind::Liveness, detail });
    }
    let _ = stop_resolver.send(true);
    let _ = resolver.await;
    let converged = converge(&cluster).await;
    if let Err(detail) = &converged {
        violations.push(Violation { kind: ViolationKind::Liveness, detail: detail.clone() });
    }
    let audit_input = collect(&cluster, config, recorder.take());
    if let Some(input) = &audit_input {
        violations.extend(audit(input));
    } else {
        violations.push(Violation {
            kind: ViolationKind::Liveness,
            detail: "a shard had no leader at the end; nothing could be audited".into(),
        });
    }
    cluster.stop_all().await;
    drop(cluster);
    RunReport {
        seed: config.seed,
        totals: counters.snapshot(),
        violations,
        elapsed: started.elapsed(),
        audit_input,
    }
}

async fn restart(cluster: &SimCluster, counters: &FaultCounters, node_id: u64) {
    match cluster.restart(node_id).await {
        Ok(true) => counters.add(&counters.restarts),
        Ok(false) => {}
        Err(error) => tracing::error!(node_id, %error, "restart failed"),
    }
}

async fn run_schedule(
    cluster: &SimCluster,
    counters: &FaultCounters,
    events: Vec<(u64, Event)>,
    start: Instant,
) {
    for (at_ms, event) in events {
        tokio::time::sleep_until(start + Duration::from_millis(at_ms)).await;
        tracing::info!(?event, at_ms, "fault");
        match event {
            Event::Partition(side) => {
                cluster.net.partition(side);
                counters.add(&counters.partitions);
            }
            Event::Heal => {
                cluster.net.heal();
                counters.add(&counters.heals);
            }
            Event::Crash(node_id) => {
                if cluster.crash(node_id).await {
                    counters.add(&counters.crashes);
                }
            }
            Event::Restart(node_id) => restart(cluster, counters, node_id).await,
        }
    }
}

/// One resolver round over every shard's open transfers, on the shard's leader, as a node's
/// resolver does. Returns how many are still open.
async fn resolve_round(cluster: &Arc<SimCluster>, counters: &FaultCounters, min_age_ms: u64) -> usize {
    let mut still_open = 0;
    for shard in 0..cluster.shard_count {
        let Some((_, group)) = cluster.leader(shard) else { continue };
        let open = {
            let state = group.shared.read();
            let GroupData::Shard(ledger) = &state.data else { continue };
            let cutoff_ms = tally_raft::proposer::wall_clock_ms().saturating_sub(min_age_ms);
            ledger
                .open_transfers()
                .into_iter()
                .filter(|(_, record)| record.opened_at_ms <= cutoff_ms)
                .collect::<Vec<_>>()
        };
        if open.is_empty() {
            continue;
        }
        let report =
            resolve_open_transfers(cluster, Deadline::after(Duration::from_secs(1)), shard, open).await;
        for _ in report.completed.iter().chain(&report.refunded) {
            counters.add(&counters.resolved_transfers);
        }
        still_open += report.still_open.len();
    }
    still_open
}

async fn resolver_loop(
    cluster: Arc<SimCluster>,
    counters: Arc<FaultCounters>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RESOLVER_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
        resolve_round(&cluster, &counters, RESOLVER_MIN_AGE_MS).await;
    }
}

/// Resolver rounds until no shard has an open transfer.
async fn resolve_all(cluster: &Arc<SimCluster>, counters: &FaultCounters) -> Result<(), String> {
    let deadline = Instant::now() + QUIESCE_TIMEOUT;
    loop {
        let open: usize = (0..cluster.shard_count)
            .filter_map(|shard| cluster.leader(shard))
            .map(|(_, group)| match &group.shared.read().data {
                GroupData::Shard(ledger) => ledger.open_transfers().len(),
                GroupData::Meta(_) => 0,
            })
            .sum();
        let leaders = (0..cluster.shard_count).filter(|shard| cluster.leader(*shard).is_some()).count();
        if open == 0 && leaders == cluster.shard_count as usize {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{open} cross-shard transfers still open {QUIESCE_TIMEOUT:?} after the faults stopped"
            ));
        }
        resolve_round(cluster, counters, 0).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every shard has one leader and every replica has applied the leader's whole log.
async fn converge(cluster: &SimCluster) -> Result<(), String> {
    let deadline = Instant::now() + QUIESCE_TIMEOUT;
    loop {
        let mut lagging = Vec::new();
        for shard in 0..cluster.shard_count {
            let Some((leader_id, leader)) = cluster.leader(shard) else {
                lagging.push(format!("shard {shard}: no leader"));
                continue;
            };
            let last_log_index = leader.raft.metrics().borrow().last_log_index.unwrap_or(0);
            for (node_id, group) in cluster.replicas(shard) {
                let applied = group.shared.read().applied.map(|log_id| log_id.index).unwrap_or(0);
                if applied != last_log_index {
                    lagging.push(format!(
                        "shard {shard}: node {node_id} applied {applied}, leader node {leader_id} has {last_log_index}"
                    ));
                }
            }
        }
        if lagging.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("replicas did not converge: {}", lagging.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn replica_view(node_id: u64, shared: &GroupShared) -> ReplicaView {
    let state = shared.read();
    let GroupData::Shard(ledger) = &state.data else { unreachable!("shard groups hold a ledger") };
    let mut statements = BTreeMap::new();
    for item in ledger.items() {
        if let StateItem::Account(account @ AccountKey::Member { .. }, _) = item {
            let lines = shared.statement_lines(&account, None, false, usize::MAX).unwrap_or_default();
            statements.insert(account, lines);
        }
    }
    ReplicaView {
        node_id,
        applied_index: state.applied.map(|log_id| log_id.index).unwrap_or(0),
        digest: ledger.digest(),
        ledger: ledger.clone(),
        statements,
    }
}

fn collect(cluster: &SimCluster, config: &SimConfig, history: crate::history::History) -> Option<AuditInput> {
    let mut shards = Vec::new();
    for shard in 0..cluster.shard_count {
        let (leader_id, leader) = cluster.leader(shard)?;
        let mut views = vec![replica_view(leader_id, &leader.shared)];
        for (node_id, group) in cluster.replicas(shard) {
            if node_id != leader_id {
                views.push(replica_view(node_id, &group.shared));
            }
        }
        shards.push(views);
    }
    Some(AuditInput { seed: config.seed, shard_count: config.shards, history, shards })
}
