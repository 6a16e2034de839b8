//! End-to-end tests through gRPC against an in-process dev cluster (real sled, real openraft,
//! real tonic on port 0).

mod common;

use common::{authorized, balance, statement, TestCluster};
use tally_proto::v1::batch_operation::Operation as BatchOp;
use tally_proto::v1::batch_result::Result as BatchResultKind;
use tally_proto::v1::{
    AgreementTerms, AuthorizeHoldRequest, BatchOperation, CaptureHoldRequest, EarnRequest, EnrolRequest,
    ExchangeRequest, GetOperationRequest, HoldStatus, RedeemRequest, ReverseEarnRequest, SubmitBatchRequest,
    TransferRequest, VoidHoldRequest,
};
use tonic::Code;

fn earn(key: &str, member: &str, points: u64) -> EarnRequest {
    EarnRequest { idempotency_key: key.into(), member_id: member.into(), amount_points: points }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_succeeds_through_grpc() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let mut ledger = cluster.ledger().await;

    let enrolled = ledger
        .enrol(authorized(EnrolRequest { idempotency_key: "e1".into(), member_id: "alice".into() }, &sky))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.balances[0].balance_points, 0);

    let earned = ledger.earn(authorized(earn("k1", "alice", 1_000), &sky)).await.unwrap().into_inner();
    assert!(!earned.replay);
    assert_eq!(earned.operation, "earn");
    assert_eq!(earned.balances[0].balance_points, 1_000);

    let redeemed = ledger
        .redeem(authorized(
            RedeemRequest { idempotency_key: "k2".into(), member_id: "alice".into(), amount_points: 300 },
            &sky,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redeemed.balances[0].balance_points, 700);

    let reversed = ledger
        .reverse_earn(authorized(
            ReverseEarnRequest {
                idempotency_key: "k3".into(),
                earn_idempotency_key: "k1".into(),
                amount_points: 100,
                member_id: "alice".into(),
            },
            &sky,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reversed.reversed_points, 100);
    assert_eq!(reversed.earn_remaining_points, 900);
    assert_eq!(reversed.balances[0].balance_points, 600);

    let held = ledger
        .authorize_hold(authorized(
            AuthorizeHoldRequest {
                idempotency_key: "h1".into(),
                member_id: "alice".into(),
                amount_points: 200,
                expires_in_ms: 60_000,
            },
            &sky,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.balances[0].held_points, 200);
    assert_eq!(held.balances[0].available_points, 400);
    assert_eq!(held.hold.as_ref().unwrap().status, HoldStatus::Open as i32);

    let captured = ledger
        .capture_hold(authorized(
            CaptureHoldRequest {
                idempotency_key: "h1-capture".into(),
                hold_idempotency_key: "h1".into(),
                member_id: "alice".into(),
                amount_points: 150,
            },
            &sky,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(captured.balances[0].balance_points, 450);
    assert_eq!(captured.balances[0].held_points, 0);
    assert_eq!(captured.hold.as_ref().unwrap().captured_points, 150);

    ledger
        .authorize_hold(authorized(
            AuthorizeHoldRequest {
                idempotency_key: "h2".into(),
                member_id: "alice".into(),
                amount_points: 50,
                expires_in_ms: 60_000,
            },
            &sky,
        ))
        .await
        .unwrap();
    let voided = ledger
        .void_hold(authorized(
            VoidHoldRequest {
                idempotency_key: "h2-void".into(),
                hold_idempotency_key: "h2".into(),
                member_id: "alice".into(),
            },
            &sky,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voided.hold.as_ref().unwrap().status, HoldStatus::Voided as i32);
    assert_eq!(voided.balances[0].available_points, 450);

    // Transfers to many recipients cross shards for most of them (4 shards).
    for index in 0..6 {
        let recipient = format!("friend-{index}");
        let transferred = ledger
            .transfer(authorized(
                TransferRequest {
                    idempotency_key: format!("t{index}"),
                    from_member_id: "alice".into(),
                    to_member_id: recipient.clone(),
                    amount_points: 10,
                },
                &sky,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(transferred.balances.len(), 2, "sender and recipient balances");
        assert_eq!(balance(&mut ledger, &sky, &recipient).await.unwrap().balance_points, 10);
    }
    assert_eq!(balance(&mut ledger, &sky, "alice").await.unwrap().balance_points, 390);

    let lines = statement(&mut ledger, &sky, "alice").await;
    let kinds: Vec<&str> = lines.iter().map(|line| line.operation.as_str()).collect();
    assert_eq!(&kinds[..4], &["earn", "redeem", "reverse_earn", "capture_hold"], "oldest first: {kinds:?}");
    assert_eq!(lines.last().unwrap().balance_after_points, 390);

    let stored = ledger
        .get_operation(authorized(
            GetOperationRequest { idempotency_key: "k2".into(), member_id: "alice".into() },
            &sky,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.operation, "redeem");
    assert_eq!(stored.result.unwrap().balances[0].balance_points, 700);

    assert_conserved(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_applies_the_agreed_rate_fee_and_rounding() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let hotel = cluster.create_partner("grandhotel", "HOTELPTS").await;
    let mut ledger = cluster.ledger().await;
    ledger.earn(authorized(earn("seed", "bob", 10_000), &sky)).await.unwrap();

    let exchange = |key: &str, amount: u64| ExchangeRequest {
        idempotency_key: key.into(),
        member_id: "bob".into(),
        from_currency: "SKYMILES".into(),
        to_currency: "HOTELPTS".into(),
        amount_points: amount,
    };
    // No agreement yet: FAILED_PRECONDITION, nothing moves.
    let error = ledger.exchange(authorized(exchange("x0", 1_000), &sky)).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("agreement"), "{}", error.message());

    // 2 hotel points per 3 miles, fee 10 miles, between 100 and 5000, in blocks of 5.
    let terms = AgreementTerms {
        rate_numerator: 2,
        rate_denominator: 3,
        minimum_points: 100,
        maximum_points: 5_000,
        block_size_points: 5,
        fee_points: 10,
    };
    cluster.set_agreement("SKYMILES", "HOTELPTS", terms).await;

    let reply = ledger.exchange(authorized(exchange("x1", 1_000), &sky)).await.unwrap().into_inner();
    // floor((1000 - 10) * 2 / 3) = floor(660) = 660
    assert_eq!((reply.debited_points, reply.fee_points, reply.credited_points), (1_000, 10, 660));
    let reply = ledger.exchange(authorized(exchange("x2", 105), &sky)).await.unwrap().into_inner();
    // floor((105 - 10) * 2 / 3) = floor(63.33) = 63: the fraction is never credited.
    assert_eq!(reply.credited_points, 63);
    assert_eq!(reply.balances[0].balance_points, 10_000 - 1_105);
    assert_eq!(reply.balances[1].balance_points, 723);

    // The target partner may also ask for the exchange and sees the same member.
    assert_eq!(balance(&mut ledger, &hotel, "bob").await.unwrap().balance_points, 723);

    for (key, amount) in [("x3", 95), ("x4", 5_005), ("x5", 101)] {
        let error = ledger.exchange(authorized(exchange(key, amount), &sky)).await.unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition, "{amount}: {error:?}");
    }
    assert_eq!(balance(&mut ledger, &sky, "bob").await.unwrap().balance_points, 10_000 - 1_105);
    assert_conserved(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_copies_apply_once_and_get_one_answer() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let channel = cluster.channel().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut ledger = tally_proto::v1::ledger_client::LedgerClient::new(channel.clone());
        let key = sky.clone();
        tasks.push(tokio::spawn(async move {
            ledger.earn(authorized(earn("same-key", "carol", 250), &key)).await.unwrap().into_inner()
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let originals = replies.iter().filter(|reply| !reply.replay).count();
    assert_eq!(originals, 1, "exactly one copy is the original");
    for reply in &replies {
        assert_eq!(reply.log_index, replies[0].log_index);
        assert_eq!(reply.balances, replies[0].balances);
        assert_eq!(reply.balances[0].balance_points, 250);
    }
    let mut ledger = cluster.ledger().await;
    assert_eq!(balance(&mut ledger, &sky, "carol").await.unwrap().balance_points, 250);
    assert_eq!(statement(&mut ledger, &sky, "carol").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let mut cluster = TestCluster::start().await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let mut ledger = cluster.ledger().await;
    ledger.earn(authorized(earn("k1", "dave", 500), &sky)).await.unwrap();
    let hold = AuthorizeHoldRequest {
        idempotency_key: "h1".into(),
        member_id: "dave".into(),
        amount_points: 120,
        expires_in_ms: 3_600_000,
    };
    ledger.authorize_hold(authorized(hold, &sky)).await.unwrap();
    let before_balance = balance(&mut ledger, &sky, "dave").await.unwrap();
    let before_statement = statement(&mut ledger, &sky, "dave").await;

    cluster.restart().await;
    let mut ledger = cluster.ledger().await;
    assert_eq!(balance(&mut ledger, &sky, "dave").await.unwrap(), before_balance, "balance and hold survive");
    assert_eq!(statement(&mut ledger, &sky, "dave").await, before_statement, "statement survives");
    // The idempotency record survives: the retry is a replay, not a second earn.
    let replay = ledger.earn(authorized(earn("k1", "dave", 500), &sky)).await.unwrap().into_inner();
    assert!(replay.replay);
    // The hold survives and can be captured.
    let capture = CaptureHoldRequest {
        idempotency_key: "c1".into(),
        hold_idempotency_key: "h1".into(),
        member_id: "dave".into(),
        amount_points: 0,
    };
    let captured = ledger.capture_hold(authorized(capture, &sky)).await.unwrap().into_inner();
    assert_eq!(captured.balances[0].balance_points, 380);
    // The partner (meta group) survives: the same API key still works, checked above.
    assert_conserved(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_batch_returns_one_result_per_operation() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let mut ledger = cluster.ledger().await;
    let mut operations: Vec<BatchOperation> = (0..200)
        .map(|index| BatchOperation {
            operation: Some(BatchOp::Earn(earn(&format!("b{index}"), &format!("member-{}", index % 20), 5))),
        })
        .collect();
    operations.push(BatchOperation {
        operation: Some(BatchOp::Redeem(RedeemRequest {
            idempotency_key: "too-much".into(),
            member_id: "nobody".into(),
            amount_points: 5,
        })),
    });
    let reply =
        ledger.submit_batch(authorized(SubmitBatchRequest { operations }, &sky)).await.unwrap().into_inner();
    assert_eq!(reply.results.len(), 201);
    for result in &reply.results[..200] {
        assert!(matches!(result.result, Some(BatchResultKind::Ok(_))), "{result:?}");
    }
    match &reply.results[200].result {
        Some(BatchResultKind::Error(error)) => assert_eq!(error.code, Code::NotFound as i32, "{error:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(balance(&mut ledger, &sky, "member-3").await.unwrap().balance_points, 50);
    assert_conserved(&cluster).await;
}

/// Every currency's debits equal its credits over all shards.
pub async fn assert_conserved(cluster: &TestCluster) {
    let status = cluster
        .admin()
        .await
        .cluster_status(tally_proto::v1::ClusterStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!status.currency_totals.is_empty());
    for total in status.currency_totals {
        assert_eq!(total.debits_points, total.credits_points, "{} is not conserved", total.currency);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_released_on_an_idle_shard_and_cannot_be_captured() {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let mut ledger = cluster.ledger().await;
    ledger.earn(authorized(earn("seed", "erin", 300), &sky)).await.unwrap();
    let hold = AuthorizeHoldRequest {
        idempotency_key: "short".into(),
        member_id: "erin".into(),
        amount_points: 100,
        expires_in_ms: 1_000,
    };
    let held = ledger.authorize_hold(authorized(hold, &sky)).await.unwrap().into_inner();
    assert_eq!(held.balances[0].available_points, 200);
    // No other write reaches the shard: the leader's expiry tick must release the hold.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = balance(&mut ledger, &sky, "erin").await.unwrap();
        if now.held_points == 0 {
            assert_eq!((now.balance_points, now.available_points), (300, 300));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the hold was not released: {now:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let capture = CaptureHoldRequest {
        idempotency_key: "late-capture".into(),
        hold_idempotency_key: "short".into(),
        member_id: "erin".into(),
        amount_points: 0,
    };
    let error = ledger.capture_hold(authorized(capture, &sky)).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("expired"), "{}", error.message());
    assert_eq!(balance(&mut ledger, &sky, "erin").await.unwrap().balance_points, 300);
}
