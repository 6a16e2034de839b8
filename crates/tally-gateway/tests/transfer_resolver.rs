//! The resolver of open cross-shard transfers over an in-memory backend (a real `Ledger` per
//! shard): the coordinating gateway stops between every pair of steps, and the resolver on the
//! sender's shard completes or refunds what it left, exactly once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{authed, InMemoryBackend, TestGateway, SKY_KEY};
use tally_gateway::submit::Deadline;
use tally_gateway::transfer::{
    self, resolve_open_transfers, transfer_in_key, CrossShardTransfer, ResolveReport,
};
use tally_gateway::Backend;
use tally_ledger::limits::AMOUNT_POINTS_MAX;
use tally_ledger::routing::shard_of_member;
use tally_ledger::{
    Command, CurrencyCode, IdempotencyKey, MemberId, Operation, OperationKind, OperationResult, PartnerId,
    TransferId, TransferRecord, TransferStatus,
};
use tally_proto::v1::{EarnRequest, OperationReply, TransferRequest};
use tonic::Code;

const CURRENCY: &str = "SKYMILES";

fn earn(key: &str, member: &str, amount: u64) -> EarnRequest {
    EarnRequest { idempotency_key: key.into(), member_id: member.into(), amount_points: amount }
}

fn transfer_request(key: &str, from: &str, to: &str, amount: u64) -> TransferRequest {
    TransferRequest {
        idempotency_key: key.into(),
        from_member_id: from.into(),
        to_member_id: to.into(),
        amount_points: amount,
    }
}

fn points(reply: &OperationReply) -> Vec<(String, u64)> {
    reply.balances.iter().map(|balance| (balance.member_id.clone(), balance.balance_points)).collect()
}

/// The transfer the gateway builds for partner `sky`'s request `key`.
fn cross_shard(gateway: &TestGateway, key: &str, from: &str, to: &str, amount: u64) -> CrossShardTransfer {
    let partner_id = PartnerId::parse("sky").unwrap();
    let idempotency_key = IdempotencyKey::parse(key).unwrap();
    let transfer = CrossShardTransfer {
        transfer_id: transfer::transfer_id(&partner_id, &idempotency_key).unwrap(),
        partner_id,
        idempotency_key,
        from_member_id: MemberId::parse(from).unwrap(),
        to_member_id: MemberId::parse(to).unwrap(),
        currency: CurrencyCode::parse(CURRENCY).unwrap(),
        amount_points: amount,
        from_shard: gateway.shard_of(from),
        to_shard: gateway.shard_of(to),
    };
    assert_ne!(transfer.from_shard, transfer.to_shard);
    transfer
}

/// A member id starting with `prefix` that lives on `shard`.
fn member_on(gateway: &TestGateway, prefix: &str, shard: u32) -> String {
    (0..10_000).map(|n| format!("{prefix}-{n}")).find(|member| gateway.shard_of(member) == shard).unwrap()
}

async fn resolve(
    backend: &Arc<InMemoryBackend>,
    shard: u32,
    open: Vec<(TransferId, TransferRecord)>,
) -> ResolveReport {
    resolve_open_transfers(backend, Deadline::after(Duration::from_secs(5)), shard, open).await
}

fn completed(ids: &[&TransferId]) -> ResolveReport {
    ResolveReport { completed: ids.iter().map(|id| (*id).clone()).collect(), ..ResolveReport::default() }
}

fn refunded(ids: &[&TransferId]) -> ResolveReport {
    ResolveReport { refunded: ids.iter().map(|id| (*id).clone()).collect(), ..ResolveReport::default() }
}

/// Submits one command straight to a shard, as a gateway would, and returns its result.
async fn step(backend: &InMemoryBackend, shard: u32, command: Command) -> OperationResult {
    let mut outcomes = backend.submit(shard, vec![command]).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).result.unwrap()
}

fn balance(backend: &InMemoryBackend, member: &str) -> Option<u64> {
    let shard = shard_of_member(&MemberId::parse(member).unwrap(), backend.shard_count());
    let currency = CurrencyCode::parse(CURRENCY).unwrap();
    backend
        .with_ledger(shard, |ledger| ledger.balance(&MemberId::parse(member).unwrap(), &currency))
        .map(|view| view.balance_points)
}

