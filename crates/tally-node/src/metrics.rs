//! Prometheus metrics: the exporter, and the tasks that mirror Raft and storage state into
//! gauges. Histograms get explicit buckets so they come out as histograms, not summaries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use openraft::ServerState;
use tally_raft::group::group_name;
use tally_raft::Group;
use tally_store::NodeStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
const BATCH_BUCKETS_COMMANDS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

#[derive(Debug, thiserror::Error)]
#[error("metrics exporter: {0}")]
pub struct MetricsError(String);

/// Installs the global recorder and serves `/metrics` on `addr`. Call once per process.
pub fn install_exporter(addr: SocketAddr) -> Result<(), MetricsError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Suffix("_commands".into()), BATCH_BUCKETS_COMMANDS)
        })
        .map_err(|error| MetricsError(error.to_string()))?
        .install()
        .map_err(|error| MetricsError(format!("serving /metrics on {addr}: {error}")))?;
    describe_node_metrics();
    Ok(())
}

fn describe_node_metrics() {
    describe_gauge!("tally_raft_term", "Current Raft term of a group replica.");
    describe_gauge!("tally_raft_last_log_index", "Index of the last entry in a group replica's log.");
    describe_gauge!("tally_raft_applied_index", "Index of the last entry applied by a group replica.");
    describe_gauge!("tally_raft_snapshot_index", "Index covered by a group replica's last snapshot.");
    describe_gauge!("tally_raft_is_leader", "1 when this replica is its group's leader.");
    describe_gauge!("tally_raft_healthy", "1 while the group replica runs; 0 after a fatal error.");
    describe_histogram!("tally_proposal_batch_commands", Unit::Count, "Commands packed into one Raft entry.");
    describe_histogram!("tally_apply_batch_commands", Unit::Count, "Commands applied from one Raft entry.");
    describe_counter!("tally_snapshots_built_total", "Snapshots built by group replicas on this node.");
    describe_gauge!(
        "tally_store_flushes",
        "sled flushes (with fsync) of state-machine checkpoints done by the node's flusher since start."
    );
    describe_gauge!(
        "tally_store_flush_requests",
        "Durability requests served by those flushes (group commit)."
    );
    describe_gauge!("tally_log_writes", "Merged writes to the node's Raft log (raft-engine) since start.");
    describe_gauge!("tally_log_syncs", "Of those, writes followed by an fdatasync.");
    describe_gauge!(
        "tally_log_write_requests",
        "Raft log write requests (appends, votes, purges) served by those writes (group commit)."
    );
    describe_gauge!(
        "tally_log_write_time_seconds",
        "Time spent writing and syncing the Raft log since start, summed."
    );
    describe_histogram!(
        "tally_checkpoint_duration_seconds",
        Unit::Seconds,
        "Writing one state-machine checkpoint to sled and making it durable."
    );
    describe_counter!(
        "tally_checkpoints_total",
        "State-machine checkpoints written to sled, by kind: delta (changed items and new statement \
         lines as a few chunks) or full (folded into per-item keys)."
    );
    describe_gauge!(
        "tally_retained_keys",
        "Idempotency keys a shard retains (until their retention ends), by group; set at each checkpoint."
    );
    describe_gauge!(
        "tally_retained_records_in_memory",
        "Retained keys whose records are still in memory (not yet written to a journal), by group; \
         set at each checkpoint."
    );
    describe_gauge!("tally_store_flush_time_seconds", "Time spent in sled flushes since start, summed.");
    describe_gauge!(
        "tally_store_flush_in_progress_seconds",
        "How long the sled flush in progress has been running; 0 when none is. The node aborts when \
         it reaches flush_stall_abort_ms."
    );
    describe_gauge!("tally_store_flush_stalls", "sled flushes the watchdog found stalled since start.");
    describe_histogram!(
        "tally_proposal_duration_seconds",
        Unit::Seconds,
        "From proposing a shard batch to its outcomes (append, flush, commit, apply)."
    );
    describe_histogram!(
        "tally_apply_duration_seconds",
        Unit::Seconds,
        "Applying one batch of entries to memory."
    );
    describe_gauge!(
        "tally_store_size_bytes",
        "Size of the node's data on disk: sled's checkpoints and raft-engine's log files."
    );
}

/// How often a group's Raft metrics are copied into its gauges.
pub const GROUP_METRICS_SAMPLE_INTERVAL_MS: u64 = 500;

/// Samples a group's Raft metrics into gauges labelled by group and node. Sampled, not
/// followed: openraft publishes new metrics several times per entry (append, commit, apply,
/// each follower's progress), and a task woken on every change cost more wake-ups than the
/// entry's own work on a busy node.
pub fn spawn_group_metrics(
    node_id: u64,
    group: Arc<Group>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut receiver = group.raft.metrics();
    let labels = [("group", group_name(group.group_id)), ("node", node_id.to_string())];
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(GROUP_METRICS_SAMPLE_INTERVAL_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ended = tokio::select! {
                _ = interval.tick() => receiver.has_changed().is_err(),
                _ = stop.changed() => true,
            };
            if ended {
                // The replica stopped or was dropped: it leads nothing and serves nothing here.
                gauge!("tally_raft_is_leader", &labels).set(0.0);
                gauge!("tally_raft_healthy", &labels).set(0.0);
                return;
            }
            let metrics = receiver.borrow_and_update();
            gauge!("tally_raft_term", &labels).set(metrics.current_term as f64);
            gauge!("tally_raft_last_log_index", &labels).set(metrics.last_log_index.unwrap_or(0) as f64);
            let applied = metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0);
            gauge!("tally_raft_applied_index", &labels).set(applied as f64);
            let snapshot = metrics.snapshot.map(|log_id| log_id.index).unwrap_or(0);
            gauge!("tally_raft_snapshot_index", &labels).set(snapshot as f64);
            let is_leader = metrics.state == ServerState::Leader;
            gauge!("tally_raft_is_leader", &labels).set(if is_leader { 1.0 } else { 0.0 });
            let healthy = metrics.running_state.is_ok();
            gauge!("tally_raft_healthy", &labels).set(if healthy { 1.0 } else { 0.0 });
        }
    })
}

/// Samples the flusher's counters and the database size every second.
pub fn spawn_store_metrics(store: NodeStore, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let stats = store.flush_stats();
            gauge!("tally_store_flushes").set(stats.flushes as f64);
            gauge!("tally_store_flush_requests").set(stats.requests as f64);
            gauge!("tally_store_flush_time_seconds").set(stats.flush_time_ns as f64 / 1e9);
            gauge!("tally_store_flush_in_progress_seconds").set(stats.flush_in_progress_ns as f64 / 1e9);
            gauge!("tally_store_flush_stalls").set(stats.stalls as f64);
            let log = store.log_write_stats();
            gauge!("tally_log_writes").set(log.writes as f64);
            gauge!("tally_log_syncs").set(log.syncs as f64);
            gauge!("tally_log_write_requests").set(log.requests as f64);
            gauge!("tally_log_write_time_seconds").set(log.write_time_ns as f64 / 1e9);
            if let Ok(size_bytes) = store.size_on_disk_bytes() {
                gauge!("tally_store_size_bytes").set(size_bytes as f64);
            }
        }
    })
}
