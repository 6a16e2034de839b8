//! The end-of-run proof: resolve unknown outcomes, read every account back linearizably and
//! compare with the model, and check that every currency's debits equal its credits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{ClusterStatusRequest, EarnRequest, GetBalanceRequest};
use tonic::transport::Channel;
use tonic::Code;

use crate::client::{authorized, is_unknown};
use crate::ops::Op;
use crate::report::{AccountMismatch, CurrencyCheck, Proof};
use crate::stats::LatencyShard;
use crate::worker::{Resolved, Shared, Worker};

const FIRST_MISMATCHES: usize = 20;
use crate::report::FAILURES_KEPT;

pub(crate) async fn check(
    shared: &Arc<Shared>,
    channels: &[Channel],
    admin: &mut AdminClient<Channel>,
    run_id: &str,
) -> anyhow::Result<Proof> {
    let mut proof = Proof::default();
    let mut failures: Vec<String> = Vec::new();

    // 1. Unknown outcomes: GetOperation by key, or the same key again.
    let pending = std::mem::take(&mut *shared.unresolved.lock().expect("unresolved lock"));
    proof.unknown_outcomes = pending.len() as u64;
    if !pending.is_empty() {
        let tasks = shared.cfg.concurrency.clamp(1, 16);
        let mut lists: Vec<Vec<_>> = (0..tasks).map(|_| Vec::new()).collect();
        for (i, p) in pending.into_iter().enumerate() {
            lists[i % tasks].push(p);
        }
        let mut handles = Vec::new();
        for (t, list) in lists.into_iter().enumerate() {
            let mut worker = Worker::new(
                shared.clone(),
                channels[t % channels.len()].clone(),
                t as u64,
                format!("{run_id}-r{t}-"),
                Arc::new(LatencyShard::new()),
            );
            handles.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for p in list {
                    out.push(worker.resolve(p, Duration::from_secs(60)).await);
                }
                out
            }));
        }
        for handle in handles {
            for resolved in handle.await.context("a resolution task panicked")? {
                match resolved {
                    Resolved::Applied => proof.unknown_resolved_applied += 1,
                    Resolved::NotApplied => proof.unknown_resolved_not_applied += 1,
                    Resolved::Unresolved(what) => failures.push(format!("outcome still unknown: {what}")),
                }
            }
        }
    }

    // Failures found during the run (replays, replies disagreeing with requests).
    failures.extend(shared.failures.lock().expect("failures lock").iter().cloned());

    // Test hook: an earn the model does not know about.
    if let Some((member, points)) = shared.cfg.unrecorded_earn {
        let mut client = LedgerClient::new(channels[0].clone());
        let request = EarnRequest {
            idempotency_key: format!("{run_id}-unrecorded"),
            member_id: shared.names.members[member % shared.names.members.len()].clone(),
            amount_points: points,
        };
        client
            .earn(authorized(request, &shared.auth[0], Duration::from_secs(10)))
            .await
            .context("the unrecorded earn")?;
        // For the per-key check: the earn journaled as refused (so it was "applied although
        // refused"), and an earn journaled as acknowledged but never sent (so it is "lost").
        let member = (member % shared.names.members.len()) as u32;
        let earn = Op::Earn { partner: 0, member, amount: points };
        shared.journal.record(&earn, &format!("{run_id}-unrecorded"), false, shared);
        shared.journal.record(&earn, &format!("{run_id}-never-sent"), true, shared);
    }

    // 2. Every account, read back linearizably.
    let partners = shared.cfg.partners;
    let members = shared.cfg.members;
    let accounts = (partners * members) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let tasks = shared.cfg.concurrency.clamp(1, 64);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let shared = shared.clone();
        let next = next.clone();
        let mut client = LedgerClient::new(channels[t % channels.len()].clone());
        handles.push(tokio::spawn(async move {
            let mut mismatches = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= accounts {
                    break;
                }
                let partner = (i / members as u64) as u16;
                let member = (i % members as u64) as u32;
                let member_id = &shared.names.members[member as usize];
                let mut attempt = 0;
                let actual = loop {
                    let request = GetBalanceRequest { member_id: member_id.clone(), consistency: 1 };
                    let auth = &shared.auth[partner as usize];
                    match client.get_balance(authorized(request, auth, Duration::from_secs(10))).await {
                        Ok(reply) => {
                            let b = reply.into_inner().balance.unwrap_or_default();
                            break Ok((b.balance_points as i64, b.held_points as i64));
                        }
                        Err(status) if status.code() == Code::NotFound => break Ok((0, 0)),
                        Err(status) if is_unknown(status.code()) && attempt < 20 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => break Err(status),
                    }
                };
                let currency = &shared.names.currencies[partner as usize];
                match actual {
                    Ok((balance, held)) => {
                        let (expected_balance, expected_held) = shared.model.expected(member, partner);
                        if (balance, held) != (expected_balance, expected_held) {
                            mismatches.push((
                                i,
                                AccountMismatch {
                                    member_id: member_id.clone(),
                                    currency: currency.clone(),
                                    expected_balance,
                                    actual_balance: balance,
                                    expected_held,
                                    actual_held: held,
                                },
                            ));
                        }
                    }
                    Err(status) => errors.push(format!(
                        "could not read member {member_id}'s {currency} balance: {:?}: {}",
                        status.code(),
                        status.message()
                    )),
                }
            }
            (mismatches, errors)
        }));
    }
    let mut mismatches = Vec::new();
    for handle in handles {
        let (m, e) = handle.await.context("a read-back task panicked")?;
        mismatches.extend(m);
        failures.extend(e);
    }
    mismatches.sort_by_key(|(i, _)| *i);
    proof.accounts_checked = accounts;
    proof.accounts_mismatched = mismatches.len() as u64;
    for (_, m) in mismatches.iter().take(FIRST_MISMATCHES) {
        failures.push(format!(
            "member {} {}: expected balance {} held {}, the cluster has balance {} held {}",
            m.member_id, m.currency, m.expected_balance, m.expected_held, m.actual_balance, m.actual_held
        ));
    }
    proof.first_mismatches = mismatches.into_iter().take(FIRST_MISMATCHES).map(|(_, m)| m).collect();

    // 3. Conservation: per currency, debits == credits over every shard.
    let status = admin
        .cluster_status(ClusterStatusRequest::default())
        .await
        .context("Admin/ClusterStatus")?
        .into_inner();
    for total in &status.currency_totals {
        let debits: Option<u128> = total.debits_points.parse().ok();
        let credits: Option<u128> = total.credits_points.parse().ok();
        let balanced = debits.is_some() && debits == credits;
        if !balanced {
            failures.push(format!(
                "currency {} is not conserved: debits {} != credits {}",
                total.currency, total.debits_points, total.credits_points
            ));
        }
        proof.conservation.push(CurrencyCheck {
            currency: total.currency.clone(),
            debits_points: total.debits_points.clone(),
            credits_points: total.credits_points.clone(),
            balanced,
        });
    }
    for currency in &shared.names.currencies {
        if !status.currency_totals.iter().any(|t| &t.currency == currency) {
            failures.push(format!("ClusterStatus shows no totals for the run's currency {currency}"));
        }
    }

    proof.passed = failures.is_empty();
    failures.truncate(FAILURES_KEPT);
    proof.failures = failures;
    Ok(proof)
}
