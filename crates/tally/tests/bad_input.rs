//! Every bad input named in the design brief's Errors section returns its status code and a
//! message that names the problem, and changes nothing (balances and statements compared
//! before and after).

mod common;

use common::{authorized, balance, statement, TestCluster};
use tally_proto::v1::batch_operation::Operation as BatchOp;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    AgreementTerms, AuthorizeHoldRequest, BatchOperation, CaptureHoldRequest, CreatePartnerRequest,
    EarnRequest, ExchangeRequest, GetOperationRequest, RedeemRequest, ReverseEarnRequest,
    SetAgreementRequest, SubmitBatchRequest, TransferRequest, VoidHoldRequest,
};
use tonic::transport::Channel;
use tonic::Code;

fn earn(key: &str, member: &str, points: u64) -> EarnRequest {
    EarnRequest { idempotency_key: key.into(), member_id: member.into(), amount_points: points }
}

fn redeem(key: &str, member: &str, points: u64) -> RedeemRequest {
    RedeemRequest { idempotency_key: key.into(), member_id: member.into(), amount_points: points }
}

struct Fixture {
    cluster: TestCluster,
    sky: String,
    hotel: String,
    ledger: LedgerClient<Channel>,
}

async fn fixture() -> Fixture {
    let cluster = TestCluster::start().await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let hotel = cluster.create_partner("grandhotel", "HOTELPTS").await;
    let mut ledger = cluster.ledger().await;
    ledger.earn(authorized(earn("seed", "alice", 1_000), &sky)).await.unwrap();
    ledger.earn(authorized(earn("seed", "alice", 1_000), &hotel)).await.unwrap();
    let hold = AuthorizeHoldRequest {
        idempotency_key: "open-hold".into(),
        member_id: "alice".into(),
        amount_points: 100,
        expires_in_ms: 3_600_000,
    };
    ledger.authorize_hold(authorized(hold, &sky)).await.unwrap();
    Fixture { cluster, sky, hotel, ledger }
}

type Snapshot = Vec<(Option<tally_proto::v1::Balance>, Vec<tally_proto::v1::StatementLine>)>;

