//! Operator actions on a multi-node cluster, each a sequence of node-API calls that is safe to
//! re-run after a failure: bootstrap, status, adding and removing nodes, moving a shard replica
//! (learner, catch up, promote, remove) and moving a shard's leadership.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tally_gateway::{AdminAction, BackendError};
use tally_ledger::meta::{replaced_folder_message, ClusterLayout, MetaCommand, MetaResult, NodeInfo};
use tally_node::api::{NodeApiError, NodeIdentityView, NodeRequest, NodeResponse, NodeStatusView};
use tally_node::{GroupStatusView, RaftSwitches, StatusDetail};
use tally_raft::group::group_name;
use tally_raft::{shard_group_id, GroupId, NodeId, META_GROUP_ID};
use tokio::time::{sleep, Instant};

use crate::cluster_client::ClusterClient;
use crate::cluster_status::NodeReport;
use crate::remote_backend::backend_error;

/// A learner counts as caught up when it has matched the leader's log up to this many entries.
pub const CATCH_UP_SLACK_ENTRIES: u64 = 16;
/// Longest wait for a learner to catch up (a large shard is sent as a snapshot).
pub const CATCH_UP_TIMEOUT_MS: u64 = 300_000;
/// Longest wait for groups to elect leaders after bootstrap.
pub const LEADERS_TIMEOUT_MS: u64 = 60_000;
const POLL_MS: u64 = 200;
/// Nodes switch heartbeats, elections and proposals back on by themselves after this long.
pub const SWITCHES_RESTORE_AFTER_MS: u64 = 30_000;

type Steps = Vec<String>;

fn refused(detail: impl Into<String>) -> BackendError {
    BackendError::Refused(detail.into())
}

/// Runs one operator action; returns the steps taken.
pub async fn run(cluster: &ClusterClient, action: AdminAction) -> Result<Steps, BackendError> {
    cluster.refresh().await;
    match action {
        AdminAction::AddNode { address } => add_node(cluster, &address).await,
        AdminAction::RemoveNode { node_id } => remove_node(cluster, node_id).await,
        AdminAction::MoveReplica { shard, from_node_id, to_node_id } => {
            let mut steps = Vec::new();
            move_replica(cluster, shard, from_node_id, to_node_id, &mut steps).await?;
            Ok(steps)
        }
        AdminAction::MoveLeader { shard, to_node_id } => move_leader(cluster, shard, to_node_id).await,
        AdminAction::TriggerSnapshot { shard } => trigger_snapshot(cluster, shard).await,
    }
}

fn layout(cluster: &ClusterClient) -> Result<ClusterLayout, BackendError> {
    cluster.layout().ok_or_else(|| refused("the cluster is not initialized; run `tally cluster init`"))
}

/// How long a node may take to answer a status with its state: the digest reads every retained
/// record back (seconds on a node holding a few hundred thousand), far past a write's timeout.
pub const STATE_STATUS_CALL_TIMEOUT_MS: u64 = 30_000;

/// Every layout node's own status (concurrently; unreachable nodes are reported as such), with
/// as much of each replica's state as `detail` asks for.
pub async fn node_reports(cluster: &ClusterClient, detail: StatusDetail) -> Vec<NodeReport> {
    let Some(layout) = cluster.layout() else { return Vec::new() };
    let timeout = if detail > StatusDetail::Raft {
        cluster.call_timeout().max(Duration::from_millis(STATE_STATUS_CALL_TIMEOUT_MS))
    } else {
        cluster.call_timeout()
    };
    let mut calls = tokio::task::JoinSet::new();
    for node in layout.nodes.values() {
        let client = cluster.client(&node.address);
        let node = node.clone();
        calls.spawn(async move {
            let status = match client {
                Ok(client) => match client.call(&NodeRequest::Status { detail }, timeout).await {
                    Ok(NodeResponse::Status(status)) => Ok(status),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(error) => Err(error.to_string()),
                },
                Err(error) => Err(error.to_string()),
            };
            NodeReport { node_id: node.node_id, address: node.address, status }
        });
    }
    let mut reports = calls.join_all().await;
    reports.sort_by_key(|report| report.node_id);
    reports
}

