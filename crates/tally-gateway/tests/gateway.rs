//! The gateway end to end: a tonic server over an in-memory backend, called through the
//! generated clients.

mod common;

use std::time::Duration;

use common::{authed, TestGateway, HOTEL_KEY, SKY_KEY};
use prost::Message;
use tally_gateway::GatewayConfig;
use tally_ledger::limits::{AMOUNT_POINTS_MAX, HOLD_DURATION_MS_MAX, SUBMIT_BATCH_OPERATIONS_MAX};
use tally_ledger::routing::home_shard_of_key;
use tally_ledger::{AgreementTerms, IdempotencyKey, PartnerId};
use tally_proto::v1::{
    batch_operation, batch_result, AuthorizeHoldRequest, BatchOperation, CaptureHoldRequest, EarnRequest,
    EnrolRequest, ExchangeRequest, GetBalanceRequest, GetOperationRequest, HoldStatus, ListStatementRequest,
    OperationReply, RedeemRequest, ReverseEarnRequest, StatementOrder, SubmitBatchRequest, TransferRequest,
    VoidHoldRequest,
};
use tonic::{Code, Status};

fn earn(key: &str, member: &str, amount: u64) -> EarnRequest {
    EarnRequest { idempotency_key: key.into(), member_id: member.into(), amount_points: amount }
}

fn transfer(key: &str, from: &str, to: &str, amount: u64) -> TransferRequest {
    TransferRequest {
        idempotency_key: key.into(),
        from_member_id: from.into(),
        to_member_id: to.into(),
        amount_points: amount,
    }
}

fn exchange(key: &str, member: &str, from: &str, to: &str, amount: u64) -> ExchangeRequest {
    ExchangeRequest {
        idempotency_key: key.into(),
        member_id: member.into(),
        from_currency: from.into(),
        to_currency: to.into(),
        amount_points: amount,
    }
}

fn batch_op(operation: batch_operation::Operation) -> BatchOperation {
    BatchOperation { operation: Some(operation) }
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) -> Status {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "message {:?} should contain {needle:?}", status.message());
    status
}

/// Balance points of a member in the caller's currency (None if no account).
async fn balance(gateway: &TestGateway, api_key: &str, member: &str) -> Option<u64> {
    let reply = gateway
        .ledger()
        .get_balance(authed(api_key, GetBalanceRequest { member_id: member.into(), consistency: 0 }))
        .await;
    match reply {
        Ok(reply) => Some(reply.into_inner().balance.unwrap().balance_points),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("{status:?}"),
    }
}

fn points(reply: &OperationReply) -> Vec<(String, u64)> {
    reply.balances.iter().map(|balance| (balance.member_id.clone(), balance.balance_points)).collect()
}

// ---- authentication --------------------------------------------------------------------