/// The transfer `transfer` (after `earned` points were earned by its sender, and nothing else
/// happened to either member) is completed exactly once: the sender debited once, the
/// recipient credited once, the record closed, no points in flight.
fn assert_completed_once(gateway: &TestGateway, transfer: &CrossShardTransfer, earned: u64) {
    let backend = &gateway.backend;
    let (from, to) = (transfer.from_member_id.as_str(), transfer.to_member_id.as_str());
    let amount = transfer.amount_points;
    assert_eq!(balance(backend, from), Some(earned - amount));
    assert_eq!(balance(backend, to), Some(amount));
    let received = backend.statement_lines(transfer.to_shard, to, CURRENCY);
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!((received[0].kind, received[0].credit_points), (OperationKind::TransferIn, amount));
    let sent = backend.statement_lines(transfer.from_shard, from, CURRENCY);
    let debits: Vec<_> = sent.iter().filter(|line| line.debit_points > 0).collect();
    assert_eq!(debits.len(), 1, "{sent:?}");
    assert_eq!((debits[0].kind, debits[0].debit_points), (OperationKind::TransferOut, amount));
    let record = backend.transfer_record(transfer.from_shard, &transfer.transfer_id).unwrap();
    assert_eq!(record.status, TransferStatus::Completed);
    assert!(backend.open_transfers(transfer.from_shard).is_empty());
    backend.assert_points_conserved(CURRENCY);
}

/// The gateway submits the first `steps` steps of a transfer of 30 points, then stops; the
/// resolver finishes it; later rounds and the client's retry change nothing.
async fn gateway_stops_after(steps: usize) {
    let gateway = TestGateway::start(4).await;
    let backend = &gateway.backend;
    let (alice, bob) = gateway.member_pair("member", false);
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    let transfer = cross_shard(&gateway, "t1", &alice, &bob, 30);
    let (source, id) = (transfer.from_shard, &transfer.transfer_id);

    assert!(matches!(
        step(backend, source, transfer.out_command()).await,
        OperationResult::TransferredOut { .. }
    ));
    // What a resolver reads if it looks right after step 1.
    let read_after_step_1 = backend.open_transfers(source);
    assert_eq!(read_after_step_1.len(), 1);
    if steps >= 2 {
        let credited = step(backend, transfer.to_shard, transfer.in_command()).await;
        assert!(matches!(credited, OperationResult::TransferredIn { ref to, .. } if to.balance_points == 30));
    }
    if steps >= 3 {
        let closed = step(backend, source, transfer.complete_command()).await;
        assert!(matches!(closed, OperationResult::TransferCompleted { .. }));
    }
    assert_eq!(balance(backend, &alice), Some(70));
    let open = backend.open_transfers(source);
    assert_eq!(open.len(), usize::from(steps < 3));

    let report = resolve(backend, source, open).await;
    if steps < 3 {
        assert_eq!(report, completed(&[id]));
    } else {
        assert_eq!(report, ResolveReport::default());
    }
    assert_completed_once(&gateway, &transfer, 100);

    // Later rounds change nothing: with what the shard lists now (nothing), with a list read
    // before the last step (its steps replay), and with the closed record itself (no command).
    let settled = backend.state_without_clocks();
    assert_eq!(resolve(backend, source, backend.open_transfers(source)).await, ResolveReport::default());
    assert_eq!(resolve(backend, source, read_after_step_1.clone()).await, completed(&[id]));
    let closed = backend.transfer_record(source, id).unwrap();
    let calls = backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(resolve(backend, source, vec![(id.clone(), closed)]).await, completed(&[id]));
    assert_eq!(backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst), calls);
    assert_eq!(backend.state_without_clocks(), settled);

    // The client's retry of the original request gets the transfer's answer, as a replay.
    let reply = client
        .transfer(authed(SKY_KEY, transfer_request("t1", &alice, &bob, 30)))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.replay);
    assert_eq!(reply.operation, "transfer");
    assert_eq!(reply.transfer_id, "sky:t1");
    assert_eq!(points(&reply), vec![(alice.clone(), 70), (bob.clone(), 30)]);
    let again = client
        .transfer(authed(SKY_KEY, transfer_request("t1", &alice, &bob, 30)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, reply);
    assert_eq!(backend.state_without_clocks(), settled);
    assert_completed_once(&gateway, &transfer, 100);
}

#[tokio::test]
async fn gateway_stopped_after_transfer_out_is_completed_by_the_resolver() {
    gateway_stops_after(1).await;
}

#[tokio::test]
async fn gateway_stopped_after_transfer_in_is_completed_by_the_resolver() {
    gateway_stops_after(2).await;
}

#[tokio::test]
async fn gateway_that_did_every_step_leaves_the_resolver_nothing_to_do() {
    gateway_stops_after(3).await;
}