async fn node_status(cluster: &ClusterClient, node_id: NodeId) -> Result<NodeStatusView, BackendError> {
    match cluster
        .call_node(node_id, &NodeRequest::Status { detail: StatusDetail::Raft })
        .await
        .map_err(backend_error)?
    {
        NodeResponse::Status(status) => Ok(status),
        other => Err(BackendError::Unavailable(format!("unexpected answer {other:?}"))),
    }
}

/// The group's view on its leader, if one of the group's replicas (as placed) answers as leader.
pub async fn group_leader_view(cluster: &ClusterClient, group_id: GroupId) -> Option<GroupStatusView> {
    for node_id in cluster.replicas_of(group_id) {
        let Ok(status) = node_status(cluster, node_id).await else { continue };
        if let Some(view) =
            status.groups.into_iter().find(|view| view.group_id == group_id && view.role == "leader")
        {
            return Some(view);
        }
    }
    None
}

/// The group's view on its leader (asked through the group's routing).
async fn leader_view(cluster: &ClusterClient, group_id: GroupId) -> Result<GroupStatusView, BackendError> {
    for attempt in 0..3 {
        if attempt > 0 {
            sleep(Duration::from_millis(500)).await;
        }
        if let Some(view) = group_leader_view(cluster, group_id).await {
            return Ok(view);
        }
    }
    Err(BackendError::Unavailable(format!("{} has no reachable leader", group_name(group_id))))
}

async fn expect_done(result: Result<NodeResponse, NodeApiError>) -> Result<(), BackendError> {
    match result.map_err(backend_error)? {
        NodeResponse::Done => Ok(()),
        other => Err(BackendError::Unavailable(format!("unexpected answer {other:?}"))),
    }
}

async fn propose_meta(cluster: &ClusterClient, command: MetaCommand) -> Result<MetaResult, BackendError> {
    let request = NodeRequest::ProposeMeta { command };
    let response = cluster.call_group(META_GROUP_ID, &request, false).await.map_err(backend_error)?;
    cluster.refresh().await;
    match response {
        NodeResponse::MetaResult(Ok(result)) => Ok(result),
        NodeResponse::MetaResult(Err(error)) => Err(refused(error.to_string())),
        other => Err(BackendError::Unavailable(format!("unexpected answer {other:?}"))),
    }
}

/// Asks every address for its identity, retrying until all answer or `timeout` passes.
pub async fn identities(
    cluster: &ClusterClient,
    addresses: &[String],
    timeout: Duration,
) -> Result<Vec<NodeIdentityView>, BackendError> {
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    for address in addresses {
        loop {
            match cluster.call_address(address, &NodeRequest::Identity).await {
                Ok(NodeResponse::Identity(identity)) => {
                    found.push(identity);
                    break;
                }
                Ok(other) => {
                    return Err(BackendError::Unavailable(format!("{address}: unexpected {other:?}")))
                }
                Err(error) if Instant::now() >= deadline => {
                    return Err(BackendError::Unavailable(format!(
                        "node at {address} did not answer: {error}"
                    )))
                }
                Err(_) => sleep(Duration::from_millis(500)).await,
            }
        }
    }
    Ok(found)
}

