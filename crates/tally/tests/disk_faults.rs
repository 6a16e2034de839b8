//! Disk faults on real `tally node` processes (three nodes, two shards, one gateway, writers
//! running), with small snapshot thresholds so that the leaders' logs are purged.
//!
//! - A node whose data folder is wiped and that comes back with its old id is refused by its
//!   peers (its folder's incarnation is not the one the layout recorded), even when it is made
//!   to campaign: it cannot vote or acknowledge as the member it was. `tally status` says what
//!   happened. The documented path (new id, `add-node`, `remove-node` of the old id) brings the
//!   replacement in through snapshots; every replica ends identical, points are conserved and
//!   every acknowledged write is there once.
//! - Files damaged while a node is stopped (sled's checkpoint file cut at several lengths, bytes
//!   flipped at seeded offsets, the Raft log's active raft-engine file cut and flipped): each
//!   time the node either starts, catches
//!   up and ends identical to its peers with no acknowledged write lost, or refuses to start
//!   with an error that names the folder and the problem. Set `TALLY_DISK_FAULT_SEED` to replay
//!   a run's flip offsets (the seed is printed).

mod process_cluster;

use std::path::Path;
use std::time::{Duration, Instant};

use process_cluster::{
    assert_conserved, create_partner, init_cluster, replicas_by_group, replicas_identical, start_gateway,
    status, wait_replicas_identical, Cluster, Process, Workload,
};
use tally_node::api::{NodeRequest, NodeResponse};
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::{AddNodeRequest, RemoveNodeRequest, TriggerSnapshotRequest};

const SHARDS: u32 = 2;
const WRITERS: usize = 2;

/// Snapshots every 20 entries, keeping 5: a replica that starts empty (or missed more than a
/// few entries) can only be caught up by a snapshot.
const SMALL_SNAPSHOTS: &str = "[node.raft]\nsnapshot_logs_since_last = 20\nlogs_kept_after_snapshot = 5\n";
/// openraft purges a log only once this many entries can go at once (`purge_batch_size`, set
/// in tally-raft's `RaftTuning::openraft_config`), so a leader's log is purged (and a new
/// replica must get a snapshot) only once its snapshot is past this plus the 5 kept entries.
const PURGED_PAST_INDEX: u64 = 256 + 5;

async fn three_node_cluster(dir: &Path) -> (Cluster, AdminClient<tonic::transport::Channel>, Workload) {
    let config = dir.join("small-snapshots.toml");
    std::fs::write(&config, SMALL_SNAPSHOTS).unwrap();
    let mut cluster = Cluster::new(dir, SHARDS);
    cluster.node_args = vec!["--config".into(), config.display().to_string()];
    for node_id in 1..=3 {
        cluster.start_node(node_id);
    }
    init_cluster(&cluster);
    let channel = start_gateway(&mut cluster).await;
    let api_key = create_partner(channel.clone()).await;
    let workload = Workload::start(channel.clone(), &api_key, WRITERS).await;
    (cluster, AdminClient::new(channel), workload)
}

