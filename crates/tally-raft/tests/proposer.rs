//! The proposer's group commit, seen from its callers: concurrent proposals share Raft entries,
//! and each caller gets exactly the outcomes of its own commands, in order.

mod common;

use std::sync::Arc;

use common::*;
use tally_ledger::{Command, MemberId, Operation, OperationResult};
use tally_raft::ProposeError;
use tally_store::NodeStore;

/// Proposal `p` holds `p % 3 + 1` earns, each for its own member with a distinct amount, so an
/// outcome handed to the wrong caller or in the wrong order shows in the member or the amount.
fn proposal(p: usize) -> Vec<Command> {
    (0..p % 3 + 1)
        .map(|c| {
            command(
                &format!("p{p}-c{c}"),
                Operation::Earn {
                    member_id: MemberId::parse(format!("p{p}-c{c}")).unwrap(),
                    currency: currency_of(0),
                    amount_points: (p * 10 + c + 1) as u64,
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_get_their_own_outcomes() {
    const PROPOSALS: usize = 64;
    let store = NodeStore::temporary().unwrap();
    let group = Arc::new(start_single(&store, &fast_tuning()).await);
    let log_before = group.raft.metrics().borrow().last_log_index.unwrap();
    let tasks: Vec<_> = (0..PROPOSALS)
        .map(|p| {
            let group = group.clone();
            tokio::spawn(async move { (p, group.proposer.as_ref().unwrap().propose(proposal(p)).await) })
        })
        .collect();
    let mut indexes = std::collections::BTreeSet::new();
    for task in tasks {
        let (p, outcomes) = task.await.unwrap();
        let outcomes = outcomes.unwrap_or_else(|error| panic!("proposal {p}: {error}"));
        let commands = proposal(p);
        assert_outcomes(&outcomes, &commands, false);
        for (command, outcome) in commands.iter().zip(&outcomes) {
            let Operation::Earn { member_id, amount_points, .. } = &command.operation else { unreachable!() };
            match &outcome.result {
                Ok(OperationResult::Earned { balance }) => {
                    assert_eq!(&balance.member_id, member_id, "proposal {p} got another caller's outcome");
                    assert_eq!(balance.balance_points, *amount_points, "proposal {p}, {member_id}");
                }
                other => panic!("proposal {p}: {other:?}"),
            }
            indexes.insert(outcome.log_index);
        }
    }
    let log_after = group.raft.metrics().borrow().last_log_index.unwrap();
    let entries = log_after - log_before;
    assert_eq!(entries as usize, indexes.len(), "every new entry carried some of these commands");
    assert!(entries as usize <= PROPOSALS, "at most one entry per proposal ({entries})");

    // Each key was applied once: the ledger has each member's single earn.
    let ledger = ledger(&group.shared);
    ledger.check_invariants().unwrap();
    for p in 0..PROPOSALS {
        for command in proposal(p) {
            let Operation::Earn { member_id, currency, amount_points } = &command.operation else {
                unreachable!()
            };
            assert_eq!(ledger.balance(member_id, currency).unwrap().balance_points, *amount_points);
        }
    }

    // After the group stops, proposals fail as retryable, not with a panic or a hang.
    group.raft.shutdown().await.unwrap();
    match group.proposer.as_ref().unwrap().propose(proposal(PROPOSALS)).await {
        Err(ProposeError::Unavailable { group_id, .. }) => assert_eq!(group_id, SHARD),
        other => panic!("a stopped group must answer Unavailable: {other:?}"),
    }
}