/// Bootstraps a cluster on the nodes at `addresses` (all running, empty or already part of
/// this same cluster): the meta group on the first `replication_factor` nodes, the layout, and
/// every shard group on its replicas with its first replica campaigning first. Safe to re-run.
pub async fn init_cluster(
    cluster: &ClusterClient,
    addresses: &[String],
    replication_factor: u32,
    timeout: Duration,
) -> Result<Steps, BackendError> {
    let mut steps = Vec::new();
    let identities = identities(cluster, addresses, timeout).await?;
    let shard_count = identities[0].shard_count;
    if let Some(other) = identities.iter().find(|identity| identity.shard_count != shard_count) {
        return Err(refused(format!(
            "node {} has {} shards but node {} has {shard_count}; every node needs the same shard_count",
            other.node_id, other.shard_count, identities[0].node_id
        )));
    }
    let nodes: Vec<NodeInfo> = identities
        .iter()
        .map(|identity| NodeInfo { node_id: identity.node_id, address: identity.address.clone() })
        .collect();
    let mut layout = ClusterLayout::initial(nodes, shard_count, replication_factor)
        .map_err(|error| refused(error.to_string()))?;
    layout.incarnations = identities
        .iter()
        .filter(|identity| identity.incarnation != 0)
        .map(|identity| (identity.node_id, identity.incarnation))
        .collect();
    // A re-run must not bootstrap anything on a folder that replaced a member's (the meta
    // group would refuse the layout, but only after the groups were initialized).
    cluster.refresh().await;
    if let Some(existing) = cluster.layout() {
        check_incarnations(&existing, &identities)?;
    }
    steps.push(format!(
        "{} nodes answered: {:?}",
        layout.nodes.len(),
        layout.nodes.keys().collect::<Vec<_>>()
    ));

    // The meta group: its voters are the first nodes by id.
    let meta_voters: BTreeMap<NodeId, String> = layout
        .nodes
        .values()
        .take(replication_factor as usize)
        .map(|node| (node.node_id, node.address.clone()))
        .collect();
    let (first_meta, first_address) =
        meta_voters.iter().next().map(|(id, address)| (*id, address.clone())).expect("at least one node");
    let request = NodeRequest::InitializeGroup { group_id: META_GROUP_ID, members: meta_voters.clone() };
    expect_done(cluster.call_address(&first_address, &request).await).await?;
    steps.push(format!("meta group initialized on node {first_meta} with voters {:?}", meta_voters.keys()));

    // Record the layout once the meta group has a leader.
    let deadline = Instant::now() + timeout;
    let recorded = loop {
        cluster.refresh().await;
        match propose_meta(cluster, MetaCommand::InitCluster { layout: layout.clone() }).await {
            Ok(MetaResult::Layout(recorded)) => break recorded,
            Ok(other) => return Err(BackendError::Unavailable(format!("unexpected meta answer {other:?}"))),
            Err(error @ BackendError::Refused(_)) => return Err(error),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => sleep(Duration::from_millis(300)).await,
        }
    };
    steps.push("layout recorded in the meta group".to_string());

    // Shard groups still at their initial placement: host on every replica, then initialize on
    // the first (moved shards were bootstrapped before their first move).
    for (shard, placement) in recorded.shards.iter().enumerate() {
        if placement.version > 0 {
            continue;
        }
        let group_id = shard_group_id(shard as u32);
        let members: BTreeMap<NodeId, String> = placement
            .replicas
            .iter()
            .map(|node_id| (*node_id, recorded.nodes[node_id].address.clone()))
            .collect();
        for node_id in placement.replicas.iter().skip(1) {
            expect_done(cluster.call_address(&members[node_id], &NodeRequest::HostGroup { group_id }).await)
                .await?;
        }
        let first = placement.replicas[0];
        let request = NodeRequest::InitializeGroup { group_id, members: members.clone() };
        expect_done(cluster.call_address(&members[&first], &request).await).await?;
        steps.push(format!("shard {shard} on nodes {:?}, first leader node {first}", placement.replicas));
    }

    // Wait until every shard has a leader.
    let deadline = Instant::now() + Duration::from_millis(LEADERS_TIMEOUT_MS);
    loop {
        cluster.refresh().await;
        let reports = node_reports(cluster, StatusDetail::Raft).await;
        let led: BTreeSet<GroupId> = reports
            .iter()
            .filter_map(|report| report.status.as_ref().ok())
            .flat_map(|status| &status.groups)
            .filter(|view| view.role == "leader")
            .map(|view| view.group_id)
            .collect();
        if led.len() as u32 == recorded.shard_count + 1 {
            steps.push(format!("every group has a leader ({} shards and meta)", recorded.shard_count));
            return Ok(steps);
        }
        if Instant::now() >= deadline {
            return Err(BackendError::Unavailable(format!(
                "only {} of {} groups elected a leader within {LEADERS_TIMEOUT_MS} ms",
                led.len(),
                recorded.shard_count + 1
            )));
        }
        sleep(Duration::from_millis(POLL_MS)).await;
    }
}