async fn snapshot(fixture: &mut Fixture) -> Snapshot {
    let mut rows = Vec::new();
    for key in [fixture.sky.clone(), fixture.hotel.clone()] {
        for member in ["alice", "bob"] {
            rows.push((
                balance(&mut fixture.ledger, &key, member).await,
                statement(&mut fixture.ledger, &key, member).await,
            ));
        }
    }
    rows
}

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str, case: &str) {
    let status = match result {
        Ok(reply) => panic!("{case}: expected {code:?}, got success {reply:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert!(
        status.message().to_lowercase().contains(&needle.to_lowercase()),
        "{case}: message {:?} should mention {needle:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_statuses_and_change_nothing() {
    let mut fixture = fixture().await;
    let before = snapshot(&mut fixture).await;
    let sky = fixture.sky.clone();
    let ledger = &mut fixture.ledger;

    // INVALID_ARGUMENT: malformed requests.
    expect(
        ledger.earn(authorized(earn("z", "alice", 0), &sky)).await,
        Code::InvalidArgument,
        "amount_points",
        "zero amount",
    );
    expect(
        ledger.earn(authorized(earn("big", "alice", 1_000_000_000_000_001), &sky)).await,
        Code::InvalidArgument,
        "amount_points",
        "oversized amount",
    );
    expect(
        ledger.earn(authorized(earn("", "alice", 5), &sky)).await,
        Code::InvalidArgument,
        "idempotency_key",
        "empty key",
    );
    expect(
        ledger.earn(authorized(earn(&"k".repeat(129), "alice", 5), &sky)).await,
        Code::InvalidArgument,
        "idempotency_key",
        "over-long key",
    );
    expect(
        ledger.earn(authorized(earn("ctl\u{7}", "alice", 5), &sky)).await,
        Code::InvalidArgument,
        "idempotency_key",
        "control character in key",
    );
    expect(
        ledger.earn(authorized(earn("m", "", 5), &sky)).await,
        Code::InvalidArgument,
        "member_id",
        "empty member",
    );
    expect(
        ledger.earn(authorized(earn("m2", &"m".repeat(129), 5), &sky)).await,
        Code::InvalidArgument,
        "member_id",
        "over-long member",
    );
    let self_transfer = TransferRequest {
        idempotency_key: "self".into(),
        from_member_id: "alice".into(),
        to_member_id: "alice".into(),
        amount_points: 5,
    };
    expect(
        ledger.transfer(authorized(self_transfer, &sky)).await,
        Code::InvalidArgument,
        "member",
        "self transfer",
    );
    let hold_forever = AuthorizeHoldRequest {
        idempotency_key: "forever".into(),
        member_id: "alice".into(),
        amount_points: 5,
        expires_in_ms: 0,
    };
    expect(
        ledger.authorize_hold(authorized(hold_forever, &sky)).await,
        Code::InvalidArgument,
        "expires_in_ms",
        "zero expiry",
    );

    // UNAUTHENTICATED: missing or wrong key.
    expect(
        ledger.earn(tonic::Request::new(earn("u1", "alice", 5))).await,
        Code::Unauthenticated,
        "authorization",
        "no key",
    );
    expect(
        ledger.earn(authorized(earn("u2", "alice", 5), "tly_wrong")).await,
        Code::Unauthenticated,
        "key",
        "wrong key",
    );

    // PERMISSION_DENIED: another partner's currency.
    let foreign = ExchangeRequest {
        idempotency_key: "foreign".into(),
        member_id: "alice".into(),
        from_currency: "HOTELPTS".into(),
        to_currency: "OTHERPTS".into(),
        amount_points: 10,
    };
    expect(
        ledger.exchange(authorized(foreign, &sky)).await,
        Code::PermissionDenied,
        "SKYMILES",
        "foreign currency",
    );

    // NOT_FOUND: unknown member, hold, operation.
    expect(
        ledger.redeem(authorized(redeem("r1", "bob", 5), &sky)).await,
        Code::NotFound,
        "bob",
        "unknown member",
    );
    let unknown_hold = CaptureHoldRequest {
        idempotency_key: "c1".into(),
        hold_idempotency_key: "no-such-hold".into(),
        member_id: "alice".into(),
        amount_points: 0,
    };
    expect(
        ledger.capture_hold(authorized(unknown_hold, &sky)).await,
        Code::NotFound,
        "no-such-hold",
        "unknown hold",
    );
    let unknown_void = VoidHoldRequest {
        idempotency_key: "v1".into(),
        hold_idempotency_key: "no-such-hold".into(),
        member_id: "alice".into(),
    };
    expect(
        ledger.void_hold(authorized(unknown_void, &sky)).await,
        Code::NotFound,
        "no-such-hold",
        "unknown hold void",
    );
    let unknown_earn = ReverseEarnRequest {
        idempotency_key: "rv1".into(),
        earn_idempotency_key: "no-such-earn".into(),
        amount_points: 0,
        member_id: "alice".into(),
    };
    expect(
        ledger.reverse_earn(authorized(unknown_earn, &sky)).await,
        Code::NotFound,
        "no-such-earn",
        "unknown earn",
    );
    let unknown_operation =
        GetOperationRequest { idempotency_key: "never-used".into(), member_id: "alice".into() };
    expect(
        ledger.get_operation(authorized(unknown_operation, &sky)).await,
        Code::NotFound,
        "never-used",
        "unknown op",
    );

    // FAILED_PRECONDITION: insufficient points, missing agreement, reversal beyond the earn.
    expect(
        ledger.redeem(authorized(redeem("r2", "alice", 950), &sky)).await,
        Code::FailedPrecondition,
        "insufficient",
        "redeem more than available (balance 1000, held 100)",
    );
    let no_agreement = ExchangeRequest {
        idempotency_key: "x1".into(),
        member_id: "alice".into(),
        from_currency: "SKYMILES".into(),
        to_currency: "HOTELPTS".into(),
        amount_points: 10,
    };
    expect(
        ledger.exchange(authorized(no_agreement, &sky)).await,
        Code::FailedPrecondition,
        "agreement",
        "no agreement",
    );
    let too_much_reversal = ReverseEarnRequest {
        idempotency_key: "rv2".into(),
        earn_idempotency_key: "seed".into(),
        amount_points: 1_001,
        member_id: "alice".into(),
    };
    expect(
        ledger.reverse_earn(authorized(too_much_reversal, &sky)).await,
        Code::FailedPrecondition,
        "exceeds",
        "reversal beyond the earn",
    );

    // ALREADY_EXISTS: a key reused with a different request names the field.
    expect(
        ledger.earn(authorized(earn("seed", "alice", 999), &sky)).await,
        Code::AlreadyExists,
        "amount_points",
        "key reuse with another amount",
    );

    // RESOURCE_EXHAUSTED: a batch over its limit.
    let operations = (0..10_001)
        .map(|index| BatchOperation {
            operation: Some(BatchOp::Earn(earn(&format!("b{index}"), "alice", 1))),
        })
        .collect();
    expect(
        ledger.submit_batch(authorized(SubmitBatchRequest { operations }, &sky)).await,
        Code::ResourceExhausted,
        "10000",
        "oversized batch",
    );

    let after = snapshot(&mut fixture).await;
    assert_eq!(before, after, "rejected requests changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_attempt_is_replayed_as_a_failure() {
    let mut fixture = fixture().await;
    let sky = fixture.sky.clone();
    let ledger = &mut fixture.ledger;
    expect(
        ledger.redeem(authorized(redeem("once", "alice", 5_000), &sky)).await,
        Code::FailedPrecondition,
        "insufficient",
        "first",
    );
    ledger.earn(authorized(earn("top-up", "alice", 10_000), &sky)).await.unwrap();
    // Now the member could afford it, but the key's first answer was a failure: it stays one.
    expect(
        ledger.redeem(authorized(redeem("once", "alice", 5_000), &sky)).await,
        Code::FailedPrecondition,
        "insufficient",
        "retry",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rejects_bad_partners_and_agreements() {
    let fixture = fixture().await;
    let mut admin = fixture.cluster.admin().await;
    let duplicate = CreatePartnerRequest {
        partner_id: "skyair".into(),
        display_name: String::new(),
        currency: "NEWPTS".into(),
    };
    expect(admin.create_partner(duplicate).await, Code::AlreadyExists, "skyair", "duplicate partner");
    let taken = CreatePartnerRequest {
        partner_id: "other".into(),
        display_name: String::new(),
        currency: "SKYMILES".into(),
    };
    expect(admin.create_partner(taken).await, Code::AlreadyExists, "SKYMILES", "currency taken");
    let bad_currency = CreatePartnerRequest {
        partner_id: "lower".into(),
        display_name: String::new(),
        currency: "miles".into(),
    };
    expect(
        admin.create_partner(bad_currency).await,
        Code::InvalidArgument,
        "currency",
        "lower-case currency",
    );
    let zero_rate = SetAgreementRequest {
        from_currency: "SKYMILES".into(),
        to_currency: "HOTELPTS".into(),
        terms: Some(AgreementTerms { rate_numerator: 0, rate_denominator: 1, ..Default::default() }),
    };
    expect(admin.set_agreement(zero_rate).await, Code::InvalidArgument, "rate_numerator", "zero rate");
    let unknown_currency = SetAgreementRequest {
        from_currency: "SKYMILES".into(),
        to_currency: "NOPE".into(),
        terms: Some(AgreementTerms { rate_numerator: 1, rate_denominator: 1, ..Default::default() }),
    };
    expect(admin.set_agreement(unknown_currency).await, Code::NotFound, "NOPE", "unknown currency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_over_its_rate_limit_gets_resource_exhausted_and_changes_nothing() {
    let config = tally_gateway::GatewayConfig { partner_operations_per_second_max: 5, ..Default::default() };
    let cluster = TestCluster::start_with(config).await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let mut ledger = cluster.ledger().await;
    let mut accepted = 0;
    let mut refused = 0;
    for index in 0..20 {
        match ledger.earn(authorized(earn(&format!("k{index}"), "alice", 1), &sky)).await {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("rate limit"), "{}", status.message());
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "20 writes in well under a second must exceed 5 per second");
    // Only accepted writes moved points; a refused key was never applied.
    assert_eq!(balance(&mut ledger, &sky, "alice").await.unwrap().balance_points, accepted);
    let operations = (0..6)
        .map(|index| BatchOperation {
            operation: Some(BatchOp::Earn(earn(&format!("b{index}"), "alice", 1))),
        })
        .collect();
    expect(
        ledger.submit_batch(authorized(SubmitBatchRequest { operations }, &sky)).await,
        Code::ResourceExhausted,
        "split it",
        "a batch larger than one second of the limit",
    );
}
