//! The cross-shard transfer resolver: on every node, for each shard the node leads, finishes
//! (or refunds) transfer records left open, by the same idempotent steps the gateway uses. A
//! record is left alone for [`TRANSFER_RESOLVE_AFTER_MS`] so that the gateway that opened it
//! normally finishes it first.

use std::sync::Arc;
use std::time::Duration;

use tally_gateway::submit::Deadline;
use tally_gateway::transfer::resolve_open_transfers;
use tally_gateway::Backend;
use tally_node::Node;
use tokio::task::JoinHandle;

/// Age (log time) after which an open record is the resolver's to finish.
pub const TRANSFER_RESOLVE_AFTER_MS: u64 = 2_000;
/// How often each node looks for open records on the shards it leads.
pub const TRANSFER_RESOLVE_INTERVAL_MS: u64 = 1_000;
/// Time one round may spend on one shard's records.
const ROUND_DEADLINE_MS: u64 = 10_000;

pub fn spawn<B: Backend>(node: Arc<Node>, backend: Arc<B>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(TRANSFER_RESOLVE_INTERVAL_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            for shard in 0..node.shard_count() {
                let Some(open) = node.open_transfers_led(shard, TRANSFER_RESOLVE_AFTER_MS) else { continue };
                if open.is_empty() {
                    continue;
                }
                let count = open.len();
                let deadline = Deadline::after(Duration::from_millis(ROUND_DEADLINE_MS));
                let report = resolve_open_transfers(&backend, deadline, shard, open).await;
                tracing::info!(
                    shard,
                    open = count,
                    completed = report.completed.len(),
                    refunded = report.refunded.len(),
                    still_open = report.still_open.len(),
                    "transfer resolver round"
                );
            }
        }
    })
}