#[tokio::test]
async fn missing_or_wrong_keys_are_unauthenticated() {
    let gateway = TestGateway::start(4).await;
    let mut client = gateway.ledger();
    let result = client.earn(tonic::Request::new(earn("k1", "alice", 10))).await;
    assert_status(
        result,
        Code::Unauthenticated,
        "missing authorization metadata: send `authorization: Bearer <api key>`",
    );
    let result = client.earn(authed("tly_wrong", earn("k1", "alice", 10))).await;
    assert_status(result, Code::Unauthenticated, "API key not recognised");
    let mut request = tonic::Request::new(GetBalanceRequest { member_id: "alice".into(), consistency: 0 });
    request.metadata_mut().insert("authorization", SKY_KEY.parse().unwrap());
    assert_status(client.get_balance(request).await, Code::Unauthenticated, "Bearer");
    // A key replaced in the meta state (as a rotation does) stops working at once.
    gateway.backend.insert_partner("sky", "SKYMILES", "tly_new_sky_key");
    let result = client.earn(authed(SKY_KEY, earn("k1", "alice", 10))).await;
    assert_status(result, Code::Unauthenticated, "API key not recognised");
    assert_eq!(gateway.backend.applied(), 0);
    assert_eq!(gateway.backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

// ---- validation ------------------------------------------------------------------------

/// Sends every kind of malformed request and checks each is INVALID_ARGUMENT naming the field.
async fn send_invalid_requests(gateway: &TestGateway, member: &str) {
    let mut client = gateway.ledger();
    let long = "m".repeat(129);
    let k = "fresh-key";
    macro_rules! invalid {
        ($call:ident, $message:expr, $needle:expr) => {
            assert_status(client.$call(authed(SKY_KEY, $message)).await, Code::InvalidArgument, $needle);
        };
    }
    invalid!(
        enrol,
        EnrolRequest { idempotency_key: "".into(), member_id: member.into() },
        "idempotency_key must not be empty"
    );
    invalid!(
        enrol,
        EnrolRequest { idempotency_key: "a\u{7}b".into(), member_id: member.into() },
        "idempotency_key contains a control character"
    );
    invalid!(
        enrol,
        EnrolRequest { idempotency_key: "k".repeat(129), member_id: member.into() },
        "idempotency_key is 129 bytes long"
    );
    invalid!(
        enrol,
        EnrolRequest { idempotency_key: "xfer-in:abc".into(), member_id: member.into() },
        "idempotency_key must not start with"
    );
    invalid!(
        enrol,
        EnrolRequest { idempotency_key: k.into(), member_id: "".into() },
        "member_id must not be empty"
    );
    invalid!(
        enrol,
        EnrolRequest { idempotency_key: k.into(), member_id: long.clone() },
        "member_id is 129 bytes long"
    );
    invalid!(earn, earn(k, member, 0), "amount_points must be at least 1 point");
    invalid!(earn, earn(k, member, AMOUNT_POINTS_MAX + 1), "amount_points is 1000000000000001");
    invalid!(
        redeem,
        RedeemRequest { idempotency_key: k.into(), member_id: member.into(), amount_points: 0 },
        "amount_points must be at least 1 point"
    );
    invalid!(
        reverse_earn,
        ReverseEarnRequest {
            idempotency_key: k.into(),
            earn_idempotency_key: "".into(),
            amount_points: 0,
            member_id: member.into()
        },
        "earn_idempotency_key must not be empty"
    );
    invalid!(
        reverse_earn,
        ReverseEarnRequest {
            idempotency_key: k.into(),
            earn_idempotency_key: "e".into(),
            amount_points: AMOUNT_POINTS_MAX + 1,
            member_id: member.into()
        },
        "amount_points is"
    );
    invalid!(
        reverse_earn,
        ReverseEarnRequest {
            idempotency_key: k.into(),
            earn_idempotency_key: "e".into(),
            amount_points: 1,
            member_id: "".into()
        },
        "member_id must not be empty"
    );
    invalid!(
        authorize_hold,
        AuthorizeHoldRequest {
            idempotency_key: k.into(),
            member_id: member.into(),
            amount_points: 5,
            expires_in_ms: 0
        },
        "a hold lasts at least 1000 ms"
    );
    invalid!(
        authorize_hold,
        AuthorizeHoldRequest {
            idempotency_key: k.into(),
            member_id: member.into(),
            amount_points: 5,
            expires_in_ms: HOLD_DURATION_MS_MAX + 1
        },
        "expires_in_ms is"
    );
    invalid!(
        authorize_hold,
        AuthorizeHoldRequest {
            idempotency_key: k.into(),
            member_id: member.into(),
            amount_points: 0,
            expires_in_ms: 1000
        },
        "amount_points must be at least 1 point"
    );
    invalid!(
        capture_hold,
        CaptureHoldRequest {
            idempotency_key: k.into(),
            hold_idempotency_key: "".into(),
            member_id: member.into(),
            amount_points: 0
        },
        "hold_idempotency_key must not be empty"
    );
    invalid!(
        capture_hold,
        CaptureHoldRequest {
            idempotency_key: k.into(),
            hold_idempotency_key: "h".into(),
            member_id: member.into(),
            amount_points: AMOUNT_POINTS_MAX + 1
        },
        "amount_points is"
    );
    invalid!(
        void_hold,
        VoidHoldRequest {
            idempotency_key: k.into(),
            hold_idempotency_key: "".into(),
            member_id: member.into()
        },
        "hold_idempotency_key must not be empty"
    );
    invalid!(transfer, transfer(k, member, member, 5), "to_member_id must differ from from_member_id");
    invalid!(transfer, transfer(k, member, "", 5), "to_member_id must not be empty");
    invalid!(transfer, transfer(k, "", member, 5), "from_member_id must not be empty");
    invalid!(transfer, transfer(k, member, "bob", 0), "amount_points must be at least 1 point");
    invalid!(
        exchange,
        exchange(k, member, "SKYMILES", "SKYMILES", 5),
        "to_currency must differ from from_currency"
    );
    invalid!(
        exchange,
        exchange(k, member, "sky", "HOTELPTS", 5),
        "from_currency may contain only upper-case"
    );
    invalid!(exchange, exchange(k, member, "SKYMILES", "H", 5), "to_currency must be 2 to 16 characters");
    invalid!(
        exchange,
        exchange(k, member, "SKYMILES", "HOTELPTS", 0),
        "amount_points must be at least 1 point"
    );
    invalid!(
        get_balance,
        GetBalanceRequest { member_id: "".into(), consistency: 0 },
        "member_id must not be empty"
    );
    invalid!(get_balance, GetBalanceRequest { member_id: member.into(), consistency: 7 }, "consistency is 7");
    invalid!(
        list_statement,
        ListStatementRequest { member_id: member.into(), order: 0, page_size: 1001, page_token: "".into() },
        "page_size is 1001; the limit is 1000"
    );
    invalid!(
        list_statement,
        ListStatementRequest { member_id: member.into(), order: 0, page_size: 10, page_token: "abc".into() },
        "page_token is not a token from a previous reply"
    );
    invalid!(
        list_statement,
        ListStatementRequest { member_id: member.into(), order: 9, page_size: 10, page_token: "".into() },
        "order is 9"
    );
    invalid!(
        get_operation,
        GetOperationRequest { idempotency_key: "".into(), member_id: member.into() },
        "idempotency_key must not be empty"
    );
    invalid!(
        get_operation,
        GetOperationRequest { idempotency_key: "k".into(), member_id: "".into() },
        "member_id must not be empty"
    );
    invalid!(
        submit_batch,
        SubmitBatchRequest { operations: vec![] },
        "operations must contain at least one operation"
    );
    invalid!(
        submit_batch,
        SubmitBatchRequest {
            operations: vec![
                batch_op(batch_operation::Operation::Earn(earn("dup", member, 1))),
                batch_op(batch_operation::Operation::Redeem(RedeemRequest {
                    idempotency_key: "dup".into(),
                    member_id: member.into(),
                    amount_points: 1
                })),
            ]
        },
        "\"dup\" is used more than once"
    );
    let oversize = SubmitBatchRequest {
        operations: (0..=SUBMIT_BATCH_OPERATIONS_MAX)
            .map(|n| batch_op(batch_operation::Operation::Earn(earn(&format!("k{n}"), member, 1))))
            .collect(),
    };
    assert_status(
        client.submit_batch(authed(SKY_KEY, oversize)).await,
        Code::ResourceExhausted,
        "batch of 10001 operations exceeds the limit of 10000; split it",
    );
    // A batch of only invalid operations: each gets its own INVALID_ARGUMENT result.
    let reply = client
        .submit_batch(authed(
            SKY_KEY,
            SubmitBatchRequest {
                operations: vec![
                    batch_op(batch_operation::Operation::Earn(earn("b1", member, 0))),
                    BatchOperation { operation: None },
                    batch_op(batch_operation::Operation::Transfer(transfer("b2", member, member, 1))),
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let errors: Vec<_> = reply
        .results
        .iter()
        .map(|result| match &result.result {
            Some(batch_result::Result::Error(error)) => (error.code, error.message.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(errors[0], (3, "amount_points must be at least 1 point".to_string()));
    assert_eq!(errors[1].0, 3);
    assert!(errors[1].1.starts_with("operation must be set"), "{}", errors[1].1);
    assert_eq!(errors[2], (3, "to_member_id must differ from from_member_id".to_string()));
}

#[tokio::test]
async fn invalid_requests_are_rejected_before_anything_is_submitted() {
    let gateway = TestGateway::start(4).await;
    send_invalid_requests(&gateway, "alice").await;
    assert_eq!(gateway.backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(gateway.backend.applied(), 0);
}

#[tokio::test]
async fn invalid_requests_change_nothing() {
    let gateway = TestGateway::start(4).await;
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("setup", "alice", 100))).await.unwrap();
    let statement = |gateway: &TestGateway| {
        let mut client = gateway.ledger();
        async move {
            client
                .list_statement(authed(
                    SKY_KEY,
                    ListStatementRequest { member_id: "alice".into(), ..Default::default() },
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let balance_before = balance(&gateway, SKY_KEY, "alice").await;
    let statement_before = statement(&gateway).await;
    let applied_before = gateway.backend.applied();
    send_invalid_requests(&gateway, "alice").await;
    assert_eq!(balance(&gateway, SKY_KEY, "alice").await, balance_before);
    assert_eq!(statement(&gateway).await, statement_before);
    assert_eq!(gateway.backend.applied(), applied_before);
}

// ---- exchange admission ----------------------------------------------------------------

fn terms(numerator: u64, denominator: u64) -> AgreementTerms {
    AgreementTerms {
        rate_numerator: numerator,
        rate_denominator: denominator,
        minimum_points: 0,
        maximum_points: 0,
        block_size_points: 0,
        fee_points: 0,
    }
}

#[tokio::test]
async fn exchange_outside_the_callers_currency_is_permission_denied() {
    let gateway = TestGateway::start(4).await;
    gateway.backend.insert_partner("cafe", "BEANS", "tly_cafe");
    gateway.backend.insert_agreement("HOTELPTS", "BEANS", terms(1, 1));
    let result =
        gateway.ledger().exchange(authed(SKY_KEY, exchange("x1", "alice", "HOTELPTS", "BEANS", 10))).await;
    assert_status(
        result,
        Code::PermissionDenied,
        "partner sky issues SKYMILES; it may only exchange points into or out of SKYMILES",
    );
    assert_eq!(gateway.backend.applied(), 0);
}

#[tokio::test]
async fn exchange_without_an_agreement_is_a_failed_precondition() {
    let gateway = TestGateway::start(4).await;
    let mut client = gateway.ledger();
    let result = client.exchange(authed(SKY_KEY, exchange("x1", "alice", "SKYMILES", "HOTELPTS", 10))).await;
    assert_status(
        result,
        Code::FailedPrecondition,
        "no exchange agreement from SKYMILES to HOTELPTS; an operator sets one with `tally agreement set`",
    );
    // The reverse direction's agreement does not allow this one.
    gateway.backend.insert_agreement("HOTELPTS", "SKYMILES", terms(1, 2));
    let result = client.exchange(authed(SKY_KEY, exchange("x1", "alice", "SKYMILES", "HOTELPTS", 10))).await;
    assert_status(result, Code::FailedPrecondition, "no exchange agreement from SKYMILES to HOTELPTS");
    let result = client.exchange(authed(SKY_KEY, exchange("x1", "alice", "SKYMILES", "NOBODY", 10))).await;
    assert_status(result, Code::FailedPrecondition, "no partner issues currency NOBODY");
    assert_eq!(gateway.backend.applied(), 0);
}

#[tokio::test]
async fn exchange_applies_the_agreement() {
    let gateway = TestGateway::start(4).await;
    gateway.backend.insert_agreement("SKYMILES", "HOTELPTS", terms(1, 2));
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", "alice", 100))).await.unwrap();
    let reply = client
        .exchange(authed(SKY_KEY, exchange("x1", "alice", "SKYMILES", "HOTELPTS", 40)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.operation, "exchange");
    assert_eq!((reply.debited_points, reply.credited_points), (40, 20));
    assert_eq!(reply.balances[0].currency, "SKYMILES");
    assert_eq!(reply.balances[0].balance_points, 60);
    assert_eq!(reply.balances[1].currency, "HOTELPTS");
    assert_eq!(reply.balances[1].balance_points, 20);
    // The target partner may also ask for it (into its own currency), with its own keys.
    let reply = client
        .exchange(authed(HOTEL_KEY, exchange("x1", "alice", "SKYMILES", "HOTELPTS", 10)))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.replay);
    assert_eq!(balance(&gateway, HOTEL_KEY, "alice").await, Some(25));
    // A retry after the rate changed is still a replay of the first request.
    gateway.backend.insert_agreement("SKYMILES", "HOTELPTS", terms(1, 1));
    let reply = client
        .exchange(authed(SKY_KEY, exchange("x1", "alice", "SKYMILES", "HOTELPTS", 40)))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.replay);
    assert_eq!(reply.credited_points, 20);
}

/// Found by the container chaos run (cluster/docker/chaos.sh, seed 7): a retried request whose
/// first attempt was applied must never be answered as a refusal. When the terms changed and
/// the stored first attempt cannot be looked up in time, the answer is UNAVAILABLE (retry with
/// the same key), and the retry then replays.
#[tokio::test]
async fn a_retry_that_cannot_be_reconciled_yet_is_unavailable_not_refused() {
    let gateway = TestGateway::start(4).await;
    gateway.backend.insert_agreement("SKYMILES", "HOTELPTS", terms(1, 2));
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", "alice", 100))).await.unwrap();
    let request = exchange("x1", "alice", "SKYMILES", "HOTELPTS", 40);
    let first = client.exchange(authed(SKY_KEY, request.clone())).await.unwrap().into_inner();
    gateway.backend.insert_agreement("SKYMILES", "HOTELPTS", terms(1, 1));
    gateway.backend.set_lookups_failing(true);
    let mut retry = authed(SKY_KEY, request.clone());
    retry.set_timeout(Duration::from_millis(300));
    let status = client.exchange(retry).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{}", status.message());
    gateway.backend.set_lookups_failing(false);
    let again = client.exchange(authed(SKY_KEY, request)).await.unwrap().into_inner();
    assert!(again.replay);
    assert_eq!((again.log_index, again.credited_points), (first.log_index, 20));
    assert_eq!(balance(&gateway, SKY_KEY, "alice").await, Some(60));
}

// ---- transfers -------------------------------------------------------------------------

#[tokio::test]
async fn transfer_between_shards() {
    let gateway = TestGateway::start(4).await;
    let (alice, bob) = gateway.member_pair("member", false);
    assert_ne!(gateway.shard_of(&alice), gateway.shard_of(&bob));
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    let reply =
        client.transfer(authed(SKY_KEY, transfer("t1", &alice, &bob, 30))).await.unwrap().into_inner();
    assert_eq!(reply.operation, "transfer");
    assert_eq!(reply.transfer_id, "sky:t1");
    assert!(!reply.replay);
    assert_eq!(points(&reply), vec![(alice.clone(), 70), (bob.clone(), 30)]);
    // A retry converges on the same answer, applied once.
    let again =
        client.transfer(authed(SKY_KEY, transfer("t1", &alice, &bob, 30))).await.unwrap().into_inner();
    assert!(again.replay);
    assert_eq!(points(&again), points(&reply));
    assert_eq!(balance(&gateway, SKY_KEY, &alice).await, Some(70));
    assert_eq!(balance(&gateway, SKY_KEY, &bob).await, Some(30));
    let open = gateway.backend.with_ledger(gateway.shard_of(&alice), |ledger| ledger.open_transfers());
    assert!(open.is_empty(), "{open:?}");
    // The same key for another request is refused.
    let result = client.transfer(authed(SKY_KEY, transfer("t1", &alice, &bob, 31))).await;
    assert_status(result, Code::AlreadyExists, "t1");
    // Insufficient points: step 1 fails and nothing moves.
    let result = client.transfer(authed(SKY_KEY, transfer("t2", &alice, &bob, 1_000))).await;
    assert_status(result, Code::FailedPrecondition, "insufficient points");
    assert_eq!(balance(&gateway, SKY_KEY, &bob).await, Some(30));
}

#[tokio::test]
async fn transfer_on_one_shard() {
    let gateway = TestGateway::start(4).await;
    let (alice, carol) = gateway.member_pair("member", true);
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    let reply =
        client.transfer(authed(SKY_KEY, transfer("t1", &alice, &carol, 45))).await.unwrap().into_inner();
    assert_eq!(reply.operation, "transfer");
    assert_eq!(reply.transfer_id, "");
    assert_eq!(points(&reply), vec![(alice.clone(), 55), (carol.clone(), 45)]);
}

#[tokio::test]
async fn unfinished_cross_shard_transfer_is_finished_by_a_retry() {
    let config = GatewayConfig { request_deadline_ms: 300, ..GatewayConfig::default() };
    let gateway = TestGateway::start_with(4, config).await;
    let (alice, bob) = gateway.member_pair("member", false);
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", &alice, 100))).await.unwrap();
    gateway.backend.set_down(gateway.shard_of(&bob), true);
    let result = client.transfer(authed(SKY_KEY, transfer("t1", &alice, &bob, 30))).await;
    assert_status(result, Code::Unavailable, "retry with the same idempotency key to finish it");
    assert_eq!(balance(&gateway, SKY_KEY, &alice).await, Some(70));
    gateway.backend.set_down(gateway.shard_of(&bob), false);
    let reply =
        client.transfer(authed(SKY_KEY, transfer("t1", &alice, &bob, 30))).await.unwrap().into_inner();
    assert!(reply.replay);
    assert_eq!(points(&reply), vec![(alice.clone(), 70), (bob.clone(), 30)]);
    let again =
        client.transfer(authed(SKY_KEY, transfer("t1", &alice, &bob, 30))).await.unwrap().into_inner();
    assert_eq!(points(&again), points(&reply));
    assert_eq!(balance(&gateway, SKY_KEY, &bob).await, Some(30));
}

// ---- batches ---------------------------------------------------------------------------

#[tokio::test]
async fn submit_batch_gives_each_operation_its_own_result() {
    let gateway = TestGateway::start(4).await;
    let (alice, bob) = gateway.member_pair("member", false);
    let (_, carol) = gateway.member_pair("member", true);
    let mut client = gateway.ledger();
    use batch_operation::Operation as O;
    let operations = vec![
        batch_op(O::Earn(earn("b1", &alice, 100))),
        batch_op(O::Earn(earn("b2", &bob, 0))),
        batch_op(O::Redeem(RedeemRequest {
            idempotency_key: "b3".into(),
            member_id: bob.clone(),
            amount_points: 5,
        })),
        batch_op(O::Enrol(EnrolRequest { idempotency_key: "b4".into(), member_id: carol.clone() })),
        batch_op(O::Transfer(transfer("b5", &alice, &bob, 10))),
        batch_op(O::Transfer(transfer("b6", &alice, &carol, 20))),
        batch_op(O::Exchange(exchange("b7", &alice, "SKYMILES", "HOTELPTS", 5))),
    ];
    let reply =
        client.submit_batch(authed(SKY_KEY, SubmitBatchRequest { operations })).await.unwrap().into_inner();
    assert_eq!(reply.results.len(), 7);
    let result = |index: usize| reply.results[index].result.clone().unwrap();
    let ok = |index: usize| match result(index) {
        batch_result::Result::Ok(reply) => reply,
        other => panic!("operation {index}: {other:?}"),
    };
    let error_code = |index: usize| match result(index) {
        batch_result::Result::Error(error) => error.code,
        other => panic!("operation {index}: {other:?}"),
    };
    assert_eq!(ok(0).operation, "earn");
    assert_eq!(points(&ok(0)), vec![(alice.clone(), 100)]);
    assert_eq!(error_code(1), Code::InvalidArgument as i32);
    assert!(matches!(error_code(2), 5 | 9), "redeem from a member without points");
    assert_eq!(ok(3).operation, "enrol");
    let cross = ok(4);
    assert_eq!(cross.transfer_id, "sky:b5");
    assert_eq!(points(&cross), vec![(alice.clone(), 90), (bob.clone(), 10)]);
    assert_eq!(points(&ok(5)), vec![(alice.clone(), 70), (carol.clone(), 20)]);
    assert_eq!(error_code(6), Code::FailedPrecondition as i32);

    // The same batch again: every applied operation is a replay.
    let operations = vec![
        batch_op(O::Earn(earn("b1", &alice, 100))),
        batch_op(O::Transfer(transfer("b5", &alice, &bob, 10))),
    ];
    let reply =
        client.submit_batch(authed(SKY_KEY, SubmitBatchRequest { operations })).await.unwrap().into_inner();
    for result in &reply.results {
        match &result.result {
            Some(batch_result::Result::Ok(reply)) => assert!(reply.replay),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(balance(&gateway, SKY_KEY, &alice).await, Some(70));
}

#[tokio::test]
async fn the_largest_batch_fits_the_message_limit() {
    let long = |c: char| c.to_string().repeat(128);
    let operation = batch_op(batch_operation::Operation::ReverseEarn(ReverseEarnRequest {
        idempotency_key: long('k'),
        earn_idempotency_key: long('e'),
        amount_points: AMOUNT_POINTS_MAX,
        member_id: long('m'),
    }));
    let batch = SubmitBatchRequest { operations: vec![operation; SUBMIT_BATCH_OPERATIONS_MAX] };
    let size = batch.encoded_len();
    assert!(size < tally_gateway::MAX_DECODING_MESSAGE_BYTES, "{size}");
    // About 4.1 MB: the limit leaves room for framing but is not far above the need.
    assert!(size * 3 > tally_gateway::MAX_DECODING_MESSAGE_BYTES, "{size}");
}

#[tokio::test]
async fn a_full_batch_goes_through() {
    let gateway = TestGateway::start(4).await;
    let operations = (0..SUBMIT_BATCH_OPERATIONS_MAX)
        .map(|n| {
            batch_op(batch_operation::Operation::Earn(earn(&format!("k{n}"), &format!("m{}", n % 500), 1)))
        })
        .collect();
    let reply = gateway
        .ledger()
        .submit_batch(authed(SKY_KEY, SubmitBatchRequest { operations }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.results.len(), SUBMIT_BATCH_OPERATIONS_MAX);
    assert!(reply.results.iter().all(|r| matches!(r.result, Some(batch_result::Result::Ok(_)))));
    assert_eq!(balance(&gateway, SKY_KEY, "m7").await, Some(20));
    // One round of key claims and one of operations, each one submit per shard.
    assert_eq!(gateway.backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst), 8);
}

// ---- exactly once ----------------------------------------------------------------------

#[tokio::test]
async fn a_retry_is_a_replay_and_a_reused_key_is_refused() {
    let gateway = TestGateway::start(4).await;
    let mut client = gateway.ledger();
    let first = client.earn(authed(SKY_KEY, earn("k1", "alice", 100))).await.unwrap().into_inner();
    assert!(!first.replay);
    let second = client.earn(authed(SKY_KEY, earn("k1", "alice", 100))).await.unwrap().into_inner();
    assert!(second.replay);
    assert_eq!(second.log_index, first.log_index);
    assert_eq!(points(&second), points(&first));
    assert_eq!(balance(&gateway, SKY_KEY, "alice").await, Some(100));
    let result = client.earn(authed(SKY_KEY, earn("k1", "alice", 50))).await;
    assert_status(result, Code::AlreadyExists, "k1");
    // Keys are scoped by partner: the hotel may use k1 for its own earn.
    let hotel = client.earn(authed(HOTEL_KEY, earn("k1", "alice", 50))).await.unwrap().into_inner();
    assert!(!hotel.replay);
}

/// Keys whose home shard is `shard_of(first)`, `shard_of(second)` and a third shard.
fn keys_by_home(gateway: &TestGateway, first: &str, second: &str) -> [String; 3] {
    let home = |key: &str| {
        home_shard_of_key(&PartnerId::parse("sky").unwrap(), &IdempotencyKey::parse(key).unwrap(), 4)
    };
    let find = |wanted: &dyn Fn(u32) -> bool| {
        (0..1_000).map(|n| format!("reuse-{n}")).find(|key| wanted(home(key))).expect("a key with that home")
    };
    let (first_shard, second_shard) = (gateway.shard_of(first), gateway.shard_of(second));
    [
        find(&|shard| shard == first_shard),
        find(&|shard| shard == second_shard),
        find(&|shard| shard != first_shard && shard != second_shard),
    ]
}

/// Found by the hostile-input catalogue: keys were deduplicated per member shard, so one key
/// reused for members on two shards was applied twice. The scope is (partner, key) whichever
/// shard the key's home is.
#[tokio::test]
async fn a_key_reused_for_a_member_on_another_shard_is_refused() {
    let gateway = TestGateway::start(4).await;
    let (alice, bob) = gateway.member_pair("member", false);
    let mut client = gateway.ledger();
    for key in keys_by_home(&gateway, &alice, &bob) {
        let first = client.earn(authed(SKY_KEY, earn(&key, &alice, 100))).await.unwrap().into_inner();
        let before = gateway.backend.state_without_clocks();
        let result = client.earn(authed(SKY_KEY, earn(&key, &bob, 100))).await;
        let status = assert_status(result, Code::AlreadyExists, &key);
        assert!(status.message().contains("member_id"), "{status:?}");
        let result = client
            .redeem(authed(
                SKY_KEY,
                RedeemRequest { idempotency_key: key.clone(), member_id: bob.clone(), amount_points: 1 },
            ))
            .await;
        assert_status(result, Code::AlreadyExists, &key);
        assert_eq!(gateway.backend.state_without_clocks(), before, "a refused reuse changes nothing");
        let retry = client.earn(authed(SKY_KEY, earn(&key, &alice, 100))).await.unwrap().into_inner();
        assert!(retry.replay);
        assert_eq!(retry.log_index, first.log_index);
    }
    assert_eq!(balance(&gateway, SKY_KEY, &alice).await, Some(300));
    assert_eq!(balance(&gateway, SKY_KEY, &bob).await, None);
    // Cross-shard transfers take their key the same way (this one was an earn's).
    let result = client
        .transfer(authed(SKY_KEY, transfer(&keys_by_home(&gateway, &alice, &bob)[2], &bob, &alice, 1)))
        .await;
    assert_status(result, Code::AlreadyExists, "operation type");
    // The key's home shard answers a lookup under the wrong member with where to look.
    let [_, at_bobs_shard, _] = keys_by_home(&gateway, &alice, &bob);
    let result = client
        .get_operation(authed(
            SKY_KEY,
            GetOperationRequest { idempotency_key: at_bobs_shard.clone(), member_id: bob.clone() },
        ))
        .await;
    assert_status(result, Code::NotFound, &format!("ask with member_id {alice}"));
}

/// The first attempt claimed its key and stopped before its member's shard applied it: the
/// key stays taken for that request, and the retry applies it.
#[tokio::test]
async fn a_claim_whose_request_was_not_applied_keeps_the_key_for_its_retry() {
    let config = GatewayConfig { request_deadline_ms: 200, ..GatewayConfig::default() };
    let gateway = TestGateway::start_with(4, config).await;
    let (alice, bob) = gateway.member_pair("member", false);
    let [_, _, elsewhere] = keys_by_home(&gateway, &alice, &bob);
    let mut client = gateway.ledger();
    gateway.backend.set_down(gateway.shard_of(&alice), true);
    let result = client.earn(authed(SKY_KEY, earn(&elsewhere, &alice, 100))).await;
    assert_status(result, Code::Unavailable, "retry with the same idempotency key");
    gateway.backend.set_down(gateway.shard_of(&alice), false);
    let result = client.earn(authed(SKY_KEY, earn(&elsewhere, &bob, 100))).await;
    assert_status(result, Code::AlreadyExists, "member_id");
    let reply = client.earn(authed(SKY_KEY, earn(&elsewhere, &alice, 100))).await.unwrap().into_inner();
    assert_eq!(points(&reply), vec![(alice.clone(), 100)]);
    assert_eq!(balance(&gateway, SKY_KEY, &bob).await, None);
}

#[tokio::test]
async fn unavailable_shards_are_retried_with_the_same_commands() {
    let gateway = TestGateway::start(4).await;
    gateway.backend.fail_next_submits(3);
    let reply = gateway.ledger().earn(authed(SKY_KEY, earn("k1", "alice", 100))).await.unwrap().into_inner();
    assert!(!reply.replay);
    assert_eq!(gateway.backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(gateway.backend.applied(), 1);
}

#[tokio::test]
async fn an_unreachable_shard_is_unavailable_with_advice() {
    let config = GatewayConfig { request_deadline_ms: 200, ..GatewayConfig::default() };
    let gateway = TestGateway::start_with(4, config).await;
    gateway.backend.set_down(gateway.shard_of("alice"), true);
    let result = gateway.ledger().earn(authed(SKY_KEY, earn("k1", "alice", 100))).await;
    assert_status(result, Code::Unavailable, "retry with the same idempotency key");
    assert_eq!(gateway.backend.applied(), 0);
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_retries() {
    let gateway = TestGateway::start(4).await;
    gateway.backend.set_down(gateway.shard_of("alice"), true);
    let mut request = authed(SKY_KEY, earn("k1", "alice", 100));
    request.set_timeout(Duration::from_millis(150));
    let started = std::time::Instant::now();
    let status = gateway.ledger().earn(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert_eq!(gateway.backend.applied(), 0);
}

#[tokio::test]
async fn a_request_past_its_deadline_changes_nothing() {
    let config = GatewayConfig { request_deadline_ms: 0, ..GatewayConfig::default() };
    let gateway = TestGateway::start_with(4, config).await;
    let result = gateway.ledger().earn(authed(SKY_KEY, earn("k1", "alice", 100))).await;
    assert_status(result, Code::DeadlineExceeded, "nothing was changed");
    assert_eq!(gateway.backend.submit_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

// ---- holds, reversals, reads -----------------------------------------------------------

#[tokio::test]
async fn holds_and_reversals() {
    let gateway = TestGateway::start(4).await;
    let mut client = gateway.ledger();
    client.earn(authed(SKY_KEY, earn("e1", "alice", 100))).await.unwrap();
    let hold = AuthorizeHoldRequest {
        idempotency_key: "h1".into(),
        member_id: "alice".into(),
        amount_points: 40,
        expires_in_ms: 60_000,
    };
    let reply = client.authorize_hold(authed(SKY_KEY, hold.clone())).await.unwrap().into_inner();
    assert_eq!(reply.operation, "authorize_hold");
    let held = reply.hold.unwrap();
    assert_eq!((held.authorized_points, held.status), (40, HoldStatus::Open as i32));
    assert_eq!(reply.balances[0].available_points, 60);
    // A client retry later is still a replay: the command carries the duration, so it is the
    // same command (before, the gateway stamped its clock into it, and a retry whose
    // reconciliation failed was answered ALREADY_EXISTS although the hold was applied: found
    // by the chaos run, seed 7).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = client.authorize_hold(authed(SKY_KEY, hold)).await.unwrap().into_inner();
    assert!(again.replay);
    assert_eq!(again.hold.unwrap().expires_at_ms, held.expires_at_ms);
    let capture = CaptureHoldRequest {
        idempotency_key: "c1".into(),
        hold_idempotency_key: "h1".into(),
        member_id: "alice".into(),
        amount_points: 25,
    };
    let reply = client.capture_hold(authed(SKY_KEY, capture)).await.unwrap().into_inner();
    let captured = reply.hold.unwrap();
    assert_eq!((captured.captured_points, captured.status), (25, HoldStatus::Captured as i32));
    assert_eq!(reply.balances[0].balance_points, 75);
    let void = VoidHoldRequest {
        idempotency_key: "v1".into(),
        hold_idempotency_key: "h1".into(),
        member_id: "alice".into(),
    };
    assert_status(client.void_hold(authed(SKY_KEY, void)).await, Code::FailedPrecondition, "h1");
    let reverse = ReverseEarnRequest {
        idempotency_key: "r1".into(),
        earn_idempotency_key: "e1".into(),
        amount_points: 10,
        member_id: "alice".into(),
    };
    let reply = client.reverse_earn(authed(SKY_KEY, reverse)).await.unwrap().into_inner();
    assert_eq!((reply.reversed_points, reply.earn_remaining_points), (10, 90));
    let reverse = ReverseEarnRequest {
        idempotency_key: "r2".into(),
        earn_idempotency_key: "nope".into(),
        amount_points: 0,
        member_id: "alice".into(),
    };
    assert_status(client.reverse_earn(authed(SKY_KEY, reverse)).await, Code::NotFound, "nope");
}

#[tokio::test]
async fn balances_statements_and_operations() {
    let gateway = TestGateway::start(4).await;
    let mut client = gateway.ledger();
    let result = client
        .get_balance(authed(SKY_KEY, GetBalanceRequest { member_id: "zoe".into(), consistency: 0 }))
        .await;
    assert_status(result, Code::NotFound, "member zoe has no SKYMILES account");
    for n in 0..5 {
        client.earn(authed(SKY_KEY, earn(&format!("e{n}"), "alice", 10 + n))).await.unwrap();
    }
    let reply = client
        .get_balance(authed(SKY_KEY, GetBalanceRequest { member_id: "alice".into(), consistency: 2 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.balance.unwrap().balance_points, 60);
    assert!(!reply.linearizable);

    for (order, expected) in
        [(0, vec![4, 3, 2, 1, 0]), (StatementOrder::OldestFirst as i32, vec![0, 1, 2, 3, 4])]
    {
        let mut sequences = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_statement(authed(
                    SKY_KEY,
                    ListStatementRequest {
                        member_id: "alice".into(),
                        order,
                        page_size: 2,
                        page_token: token.clone(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.total_lines, 5);
            assert!(page.lines.len() <= 2);
            sequences.extend(page.lines.iter().map(|line| line.sequence));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(sequences, expected);
    }
    let page = client
        .list_statement(authed(
            SKY_KEY,
            ListStatementRequest { member_id: "alice".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.lines[0].operation, "earn");
    assert_eq!(page.lines[0].idempotency_key, "e4");
    assert_eq!(page.lines[0].balance_after_points, 60);
    assert!(page.next_page_token.is_empty());

    let found = client
        .get_operation(authed(
            SKY_KEY,
            GetOperationRequest { idempotency_key: "e2".into(), member_id: "alice".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.operation, "earn");
    assert_eq!(found.result.unwrap().balances[0].balance_points, 10 + 11 + 12);
    let failed =
        RedeemRequest { idempotency_key: "r1".into(), member_id: "alice".into(), amount_points: 1_000 };
    assert_status(
        client.redeem(authed(SKY_KEY, failed)).await,
        Code::FailedPrecondition,
        "insufficient points",
    );
    let found = client
        .get_operation(authed(
            SKY_KEY,
            GetOperationRequest { idempotency_key: "r1".into(), member_id: "alice".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.operation, "redeem");
    assert_eq!(found.error.unwrap().code, Code::FailedPrecondition as i32);
    let result = client
        .get_operation(authed(
            HOTEL_KEY,
            GetOperationRequest { idempotency_key: "e2".into(), member_id: "alice".into() },
        ))
        .await;
    assert_status(result, Code::NotFound, "no operation with idempotency key e2");
}