/// Earns to `member` (on `shard`) until its credits are `credits` points: AMOUNT_POINTS_MAX
/// per earn, as few submissions as the shard batches allow.
async fn fill_credits(backend: &InMemoryBackend, shard: u32, member: &str, credits: u64) {
    let mut amounts = vec![AMOUNT_POINTS_MAX; (credits / AMOUNT_POINTS_MAX) as usize];
    let rest = credits % AMOUNT_POINTS_MAX;
    if rest > 0 {
        amounts.push(rest);
    }
    let commands: Vec<Command> = amounts
        .into_iter()
        .enumerate()
        .map(|(n, amount_points)| Command {
            partner_id: PartnerId::parse("sky").unwrap(),
            idempotency_key: IdempotencyKey::parse(format!("fill-{n}")).unwrap(),
            operation: Operation::Earn {
                member_id: MemberId::parse(member).unwrap(),
                currency: CurrencyCode::parse(CURRENCY).unwrap(),
                amount_points,
            },
        })
        .collect();
    for batch in commands.chunks(tally_ledger::limits::BATCH_COMMANDS_MAX) {
        for outcome in backend.submit(shard, batch.to_vec()).await.unwrap() {
            outcome.result.unwrap();
        }
    }
    assert_eq!(balance(backend, member), Some(credits));
}

#[tokio::test]
async fn a_credit_the_recipient_shard_refuses_is_refunded_to_the_sender() {
    let gateway = TestGateway::start(4).await;
    let backend = &gateway.backend;
    let (alice, bob) = gateway.member_pair("member", false);
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    // Bob's credits are 10 points short of u64::MAX: crediting him 30 more would overflow, a
    // refusal the recipient's shard stores under step 2's key.
    let bob_credits = u64::MAX - 10;
    fill_credits(backend, gateway.shard_of(&bob), &bob, bob_credits).await;
    let bob_lines = backend.statement_lines(gateway.shard_of(&bob), &bob, CURRENCY).len();
    let transfer = cross_shard(&gateway, "t1", &alice, &bob, 30);
    let (source, id) = (transfer.from_shard, &transfer.transfer_id);

    // The gateway does step 1, is refused step 2, and tells its caller.
    let result = client.transfer(authed(SKY_KEY, transfer_request("t1", &alice, &bob, 30))).await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("overflow"), "{status:?}");
    assert_eq!(balance(backend, &alice), Some(70));
    let open = backend.open_transfers(source);
    assert_eq!(open.len(), 1);

    let report = resolve(backend, source, open.clone()).await;
    assert_eq!(report, refunded(&[id]));
    assert_eq!(balance(backend, &alice), Some(100));
    assert_eq!(backend.transfer_record(source, id).unwrap().status, TransferStatus::Refunded);
    assert!(backend.open_transfers(source).is_empty());
    let lines = backend.statement_lines(source, &alice, CURRENCY);
    let kinds: Vec<_> = lines.iter().map(|line| (line.kind, line.credit_points, line.debit_points)).collect();
    assert_eq!(
        kinds,
        vec![
            (OperationKind::Earn, 100, 0),
            (OperationKind::TransferOut, 0, 30),
            (OperationKind::TransferRefund, 30, 0)
        ]
    );
    assert_eq!(lines[2].idempotency_key, transfer::transfer_refund_key(id));
    // Bob got nothing, and his shard keeps no marker that would swallow a later credit.
    assert_eq!(balance(backend, &bob), Some(bob_credits));
    assert_eq!(backend.statement_lines(gateway.shard_of(&bob), &bob, CURRENCY).len(), bob_lines);
    assert_eq!(backend.transfer_record(transfer.to_shard, id), None);
    backend.assert_points_conserved(CURRENCY);

    // Later rounds change nothing; neither does the client's retry, which gets the refusal.
    let settled = backend.state_without_clocks();
    assert_eq!(resolve(backend, source, backend.open_transfers(source)).await, ResolveReport::default());
    assert_eq!(resolve(backend, source, open).await, refunded(&[id]));
    let status =
        client.transfer(authed(SKY_KEY, transfer_request("t1", &alice, &bob, 30))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("overflow"), "{status:?}");
    assert_eq!(backend.state_without_clocks(), settled);
    assert_eq!(balance(backend, &alice), Some(100));
}