async fn add_node(cluster: &ClusterClient, address: &str) -> Result<Steps, BackendError> {
    let layout = layout(cluster)?;
    let identity = identities(cluster, &[address.to_string()], Duration::from_secs(5)).await?.remove(0);
    if identity.shard_count != layout.shard_count {
        return Err(refused(format!(
            "node {} at {address} has {} shards; the cluster has {}",
            identity.node_id, identity.shard_count, layout.shard_count
        )));
    }
    check_incarnations(&layout, std::slice::from_ref(&identity))?;
    if let Some(existing) = layout.nodes.get(&identity.node_id) {
        return Err(refused(format!(
            "node {} is already part of the cluster (at {}); nothing to add",
            identity.node_id, existing.address
        )));
    }
    propose_meta(
        cluster,
        MetaCommand::AddNode { node_id: identity.node_id, address: identity.address.clone() },
    )
    .await?;
    let mut steps = vec![format!("node {} at {} added to the layout", identity.node_id, identity.address)];
    // Recorded before the node joins any group, so that every member expects this folder.
    if identity.incarnation != 0 {
        propose_meta(
            cluster,
            MetaCommand::RecordIncarnation { node_id: identity.node_id, incarnation: identity.incarnation },
        )
        .await?;
        steps.push(format!(
            "node {}'s data folder incarnation {:016x} recorded",
            identity.node_id, identity.incarnation
        ));
    }
    // Every node of the layout follows the meta group (as a learner unless it votes), so that
    // it knows the layout and the partners from its own replica.
    let request = NodeRequest::AddLearner {
        group_id: META_GROUP_ID,
        node_id: identity.node_id,
        address: identity.address.clone(),
    };
    expect_done(cluster.call_group(META_GROUP_ID, &request, true).await).await?;
    steps.push(format!(
        "node {} follows the meta group; it holds no shard replica yet (move some with \
         `tally cluster move-replica`)",
        identity.node_id
    ));
    Ok(steps)
}