/// Waits until the shard leaders have snapshots past index `past` (their logs are purged
/// behind them), asking for snapshots while waiting.
async fn wait_for_snapshots(
    admin: &mut AdminClient<tonic::transport::Channel>,
    past: u64,
    cluster: &Cluster,
) {
    // Generous: the writers reach index 261 in about 3 s on an idle machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        admin.trigger_snapshot(TriggerSnapshotRequest { shard: None }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reply = status(admin).await;
        let leaders: Vec<_> =
            reply.groups.iter().filter(|group| group.group_id > 0 && group.role == "leader").collect();
        if leaders.len() == SHARDS as usize && leaders.iter().all(|group| group.snapshot_index > past) {
            return;
        }
        assert!(Instant::now() < deadline, "no snapshots past {past}: {leaders:#?}\n{}", cluster.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_is_refused_under_its_old_id_and_replaced_through_snapshots() {
    let started = Instant::now();
    let temp = tempfile::tempdir().unwrap();
    let (mut cluster, mut admin, mut workload) = three_node_cluster(temp.path()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_for_snapshots(&mut admin, PURGED_PAST_INDEX, &cluster).await;

    // Node 3 loses its folder and comes back with its old id and address.
    let before = status(&mut admin).await;
    let meta_term_before = before.groups.iter().find(|group| group.group_id == 0 && group.role == "leader");
    let meta_term_before = meta_term_before.expect("the meta group has a leader").term;
    cluster.nodes.get_mut(&3).unwrap().kill_9();
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.start_node(3);
    let node3 = cluster.node_addrs[&3].clone();

    // Made to campaign for the meta group as its old self: its vote requests carry the new
    // folder's incarnation, which its peers refuse.
    let cluster_client = tally::cluster_client::ClusterClient::new(
        vec![cluster.node_addrs[&1].clone()],
        Duration::from_secs(5),
        Some(process_cluster::cluster_token()),
    );
    let members: std::collections::BTreeMap<u64, String> =
        (1..=3).map(|id| (id, cluster.node_addrs[&id].clone())).collect();
    let campaign = NodeRequest::InitializeGroup { group_id: 0, members };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cluster_client.call_address(&node3, &campaign).await {
            Ok(NodeResponse::Done) => break,
            other if Instant::now() >= deadline => {
                panic!("node 3 did not start: {other:?}\n{}", cluster.logs())
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    let refused = status(&mut admin).await;
    let node3_status = refused.nodes.iter().find(|node| node.node_id == 3).unwrap();
    println!("status of the wiped node 3: {node3_status:?}");
    assert!(node3_status.reachable && !node3_status.healthy, "{node3_status:?}");
    assert!(node3_status.error.contains("node 3's data folder was replaced"), "{node3_status:?}");
    assert!(node3_status.error.contains("tally cluster add-node"), "{node3_status:?}");
    // It was given nothing: no entry, no shard replica; the meta leader kept its term (the
    // campaign never reached a peer) and counted no acknowledgement from it.
    let node3_groups: Vec<_> = refused.groups.iter().filter(|group| group.node_id == 3).collect();
    assert!(
        node3_groups.iter().all(|group| group.group_id == 0 && group.applied_index == 0),
        "{node3_groups:#?}"
    );
    let meta_leader =
        refused.groups.iter().find(|group| group.group_id == 0 && group.role == "leader").unwrap();
    assert_eq!(meta_leader.term, meta_term_before, "the wiped node's campaign changed the meta term");
    for node_id in [1, 2] {
        let log = cluster.nodes[&node_id].log_text();
        assert!(
            log.contains("Raft message refused: node 3's data folder was replaced"),
            "node {node_id}:\n{log}"
        );
    }
    let refused_text = cluster.nodes[&3].log_text();
    assert!(refused_text.contains("Raft message refused"), "{refused_text}");
    // The operator tools refuse it too.
    let add_again = admin.add_node(AddNodeRequest { address: node3.clone() }).await.unwrap_err();
    assert!(add_again.message().contains("was replaced"), "{add_again:?}");
    // Writes go on meanwhile (two of three replicas everywhere).
    let acknowledged = workload.acknowledged();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(workload.acknowledged() > acknowledged, "writes stopped\n{}", cluster.logs());

    // The documented path: stop it, start the folder as a new node, add it, remove node 3.
    cluster.nodes.get_mut(&3).unwrap().kill_9();
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.start_node(4);
    let node4 = cluster.node_addrs[&4].clone();
    let _ = process_cluster::connect(&node4).await;
    let steps = admin.add_node(AddNodeRequest { address: node4 }).await.unwrap().into_inner().steps;
    println!("add node 4: {steps:#?}");
    let steps = admin
        .remove_node(RemoveNodeRequest { node_id: 3 })
        .await
        .unwrap_or_else(|status| panic!("remove failed: {status:?}\n{}", cluster.logs()))
        .into_inner()
        .steps;
    println!("remove node 3: {steps:#?}");
    cluster.nodes.remove(&3);

    tokio::time::sleep(Duration::from_secs(1)).await;
    workload.stop().await;
    wait_replicas_identical(&mut admin, 3, &cluster).await;
    let end = status(&mut admin).await;
    assert_conserved(&end);
    assert!(end.nodes.iter().all(|node| node.healthy && node.error.is_empty()), "{:?}", end.nodes);
    assert!(end.shards.iter().all(|shard| shard.replicas.contains(&4) && !shard.replicas.contains(&3)));
    // Node 4 received every shard as a snapshot (the leaders' logs were purged long before;
    // the meta group may be short enough to be sent as log entries).
    let log4 = cluster.nodes[&4].log_text();
    for group_id in 1..=SHARDS {
        let installed = format!("group={group_id} snapshot=");
        assert!(
            log4.lines().any(|line| line.contains("installed snapshot") && line.contains(&installed)),
            "node 4 did not install a snapshot of group {group_id}:\n{}",
            log4.lines().filter(|line| line.contains("snapshot")).collect::<Vec<_>>().join("\n")
        );
    }
    workload.assert_balances("after the replacement").await;
    println!(
        "wiped node: {} writes acknowledged, {} retries; replaced through snapshots; {:?} in all \
         (2 cores shared with other builds)",
        workload.acknowledged(),
        workload.model.lock().unwrap().retries,
        started.elapsed()
    );
}

/// One fault applied to the stopped node's folder.
#[derive(Clone, Debug)]
enum Fault {
    /// Cut sled's log file (`db/db`) by this many bytes (at most the whole file).
    Truncate { bytes: u64 },
    /// Cut sled's log file to half its length.
    TruncateHalf,
    /// Invert the byte at this offset of a file (relative to the data folder).
    Flip { file: String, offset: u64 },
    /// Cut this many bytes off the end of the newest raft-engine log file.
    CutActiveLog { bytes: u64 },
    /// Invert the byte at this offset of the newest raft-engine log file.
    FlipActiveLog { offset: u64 },
}

/// What the node did after a fault.
enum Outcome {
    Recovered { seconds: f64 },
    Refused { message: String },
}

/// A deterministic generator for the flip offsets (xorshift64*).
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn apply(fault: &Fault, folder: &Path) -> String {
    let db_file = folder.join("db/db");
    match fault {
        Fault::Truncate { bytes } => {
            let length = std::fs::metadata(&db_file).unwrap().len();
            let kept = length.saturating_sub(*bytes);
            cut(&db_file, kept);
            format!("db/db cut from {length} to {kept} bytes")
        }
        Fault::TruncateHalf => {
            let length = std::fs::metadata(&db_file).unwrap().len();
            cut(&db_file, length / 2);
            format!("db/db cut from {length} to {} bytes", length / 2)
        }
        Fault::FlipActiveLog { offset } => {
            apply(&Fault::Flip { file: active_raft_log_file(folder), offset: *offset }, folder)
        }
        Fault::CutActiveLog { bytes } => {
            let file = active_raft_log_file(folder);
            let path = folder.join(&file);
            let length = std::fs::metadata(&path).unwrap().len();
            let kept = length.saturating_sub(*bytes);
            cut(&path, kept);
            format!("{file} cut from {length} to {kept} bytes")
        }
        Fault::Flip { file, offset } => {
            let path = folder.join(file);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = (*offset % bytes.len() as u64) as usize;
            bytes[at] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            format!("{file}: byte {at} of {} inverted", bytes.len())
        }
    }
}

fn cut(path: &Path, length: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(length).unwrap();
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The newest raft-engine log file in `folder` (the one appends go to), relative to `folder`.
fn active_raft_log_file(folder: &Path) -> String {
    let logs = folder.join("db").join(tally_store::RAFT_LOG_FOLDER);
    let newest = std::fs::read_dir(&logs)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.ends_with(".raftlog"))
        .max()
        .unwrap_or_else(|| panic!("no raft-engine log file in {}", logs.display()));
    format!("db/{}/{newest}", tally_store::RAFT_LOG_FOLDER)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_damaged_while_stopped_recover_or_refuse_to_start() {
    let started = Instant::now();
    let seed =
        std::env::var("TALLY_DISK_FAULT_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        }) | 1;
    println!("TALLY_DISK_FAULT_SEED={seed}");
    let mut random = Seeded(seed);
    let temp = tempfile::tempdir().unwrap();
    let (mut cluster, mut admin, mut workload) = three_node_cluster(temp.path()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let victim = 3;
    let folder = cluster.data_dir(victim);
    let mut faults = vec![
        Fault::Truncate { bytes: 64 },
        Fault::Truncate { bytes: 4_096 },
        Fault::Truncate { bytes: 65_536 },
        Fault::TruncateHalf,
    ];
    for _ in 0..3 {
        faults.push(Fault::Flip { file: "db/db".into(), offset: random.next() });
    }
    faults.push(Fault::Flip { file: "db/conf".into(), offset: random.next() });
    // One slot of the flush mark spoiled reads as the older mark (a torn write); the start
    // goes on if sled holds at least that much.
    faults.push(Fault::Flip { file: "db/tally-flush-mark".into(), offset: random.next() });
    faults.push(Fault::Flip { file: "node-identity.json".into(), offset: random.next() });
    // The Raft log (raft-engine): a cut tail (a crash in the middle of a write) and flipped
    // bytes of its active file. Either the node starts and catches up from its peers or it
    // refuses to start; in both cases no acknowledged write is lost (checked by the workload).
    faults.push(Fault::CutActiveLog { bytes: 100 });
    faults.push(Fault::FlipActiveLog { offset: random.next() });
    faults.push(Fault::FlipActiveLog { offset: random.next() });
    let mut report = Vec::new();
    for fault in faults {
        // Stopped under writes; the folder is kept as it was so that a refused start can be
        // followed by an ordinary restart of the same (undamaged) folder.
        cluster.nodes.get_mut(&victim).unwrap().kill_9();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let kept = temp.path().join("kept");
        let _ = std::fs::remove_dir_all(&kept);
        copy_folder(&folder, &kept);
        let done = apply(&fault, &folder);
        cluster.start_node(victim);
        let outcome = recover_or_refuse(&mut cluster, &mut admin, &workload, victim, &folder).await;
        let line = match &outcome {
            Outcome::Recovered { seconds } => format!("{done}: started and caught up in {seconds:.1} s"),
            Outcome::Refused { message } => format!("{done}: refused to start: {message}"),
        };
        println!("{line}");
        report.push(line);
        if let Outcome::Refused { .. } = outcome {
            // The operator's other choice for a refused start is the replacement of the
            // previous test; here the undamaged copy is put back to go on with the next fault.
            std::fs::remove_dir_all(&folder).unwrap();
            copy_folder(&kept, &folder);
            cluster.start_node(victim);
            match recover_or_refuse(&mut cluster, &mut admin, &workload, victim, &folder).await {
                Outcome::Recovered { .. } => {}
                Outcome::Refused { message } => panic!("the undamaged folder was refused: {message}"),
            }
        }
        workload.resume();
    }
    workload.stop().await;
    wait_replicas_identical(&mut admin, 3, &cluster).await;
    assert_conserved(&status(&mut admin).await);
    workload.assert_balances("at the end").await;
    println!(
        "damaged files (seed {seed}):\n  {}\n{} writes acknowledged; {:?} in all (2 cores shared with other builds)",
        report.join("\n  "),
        workload.acknowledged(),
        started.elapsed()
    );
}

/// After a restart on a damaged folder: either the process exits non-zero with an error that
/// names the folder and the problem, or it runs and the cluster converges to identical
/// replicas with every acknowledged write (writers are paused for the check, then resumed).
/// A node that runs but does not converge fails the test.
async fn recover_or_refuse(
    cluster: &mut Cluster,
    admin: &mut AdminClient<tonic::transport::Channel>,
    workload: &Workload,
    victim: u64,
    folder: &Path,
) -> Outcome {
    let restarted_at = Instant::now();
    // Writes go on for a moment, so that the node has something to catch up.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let process: &mut Process = cluster.nodes.get_mut(&victim).unwrap();
    if let Some(exit) = process.wait_exit(Duration::from_millis(10)) {
        return refused(exit, process, folder);
    }
    workload.pause().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let process = cluster.nodes.get_mut(&victim).unwrap();
        if let Some(exit) = process.wait_exit(Duration::from_millis(10)) {
            workload.resume();
            return refused(exit, process, folder);
        }
        let reply = status(admin).await;
        if replicas_identical(&reply, 3, cluster.shards) {
            assert_conserved(&reply);
            let seconds = restarted_at.elapsed().as_secs_f64();
            workload.assert_balances("after a restart on a damaged folder").await;
            workload.resume();
            return Outcome::Recovered { seconds };
        }
        if Instant::now() > deadline {
            panic!(
                "node {victim} runs on its damaged folder but did not converge: {:#?}\n{}\npanics:\n{}",
                replicas_by_group(&reply),
                cluster.logs(),
                cluster.panics()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn refused(exit: std::process::ExitStatus, process: &Process, folder: &Path) -> Outcome {
    let log = process.log_text();
    let message = log.lines().rev().find(|line| line.starts_with("error: ")).unwrap_or_default().to_string();
    assert!(!exit.success(), "the node stopped with success on a damaged folder:\n{log}");
    assert!(!message.is_empty(), "no `error:` line from a node that refused to start:\n{log}");
    let folder_text = folder.display().to_string();
    assert!(message.contains(&folder_text), "the error does not name {folder_text}: {message}");
    assert!(
        ["damaged", "unreadable", "corrupt", "was replaced", "holds node"]
            .iter()
            .any(|problem| message.contains(problem)),
        "the error does not say what is wrong: {message}"
    );
    Outcome::Refused { message }
}
