//! A real multi-node cluster: three `tally node` processes, `tally cluster init`, and two
//! `tally gateway` processes (half the writers on each), under a mixed workload (earns and member-to-member transfers, many
//! across shards, some requests re-sent with the same key) while the node leading the most
//! shards is killed with SIGKILL and restarted, a fourth node is added and given a shard
//! replica and a shard's leadership, and a node is removed. At the end: every acknowledged
//! write is present exactly once (balances equal the writer's model), points are conserved,
//! and every replica of every group has the same state digest.

mod process_cluster;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process_cluster::{
    assert_conserved, authorized, cluster_token, connect, free_addr, init_cluster, member, pause_writers,
    status, wait_replicas_identical, write_until_answered, writer, Cluster, Model, Operation, Process,
    MEMBERS,
};
use tally_gateway::transfer::{transfer_id, CrossShardTransfer};
use tally_ledger::routing::shard_of_member;
use tally_ledger::{CurrencyCode, IdempotencyKey, MemberId, PartnerId};
use tally_node::api::{NodeRequest, NodeResponse};
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    AddNodeRequest, ClusterStatusReply, EarnRequest, GetBalanceRequest, MoveLeaderRequest,
    MoveReplicaRequest, RemoveNodeRequest, TriggerSnapshotRequest,
};
use tonic::Code;

const SHARDS: u32 = 8;
const WRITERS: usize = 4;
/// Writes must resume this soon after the leader of the most shards is killed: an election
/// (timeout 1-2 s), then the gateway's retries (documented in docs/operations.md).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_node_cluster_survives_kill_restart_and_reshaping_under_load() {
    let temp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(temp.path(), SHARDS);
    for node_id in 1..=3 {
        cluster.start_node(node_id);
    }
    let init_output = init_cluster(&cluster);
    let node_list = cluster.node_list();
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

    let api_key = process_cluster::create_partner(channel.clone()).await;
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
    // A replica that just joined is still applying the shard's history (slowly in a debug
    // build, on two cores shared with three other nodes and the load): the move is refused
    // with "does not answer" until the node answers its status call, and an operator retries.
    let retry_until = Instant::now() + Duration::from_secs(60);
    let steps = loop {
        match admin.move_leader(MoveLeaderRequest { shard: moved_shard, to_node_id: 4 }).await {
            Ok(moved) => break moved.into_inner().steps,
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && status.message().contains("does not answer")
                    && Instant::now() < retry_until =>
            {
                println!("leader move refused, retrying: {}", status.message());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("leader move failed: {status:?}\n{}", cluster.logs()),
        }
    };
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
        Some(cluster_token()),
    );
    assert!(cluster_client.wait_for_layout(Duration::from_secs(10)).await);
    internal_services_refuse_callers_without_the_cluster_token(&cluster, &channel, &api_key).await;
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
    let read_started = Instant::now();
    let refused_read = ledger.get_balance(request).await.unwrap_err();
    assert_eq!(
        refused_read.code(),
        Code::Unavailable,
        "{refused_read:?} after {:?}\n{}",
        read_started.elapsed(),
        cluster.logs()
    );
    let stale = ledger
        .get_balance(authorized(GetBalanceRequest { member_id: member(0), consistency: 2 }, &api_key))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.linearizable && stale.staleness_bound_ms > 0, "{stale:?}");
    assert_eq!(stale.balance.unwrap().balance_points, expected_member_0, "nothing changed since");
}

/// The node API and the Raft transport of a node with a cluster token refuse a caller without
/// it, or with another, before reading the call: a forged earn sent straight to the node API
/// (which trusts the partner id it carries), on its stream or as a unary call, is not applied, and a forged Raft vote is refused.
async fn internal_services_refuse_callers_without_the_cluster_token(
    cluster: &Cluster,
    gateway: &tonic::transport::Channel,
    api_key: &str,
) {
    let mallory = MemberId::parse("mallory").unwrap();
    let shard = shard_of_member(&mallory, SHARDS);
    let forged_earn = tally_ledger::Command {
        partner_id: PartnerId::parse("air").unwrap(),
        idempotency_key: IdempotencyKey::parse("forged-earn").unwrap(),
        operation: tally_ledger::Operation::Earn {
            member_id: mallory.clone(),
            currency: CurrencyCode::parse("AIR").unwrap(),
            amount_points: 1_000_000,
        },
    };
    let wrong_token = tally_raft::ClusterToken::parse("not-the-cluster-token").unwrap();
    for node_id in [1, 3] {
        let address = &cluster.node_addrs[&node_id];
        for (token, on_streams) in
            [None, Some(wrong_token.clone())].into_iter().flat_map(|t| [(t.clone(), true), (t, false)])
        {
            let forger = tally_node::api::NodeClient::new(address, token.clone())
                .unwrap()
                .with_calls_on_streams(on_streams);
            let request = NodeRequest::Submit { shard, commands: vec![forged_earn.clone()] };
            let error = forger.call(&request, Duration::from_secs(5)).await.expect_err("a forged submit");
            let error = error.to_string();
            let expected =
                if token.is_none() { "need the cluster token" } else { "does not match this node's" };
            assert!(
                error.contains(expected),
                "node {node_id}, token {token:?}, streams {on_streams}: {error}"
            );
        }
        let mut raft =
            tally_proto::internal::raft_transport_client::RaftTransportClient::new(connect(address).await);
        let forged_vote = tally_proto::internal::RaftRequest {
            group_id: shard + 1,
            target_node_id: node_id,
            payload: Vec::new(),
            target_incarnation: 0,
            sender_node_id: 99,
            sender_incarnation: 0,
        };
        let refused = raft.vote(forged_vote).await.expect_err("a forged vote");
        assert_eq!(refused.code(), Code::Unauthenticated, "node {node_id}: {refused:?}");
    }
    let read = LedgerClient::new(gateway.clone())
        .get_balance(authorized(GetBalanceRequest { member_id: "mallory".into(), consistency: 1 }, api_key))
        .await;
    assert_eq!(
        read.map_err(|status| status.code()).err(),
        Some(Code::NotFound),
        "the forged earn was applied"
    );
    println!("internal services refused calls without the cluster token and with a wrong one");
}