#[tokio::test]
async fn shards_down_leave_the_transfer_open_until_a_later_round() {
    let gateway = TestGateway::start(4).await;
    let backend = &gateway.backend;
    let (alice, bob) = gateway.member_pair("member", false);
    gateway.ledger().earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    let transfer = cross_shard(&gateway, "t1", &alice, &bob, 30);
    let (source, id) = (transfer.from_shard, &transfer.transfer_id);
    step(backend, source, transfer.out_command()).await;
    let short = || Deadline::after(Duration::from_millis(100));

    // The recipient's shard is down: nothing is credited, the record stays open.
    backend.set_down(transfer.to_shard, true);
    let report = resolve_open_transfers(backend, short(), source, backend.open_transfers(source)).await;
    assert!(report.completed.is_empty() && report.refunded.is_empty(), "{report:?}");
    assert_eq!(report.still_open.len(), 1, "{report:?}");
    let (open_id, why) = &report.still_open[0];
    assert_eq!(open_id, id);
    assert!(why.contains(&format!("transfer-in on shard {}", transfer.to_shard)), "{why}");
    assert!(why.contains("unavailable"), "{why}");
    assert_eq!(balance(backend, &bob), None);
    assert_eq!(backend.open_transfers(source).len(), 1);

    // The recipient's shard is back but the sender's is down: credited, not yet closed.
    backend.set_down(transfer.to_shard, false);
    backend.set_down(source, true);
    let report = resolve_open_transfers(backend, short(), source, backend.open_transfers(source)).await;
    assert_eq!(report.still_open.len(), 1, "{report:?}");
    let (_, why) = &report.still_open[0];
    assert!(why.contains(&format!("transfer-complete on shard {source}")), "{why}");
    assert_eq!(balance(backend, &bob), Some(30));
    assert_eq!(backend.open_transfers(source).len(), 1);

    // Both up, after a leader election or two: the next round completes it, once.
    backend.set_down(source, false);
    backend.fail_next_submits(2);
    let report = resolve(backend, source, backend.open_transfers(source)).await;
    assert_eq!(report, completed(&[id]));
    assert_completed_once(&gateway, &transfer, 100);
}

#[tokio::test]
async fn one_round_resolves_many_transfers_with_one_submission_per_shard() {
    let gateway = TestGateway::start(4).await;
    let backend = &gateway.backend;
    let alice = "member-0".to_string();
    let source = gateway.shard_of(&alice);
    let others: Vec<u32> = (0..4).filter(|shard| *shard != source).take(2).collect();
    let recipients = [
        member_on(&gateway, "bob", others[0]),
        member_on(&gateway, "carol", others[0]),
        member_on(&gateway, "dave", others[1]),
    ];
    gateway.ledger().earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    let transfers: Vec<CrossShardTransfer> = recipients
        .iter()
        .enumerate()
        .map(|(n, to)| cross_shard(&gateway, &format!("t{n}"), &alice, to, 10 + n as u64))
        .collect();
    let outs = transfers.iter().map(CrossShardTransfer::out_command).collect();
    backend.submit(source, outs).await.unwrap();
    // The gateway of the second one got as far as step 2.
    step(backend, transfers[1].to_shard, transfers[1].in_command()).await;

    let calls = backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst);
    let report = resolve(backend, source, backend.open_transfers(source)).await;
    // Step 2 on the two recipient shards, then every completion in one submission.
    assert_eq!(backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst), calls + 3);
    let mut done = report.completed.clone();
    done.sort();
    let mut ids: Vec<TransferId> = transfers.iter().map(|transfer| transfer.transfer_id.clone()).collect();
    ids.sort();
    assert_eq!(done, ids);
    assert!(report.refunded.is_empty() && report.still_open.is_empty(), "{report:?}");
    assert_eq!(balance(backend, &alice), Some(100 - 10 - 11 - 12));
    for (n, to) in recipients.iter().enumerate() {
        assert_eq!(balance(backend, to), Some(10 + n as u64));
        assert_eq!(backend.statement_lines(gateway.shard_of(to), to, CURRENCY).len(), 1);
    }
    assert!(backend.open_transfers(source).is_empty());
    backend.assert_points_conserved(CURRENCY);
}

/// Step 2's key answering "used for a different request" says nothing about whether the
/// recipient was paid: here a forged credit under that key paid 29 points. Refunding would
/// create points, completing would leave the amounts inconsistent, so the resolver leaves the
/// record open for an operator.
#[tokio::test]
async fn a_step_key_holding_another_request_is_left_for_an_operator() {
    let gateway = TestGateway::start(4).await;
    let backend = &gateway.backend;
    let (alice, bob) = gateway.member_pair("member", false);
    gateway.ledger().earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    let transfer = cross_shard(&gateway, "t1", &alice, &bob, 30);
    let (source, id) = (transfer.from_shard, &transfer.transfer_id);
    step(backend, source, transfer.out_command()).await;
    let forged = CrossShardTransfer { amount_points: 29, ..transfer.clone() };
    assert_eq!(forged.in_command().idempotency_key, transfer_in_key(id));
    step(backend, transfer.to_shard, forged.in_command()).await;

    for _round in 0..2 {
        let report = resolve(backend, source, backend.open_transfers(source)).await;
        assert!(report.completed.is_empty() && report.refunded.is_empty(), "{report:?}");
        assert_eq!(report.still_open.len(), 1, "{report:?}");
        assert!(report.still_open[0].1.contains("already used for a different request"), "{report:?}");
        assert_eq!(balance(backend, &alice), Some(70));
        assert_eq!(backend.open_transfers(source).len(), 1);
    }
}
