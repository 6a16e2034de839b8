//! One status view of the whole cluster, assembled from every node's own report: used by the
//! dev cluster (one node) and by the gateway of a multi-node cluster alike.

use std::collections::BTreeMap;

use tally_ledger::meta::{replaced_folder_message, ClusterLayout};
use tally_ledger::{CurrencyCode, CurrencyTotals};
use tally_node::api::NodeStatusView;
use tally_node::GroupStatusView;
use tally_proto::v1::{ClusterStatusReply, CurrencyTotal, GroupStatus, NodeStatus, ShardStatus};
use tally_raft::group::group_name;
use tally_raft::{shard_group_id, GroupId, NodeId};

/// What one node answered (or why it did not).
pub struct NodeReport {
    pub node_id: NodeId,
    pub address: String,
    pub status: Result<NodeStatusView, String>,
}

pub fn status_reply(
    shard_count: u32,
    layout: Option<&ClusterLayout>,
    meta_leader_node_id: Option<NodeId>,
    reports: Vec<NodeReport>,
) -> ClusterStatusReply {
    let views: Vec<&GroupStatusView> = reports
        .iter()
        .filter_map(|report| report.status.as_ref().ok())
        .flat_map(|status| &status.groups)
        .collect();

    // Per group: the replica that leads it (else the most advanced one), for lag and totals.
    let mut reference: BTreeMap<GroupId, &GroupStatusView> = BTreeMap::new();
    for view in &views {
        let better = match reference.get(&view.group_id) {
            None => true,
            Some(held) => {
                (view.role == "leader", view.applied_index) > (held.role == "leader", held.applied_index)
            }
        };
        if better {
            reference.insert(view.group_id, view);
        }
    }

    let groups = views
        .iter()
        .map(|view| {
            let leader_last_log_index =
                reference.get(&view.group_id).map_or(0, |leader| leader.last_log_index);
            GroupStatus {
                group: group_name(view.group_id),
                group_id: view.group_id,
                node_id: view.node_id,
                role: view.role.clone(),
                leader_node_id: view.leader_node_id.unwrap_or(0),
                term: view.term,
                last_log_index: view.last_log_index,
                committed_index: view.committed_index,
                applied_index: view.applied_index,
                state_digest: view.state_digest.map(hex::encode).unwrap_or_default(),
                voters: view.voters.clone(),
                learners: view.learners.clone(),
                lag_entries: leader_last_log_index.saturating_sub(view.applied_index),
                snapshot_index: view.snapshot_index,
            }
        })
        .collect();

    let mut totals: BTreeMap<CurrencyCode, CurrencyTotals> = BTreeMap::new();
    for view in reference.values() {
        for (currency, sums) in &view.currency_totals {
            let entry = totals.entry(currency.clone()).or_default();
            entry.debits_points += sums.debits_points;
            entry.credits_points += sums.credits_points;
        }
    }
    let currency_totals = totals
        .into_iter()
        .map(|(currency, totals)| CurrencyTotal {
            currency: currency.to_string(),
            debits_points: totals.debits_points.to_string(),
            credits_points: totals.credits_points.to_string(),
        })
        .collect();

    let shards = layout
        .map(|layout| {
            layout
                .shards
                .iter()
                .enumerate()
                .map(|(shard, placement)| ShardStatus {
                    shard: shard as u32,
                    replicas: placement.replicas.clone(),
                    placement_version: placement.version,
                    leader_node_id: reference
                        .get(&shard_group_id(shard as u32))
                        .and_then(|view| view.leader_node_id)
                        .unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();

    let nodes = reports
        .iter()
        .map(|report| match &report.status {
            Ok(status) => {
                // A folder that is not the one the layout recorded: peers refuse it, so it is
                // not healthy whatever its replicas say.
                let replaced = layout
                    .and_then(|layout| layout.incarnation(report.node_id))
                    .filter(|recorded| status.incarnation != 0 && *recorded != status.incarnation)
                    .map(|recorded| replaced_folder_message(report.node_id, status.incarnation, recorded));
                let error = replaced.clone().unwrap_or_else(|| status.incarnation_conflicts.join("; "));
                NodeStatus {
                    node_id: report.node_id,
                    address: report.address.clone(),
                    reachable: true,
                    healthy: status.healthy && replaced.is_none(),
                    error,
                    hosted_groups: status.groups.iter().map(|view| view.group_id).collect(),
                }
            }
            Err(error) => NodeStatus {
                node_id: report.node_id,
                address: report.address.clone(),
                reachable: false,
                healthy: false,
                error: error.clone(),
                hosted_groups: Vec::new(),
            },
        })
        .collect();

    ClusterStatusReply {
        shard_count,
        groups,
        currency_totals,
        nodes,
        shards,
        meta_leader_node_id: meta_leader_node_id.unwrap_or(0),
        replication_factor: layout.map_or(1, |layout| layout.replication_factor),
    }
}