/// Refuses nodes whose data folder is not the one the layout recorded for their id.
fn check_incarnations(layout: &ClusterLayout, identities: &[NodeIdentityView]) -> Result<(), BackendError> {
    for identity in identities {
        match layout.incarnation(identity.node_id) {
            Some(recorded) if recorded != identity.incarnation => {
                return Err(refused(replaced_folder_message(
                    identity.node_id,
                    identity.incarnation,
                    recorded,
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The node (not in `excluded`) holding the fewest replicas.
fn least_loaded(layout: &ClusterLayout, excluded: &[NodeId]) -> Option<NodeId> {
    layout
        .nodes
        .keys()
        .filter(|node_id| !excluded.contains(node_id))
        .min_by_key(|node_id| (layout.shards_on(**node_id).len(), **node_id))
        .copied()
}

async fn remove_node(cluster: &ClusterClient, node_id: NodeId) -> Result<Steps, BackendError> {
    let mut steps = Vec::new();
    let initial = layout(cluster)?;
    if !initial.nodes.contains_key(&node_id) {
        return Err(refused(format!("node {node_id} is not part of the cluster")));
    }
    for shard in initial.shards_on(node_id) {
        let current = layout(cluster)?;
        let replicas = &current.shards[shard as usize].replicas;
        let mut excluded = replicas.clone();
        excluded.push(node_id);
        let Some(target) = least_loaded(&current, &excluded) else {
            return Err(refused(format!(
                "no node can take node {node_id}'s replica of shard {shard} (every other node holds one); add a node first"
            )));
        };
        move_replica(cluster, shard, node_id, target, &mut steps).await?;
    }
    // The meta group: replace the node among its voters if another node can take its place.
    let view = cluster.meta_view().ok_or_else(|| BackendError::Unavailable("no meta view".into()))?;
    if view.voters.contains(&node_id) {
        let current = layout(cluster)?;
        let mut voters: BTreeSet<NodeId> = view.voters.iter().copied().collect();
        voters.remove(&node_id);
        let replacement = current
            .nodes
            .keys()
            .find(|candidate| **candidate != node_id && !voters.contains(candidate))
            .copied();
        if let Some(replacement) = replacement {
            let address = current.nodes[&replacement].address.clone();
            let request = NodeRequest::AddLearner { group_id: META_GROUP_ID, node_id: replacement, address };
            expect_done(cluster.call_group(META_GROUP_ID, &request, true).await).await?;
            wait_caught_up(cluster, META_GROUP_ID, replacement).await?;
            voters.insert(replacement);
        }
        if voters.is_empty() {
            return Err(refused("the meta group cannot lose its last voter"));
        }
        let request =
            NodeRequest::ChangeVoters { group_id: META_GROUP_ID, voters: voters.iter().copied().collect() };
        expect_done(cluster.call_group(META_GROUP_ID, &request, true).await).await?;
        steps.push(format!("meta group voters are now {voters:?}"));
    } else if view.member_addresses.contains_key(&node_id) {
        let request = NodeRequest::RemoveLearners { group_id: META_GROUP_ID, learners: vec![node_id] };
        expect_done(cluster.call_group(META_GROUP_ID, &request, true).await).await?;
        steps.push(format!("node {node_id} no longer follows the meta group"));
    }
    propose_meta(cluster, MetaCommand::RemoveNode { node_id }).await?;
    steps.push(format!("node {node_id} removed from the layout; it can be stopped and its data deleted"));
    Ok(steps)
}

/// Waits until `node_id` has matched the group leader's log (within the slack).
async fn wait_caught_up(
    cluster: &ClusterClient,
    group_id: GroupId,
    node_id: NodeId,
) -> Result<u64, BackendError> {
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
    loop {
        let leader = leader_view(cluster, group_id).await?;
        let matched = leader.matched_index.get(&node_id).copied().unwrap_or(0);
        if matched + CATCH_UP_SLACK_ENTRIES >= leader.last_log_index && matched > 0 {
            return Ok(matched);
        }
        if Instant::now() >= deadline {
            return Err(BackendError::Unavailable(format!(
                "node {node_id} matched {} of {} only up to index {matched} of {} within {CATCH_UP_TIMEOUT_MS} ms",
                group_name(group_id),
                leader.node_id,
                leader.last_log_index
            )));
        }
        sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Moves shard `shard`'s replica from one node to another: host an empty replica on the
/// target, add it as a learner, wait until it caught up, make it a voter in place of the
/// source (one joint-consensus change), record the placement, drop the source's copy.
async fn move_replica(
    cluster: &ClusterClient,
    shard: u32,
    from_node_id: NodeId,
    to_node_id: NodeId,
    steps: &mut Steps,
) -> Result<(), BackendError> {
    let current = layout(cluster)?;
    let placement = current
        .shards
        .get(shard as usize)
        .ok_or_else(|| refused(format!("no shard {shard}; shards are 0 to {}", current.shard_count - 1)))?
        .clone();
    if !placement.replicas.contains(&from_node_id) {
        return Err(refused(format!(
            "node {from_node_id} holds no replica of shard {shard} (replicas: {:?})",
            placement.replicas
        )));
    }
    if placement.replicas.contains(&to_node_id) {
        return Err(refused(format!("node {to_node_id} already holds a replica of shard {shard}")));
    }
    let to_address = current
        .address(to_node_id)
        .ok_or_else(|| refused(format!("node {to_node_id} is not part of the cluster; add it first")))?
        .to_string();
    let group_id = shard_group_id(shard);

    expect_done(cluster.call_address(&to_address, &NodeRequest::HostGroup { group_id }).await).await?;
    let request = NodeRequest::AddLearner { group_id, node_id: to_node_id, address: to_address.clone() };
    expect_done(cluster.call_group(group_id, &request, true).await).await?;
    steps.push(format!("shard {shard}: node {to_node_id} added as a learner"));
    let matched = wait_caught_up(cluster, group_id, to_node_id).await?;
    steps.push(format!("shard {shard}: node {to_node_id} caught up (index {matched})"));

    let replicas: Vec<NodeId> = placement
        .replicas
        .iter()
        .map(|node_id| if *node_id == from_node_id { to_node_id } else { *node_id })
        .collect();
    let request = NodeRequest::ChangeVoters { group_id, voters: replicas.clone() };
    let mut attempts = 0;
    loop {
        attempts += 1;
        match cluster.call_group(group_id, &request, true).await.map_err(backend_error) {
            Ok(NodeResponse::Done) => break,
            Ok(other) => return Err(BackendError::Unavailable(format!("unexpected answer {other:?}"))),
            // A change still in progress (a previous joint config): re-issuing converges.
            Err(_) if attempts < 10 => sleep(Duration::from_millis(500)).await,
            Err(error) => return Err(error),
        }
    }
    steps.push(format!("shard {shard}: voters are now {replicas:?}"));
    propose_meta(
        cluster,
        MetaCommand::SetShardReplicas { shard, replicas, expected_version: placement.version },
    )
    .await?;
    steps.push(format!("shard {shard}: placement recorded"));
    // change_membership returned, so the leader committed voters without the source.
    let request = NodeRequest::DropGroup { group_id, removal_confirmed: true };
    match cluster.call_address(current.address(from_node_id).unwrap_or_default(), &request).await {
        Ok(_) => steps.push(format!("shard {shard}: node {from_node_id} dropped its copy")),
        Err(error) => steps.push(format!(
            "shard {shard}: node {from_node_id} did not drop its copy ({error}); it drops it when it next starts"
        )),
    }
    Ok(())
}

/// Moves a shard's leadership (openraft 0.9.25 has no transfer call): the leader stops
/// proposing (queued writes wait), the target catches up with the leader's whole log, every
/// voter but the target stops campaigning and the leader stops its heartbeats; once the
/// followers' leases have run out, the target campaigns and wins (its log is complete). Then
/// every switch goes back on; the held writes are answered not-leader and the gateways resend
/// them to the new leader with the same keys. Nodes restore the switches by themselves after
/// [`SWITCHES_RESTORE_AFTER_MS`] should this tool die half-way.
async fn move_leader(cluster: &ClusterClient, shard: u32, to_node_id: NodeId) -> Result<Steps, BackendError> {
    let current = layout(cluster)?;
    let placement =
        current.shards.get(shard as usize).ok_or_else(|| refused(format!("no shard {shard}")))?.clone();
    if !placement.replicas.contains(&to_node_id) {
        return Err(refused(format!(
            "node {to_node_id} holds no replica of shard {shard} (replicas: {:?}); move one there first",
            placement.replicas
        )));
    }
    let group_id = shard_group_id(shard);
    let leader = leader_view(cluster, group_id).await?;
    if leader.node_id == to_node_id {
        return Ok(vec![format!("shard {shard}: node {to_node_id} already leads")]);
    }
    if let Err(error) = node_status(cluster, to_node_id).await {
        return Err(refused(format!(
            "node {to_node_id} cannot take the leadership: it does not answer ({error})"
        )));
    }
    let mut steps = Vec::new();
    wait_caught_up(cluster, group_id, to_node_id).await?;
    let lease_ms = node_status(cluster, leader.node_id).await?.election_timeout_max_ms;
    let switches = |node_id: NodeId, switches: RaftSwitches| {
        let request =
            NodeRequest::SetRaftSwitches { group_id, switches, restore_after_ms: SWITCHES_RESTORE_AFTER_MS };
        async move { cluster.call_node(node_id, &request).await }
    };
    let others: Vec<NodeId> = placement.replicas.iter().copied().filter(|id| *id != to_node_id).collect();
    let outcome = async {
        let held = RaftSwitches { heartbeat: true, elect: false, proposals: false };
        expect_done(switches(leader.node_id, held).await).await?;
        // The target must hold every entry the leader has, or the voters would refuse it.
        let deadline = Instant::now() + Duration::from_millis(lease_ms * 5);
        loop {
            let view = leader_view(cluster, group_id).await?;
            if view.matched_index.get(&to_node_id).copied().unwrap_or(0) >= view.last_log_index {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Unavailable(format!(
                    "node {to_node_id} did not catch up with shard {shard}"
                )));
            }
            sleep(Duration::from_millis(50)).await;
        }
        for node_id in &others {
            let heartbeat = *node_id != leader.node_id;
            match switches(*node_id, RaftSwitches { heartbeat, elect: false, proposals: false }).await {
                // A follower that is down cannot campaign either; only the leader must answer.
                Err(NodeApiError::Transport(error)) if *node_id != leader.node_id => steps.push(format!(
                    "shard {shard}: node {node_id} not reached ({error}); going on without it"
                )),
                other => expect_done(other).await?,
            }
        }
        steps.push(format!(
            "shard {shard}: node {} paused writes and heartbeats, nodes {others:?} stopped campaigning",
            leader.node_id
        ));
        sleep(Duration::from_millis(lease_ms + 200)).await;
        let deadline = Instant::now() + Duration::from_millis(lease_ms * 5);
        loop {
            expect_done(cluster.call_node(to_node_id, &NodeRequest::TriggerElect { group_id }).await).await?;
            sleep(Duration::from_millis(300)).await;
            let status = node_status(cluster, to_node_id).await?;
            if status.groups.iter().any(|view| view.group_id == group_id && view.role == "leader") {
                steps.push(format!("shard {shard}: node {to_node_id} leads"));
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Unavailable(format!(
                    "node {to_node_id} did not win an election for shard {shard}"
                )));
            }
        }
    }
    .await;
    for node_id in &others {
        if let Err(error) = switches(*node_id, RaftSwitches::ALL_ON).await {
            steps.push(format!("shard {shard}: could not restore node {node_id}'s switches ({error}); it restores them itself"));
        }
    }
    outcome.map(|()| steps)
}

async fn trigger_snapshot(cluster: &ClusterClient, shard: Option<u32>) -> Result<Steps, BackendError> {
    let current = layout(cluster)?;
    let groups: Vec<GroupId> = match shard {
        Some(shard) if shard < current.shard_count => vec![shard_group_id(shard)],
        Some(shard) => return Err(refused(format!("no shard {shard}"))),
        None => (0..=current.shard_count).collect(),
    };
    let mut steps = Vec::new();
    for group_id in groups {
        let replicas = if group_id == META_GROUP_ID {
            cluster.meta_view().map(|view| view.voters).unwrap_or_default()
        } else {
            current.shards[group_id as usize - 1].replicas.clone()
        };
        for node_id in replicas {
            match cluster.call_node(node_id, &NodeRequest::TriggerSnapshot { group_id }).await {
                Ok(_) => {
                    steps.push(format!("{}: snapshot requested on node {node_id}", group_name(group_id)))
                }
                Err(error) => {
                    steps.push(format!("{}: node {node_id} not reached: {error}", group_name(group_id)))
                }
            }
        }
    }
    Ok(steps)
}
