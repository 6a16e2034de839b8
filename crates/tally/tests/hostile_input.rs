//! Hostile input against every RPC of `tally.v1.Ledger` and `tally.v1.Admin` on an in-process
//! dev cluster: zero, maximal and overflowing amounts; empty, over-long, control-character and
//! invalid-UTF-8 keys and ids; unknown and foreign partners, members, holds, earns, agreements,
//! nodes and shards; missing, malformed, wrong and revoked API keys; reused idempotency keys;
//! batches over their limit; deadlines already past; a 100 MiB message; malformed protobuf
//! bytes sent through a pass-through codec. (bad_input.rs covers the design brief's Errors
//! section case by case; this catalogue extends it to every RPC without repeating it.)
//!
//! Method: one cluster is seeded (three partners and a fourth whose key was rotated, an
//! exchange agreement, open, voided and reversed records, and one member whose balance is
//! exactly `u64::MAX`), then each case of the table is sent once. For every case the test
//! checks the status code, that the message names the problem (a substring), and that nothing
//! changed, by comparing a full snapshot taken before and after the case: balances and
//! statements of every (partner, member) pair, per-currency totals, partners and agreements,
//! and, for refusals made before anything reached the Raft log, every group's applied index
//! and state digest too. Refusals that the design stores with the key (the shard's answer to
//! a command) are expected to advance the log, so for those the business state is compared.
//! Run with `--nocapture` to see the table.

mod common;

use std::time::Duration;

use common::raw::PlainClient;
use common::{authorized, TestCluster};
use tally_gateway::GatewayConfig;
use tally_ledger::routing::shard_of_member;
use tally_ledger::MemberId;
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::batch_operation::Operation as BatchOp;
use tally_proto::v1::batch_result::Result as BatchResult;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    AddNodeRequest, AgreementTerms, AuthorizeHoldRequest, BatchOperation, CaptureHoldRequest,
    ClusterStatusRequest, CreatePartnerRequest, EarnRequest, EnrolRequest, ExchangeRequest,
    GetBalanceRequest, GetOperationRequest, ListAgreementsRequest, ListPartnersRequest, ListStatementRequest,
    MoveLeaderRequest, MoveReplicaRequest, RedeemRequest, RemoveAgreementRequest, RemoveNodeRequest,
    ReverseEarnRequest, RotatePartnerKeyRequest, SetAgreementRequest, SubmitBatchRequest, TransferRequest,
    TriggerSnapshotRequest, VoidHoldRequest,
};
use tonic::codegen::http::Uri;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::{Code, Request, Status};

/// Largest amount of one operation (`tally_ledger::limits::AMOUNT_POINTS_MAX`).
const AMOUNT_POINTS_MAX: u64 = 1_000_000_000_000_000;
/// Earns of `AMOUNT_POINTS_MAX` that bring the whale to just below `u64::MAX`, and the last
/// earn that brings it to exactly `u64::MAX`.
const WHALE_FULL_EARNS: u64 = u64::MAX / AMOUNT_POINTS_MAX;
const WHALE_LAST_EARN_POINTS: u64 = u64::MAX % AMOUNT_POINTS_MAX;
const ONE_HUNDRED_MIB: usize = 100 * 1024 * 1024;

/// Newest statement lines compared per account, beside the total count: a refused request
/// that wrote anything would add a line at the newest end.
const STATEMENT_LINES_COMPARED: u32 = 20;

const MEMBERS: [&str; 4] = ["alice", "bob", "carol", "whale"];

/// Who is calling: the API key (or what stands in for it) in the `authorization` metadata.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Sky,
    Hotel,
    Mint,
    /// The key the `cafe` partner had before an operator rotated it.
    Revoked,
    /// No `authorization` metadata at all.
    Anonymous,
    /// This exact metadata value.
    Header(&'static str),
    /// This metadata value as raw bytes (not UTF-8).
    HeaderBytes(&'static [u8]),
    /// Admin calls carry no key.
    Operator,
}

/// One request to one RPC.
enum Call {
    Enrol(EnrolRequest),
    Earn(EarnRequest),
    Redeem(RedeemRequest),
    ReverseEarn(ReverseEarnRequest),
    AuthorizeHold(AuthorizeHoldRequest),
    CaptureHold(CaptureHoldRequest),
    VoidHold(VoidHoldRequest),
    Transfer(TransferRequest),
    Exchange(ExchangeRequest),
    SubmitBatch(SubmitBatchRequest),
    GetBalance(GetBalanceRequest),
    ListStatement(ListStatementRequest),
    GetOperation(GetOperationRequest),
    CreatePartner(CreatePartnerRequest),
    RotatePartnerKey(RotatePartnerKeyRequest),
    SetAgreement(SetAgreementRequest),
    RemoveAgreement(RemoveAgreementRequest),
    AddNode(AddNodeRequest),
    RemoveNode(RemoveNodeRequest),
    MoveReplica(MoveReplicaRequest),
    MoveLeader(MoveLeaderRequest),
    TriggerSnapshot(TriggerSnapshotRequest),
    ListPartners,
    ClusterStatus,
    /// These bytes as the body of the method at this path.
    Raw(&'static str, Vec<u8>),
}

impl Call {
    fn rpc(&self) -> &'static str {
        match self {
            Call::Enrol(_) => "Enrol",
            Call::Earn(_) => "Earn",
            Call::Redeem(_) => "Redeem",
            Call::ReverseEarn(_) => "ReverseEarn",
            Call::AuthorizeHold(_) => "AuthorizeHold",
            Call::CaptureHold(_) => "CaptureHold",
            Call::VoidHold(_) => "VoidHold",
            Call::Transfer(_) => "Transfer",
            Call::Exchange(_) => "Exchange",
            Call::SubmitBatch(_) => "SubmitBatch",
            Call::GetBalance(_) => "GetBalance",
            Call::ListStatement(_) => "ListStatement",
            Call::GetOperation(_) => "GetOperation",
            Call::CreatePartner(_) => "CreatePartner",
            Call::RotatePartnerKey(_) => "RotatePartnerKey",
            Call::SetAgreement(_) => "SetAgreement",
            Call::RemoveAgreement(_) => "RemoveAgreement",
            Call::AddNode(_) => "AddNode",
            Call::RemoveNode(_) => "RemoveNode",
            Call::MoveReplica(_) => "MoveReplica",
            Call::MoveLeader(_) => "MoveLeader",
            Call::TriggerSnapshot(_) => "TriggerSnapshot",
            Call::ListPartners => "ListPartners",
            Call::ClusterStatus => "ClusterStatus",
            Call::Raw(path, _) => path.rsplit('/').next().unwrap_or(path),
        }
    }
}

/// What a refused case may leave behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trace {
    /// Refused before anything was proposed: the whole snapshot, Raft state included, is equal.
    None,
    /// Refused by a group's state machine (stored with the key, or a meta change refused):
    /// the log moved on, the business state did not.
    Log,
}

struct Case {
    name: &'static str,
    caller: Caller,
    call: Call,
    /// A `grpc-timeout` to send.
    timeout: Option<&'static str>,
    code: Code,
    /// Must appear in the status message (case-insensitive).
    needle: &'static str,
    trace: Trace,
}

fn case(name: &'static str, caller: Caller, call: Call, code: Code, needle: &'static str) -> Case {
    Case { name, caller, call, timeout: None, code, needle, trace: Trace::None }
}

impl Case {
    fn logged(mut self) -> Self {
        self.trace = Trace::Log;
        self
    }

    /// A `grpc-timeout` of 1 ns, which has passed when the call reaches the server. The edge
    /// answers it before any service runs (`serve::CallerDeadline`), so it is always
    /// DEADLINE_EXCEEDED; before, tonic's own CANCELLED "Timeout expired" raced it.
    fn deadline_passed(mut self) -> Self {
        self.timeout = Some("1n");
        self
    }

    /// Whether `status` is an expected answer.
    fn accepts(&self, status: &Status) -> bool {
        let names = |needle: &str| status.message().to_lowercase().contains(&needle.to_lowercase());
        status.code() == self.code && names(self.needle)
    }
}

/// The seeded cluster and the keys of its partners.
struct World {
    cluster: TestCluster,
    /// Not a tonic `Channel`: a channel answers a past `grpc-timeout` itself (CANCELLED) and
    /// the cases check what the server answers.
    client: PlainClient,
    origin: Uri,
    sky: String,
    hotel: String,
    mint: String,
    revoked: String,
}

impl World {
    fn ledger(&self) -> LedgerClient<PlainClient> {
        LedgerClient::with_origin(self.client.clone(), self.origin.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    fn admin(&self) -> AdminClient<PlainClient> {
        AdminClient::with_origin(self.client.clone(), self.origin.clone())
    }

    fn request<T>(&self, caller: Caller, message: T, timeout: Option<&'static str>) -> Request<T> {
        let mut request = match caller {
            Caller::Sky => authorized(message, &self.sky),
            Caller::Hotel => authorized(message, &self.hotel),
            Caller::Mint => authorized(message, &self.mint),
            Caller::Revoked => authorized(message, &self.revoked),
            Caller::Anonymous | Caller::Operator => Request::new(message),
            Caller::Header(value) => {
                let mut request = Request::new(message);
                request.metadata_mut().insert("authorization", value.parse().expect("ASCII header"));
                request
            }
            Caller::HeaderBytes(bytes) => {
                let mut request = Request::new(message);
                let value = AsciiMetadataValue::try_from(bytes).expect("a header value of visible bytes");
                request.metadata_mut().insert("authorization", value);
                request
            }
        };
        if let Some(timeout) = timeout {
            let value: MetadataValue<_> = timeout.parse().expect("grpc-timeout value");
            request.metadata_mut().insert("grpc-timeout", value);
        }
        request
    }

    /// Sends the case's request. A SubmitBatch whose every operation failed is reported as
    /// the first operation's error, so batches are checked like single calls.
    async fn send(&self, case: &mut Case) -> Result<String, Status> {
        let (caller, timeout) = (case.caller, case.timeout);
        let call = std::mem::replace(&mut case.call, Call::ListPartners);
        let (mut ledger, mut admin) = (self.ledger(), self.admin());
        macro_rules! ledger {
            ($method:ident, $message:expr) => {
                ledger
                    .$method(self.request(caller, $message, timeout))
                    .await
                    .map(|r| format!("{:?}", r.into_inner()))
            };
        }
        macro_rules! admin {
            ($method:ident, $message:expr) => {
                admin
                    .$method(self.request(caller, $message, timeout))
                    .await
                    .map(|r| format!("{:?}", r.into_inner()))
            };
        }
        match call {
            Call::Enrol(message) => ledger!(enrol, message),
            Call::Earn(message) => ledger!(earn, message),
            Call::Redeem(message) => ledger!(redeem, message),
            Call::ReverseEarn(message) => ledger!(reverse_earn, message),
            Call::AuthorizeHold(message) => ledger!(authorize_hold, message),
            Call::CaptureHold(message) => ledger!(capture_hold, message),
            Call::VoidHold(message) => ledger!(void_hold, message),
            Call::Transfer(message) => ledger!(transfer, message),
            Call::Exchange(message) => ledger!(exchange, message),
            Call::GetBalance(message) => ledger!(get_balance, message),
            Call::ListStatement(message) => ledger!(list_statement, message),
            Call::GetOperation(message) => ledger!(get_operation, message),
            Call::SubmitBatch(message) => {
                let reply = ledger.submit_batch(self.request(caller, message, timeout)).await?.into_inner();
                let errors: Vec<_> = reply
                    .results
                    .iter()
                    .filter_map(|result| match &result.result {
                        Some(BatchResult::Error(error)) => Some(error),
                        _ => None,
                    })
                    .collect();
                match errors.first() {
                    Some(error) if errors.len() == reply.results.len() => {
                        Err(Status::new(Code::from_i32(error.code), error.message.clone()))
                    }
                    _ => Ok(format!("{reply:?}")),
                }
            }
            Call::CreatePartner(message) => admin!(create_partner, message),
            Call::RotatePartnerKey(message) => admin!(rotate_partner_key, message),
            Call::SetAgreement(message) => admin!(set_agreement, message),
            Call::RemoveAgreement(message) => admin!(remove_agreement, message),
            Call::AddNode(message) => admin!(add_node, message),
            Call::RemoveNode(message) => admin!(remove_node, message),
            Call::MoveReplica(message) => admin!(move_replica, message),
            Call::MoveLeader(message) => admin!(move_leader, message),
            Call::TriggerSnapshot(message) => admin!(trigger_snapshot, message),
            Call::ListPartners => admin!(list_partners, ListPartnersRequest {}),
            Call::ClusterStatus => admin!(cluster_status, ClusterStatusRequest::default()),
            Call::Raw(path, body) => {
                let request = self.request(caller, body, timeout);
                common::raw::unary_plain(&self.client, self.origin.clone(), path, request)
                    .await
                    .map(|reply| format!("{} bytes", reply.len()))
            }
        }
    }
}

/// Everything a refusal must leave unchanged.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// (partner, member) -> balance, statement line count and newest lines.
    accounts: Vec<String>,
    currency_totals: String,
    partners: String,
    agreements: String,
    /// (group, applied index, state digest); only compared for refusals that leave no trace.
    groups: Vec<(String, u64, String)>,
}

async fn snapshot(world: &World) -> Snapshot {
    let mut ledger = world.ledger();
    let mut accounts = Vec::new();
    for (partner, key) in [("sky", &world.sky), ("hotel", &world.hotel), ("mint", &world.mint)] {
        for member in MEMBERS {
            let request = GetBalanceRequest { member_id: member.into(), consistency: 1 };
            let balance = match ledger.get_balance(authorized(request, key)).await {
                Ok(reply) => format!("{:?}", reply.into_inner().balance),
                Err(status) if status.code() == Code::NotFound => "no account".to_string(),
                Err(status) => panic!("balance of {member} in {partner}: {status:?}"),
            };
            let request = ListStatementRequest {
                member_id: member.into(),
                order: 1,
                page_size: STATEMENT_LINES_COMPARED,
                page_token: String::new(),
            };
            let statement = match ledger.list_statement(authorized(request, key)).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    format!("{} lines: {:?}", reply.total_lines, reply.lines)
                }
                Err(status) if status.code() == Code::NotFound => "no statement".to_string(),
                Err(status) => panic!("statement of {member} in {partner}: {status:?}"),
            };
            accounts.push(format!("{partner}/{member}: {balance}; {statement}"));
        }
    }
    let mut admin = world.admin();
    let request = ClusterStatusRequest { include_state_digests: true };
    let status = admin.cluster_status(request).await.expect("cluster status").into_inner();
    let mut groups: Vec<_> = status
        .groups
        .iter()
        .map(|group| (group.group.clone(), group.applied_index, group.state_digest.clone()))
        .collect();
    groups.sort();
    Snapshot {
        accounts,
        currency_totals: format!("{:?}", status.currency_totals),
        partners: format!(
            "{:?}",
            admin.list_partners(ListPartnersRequest {}).await.expect("partners").into_inner()
        ),
        agreements: format!(
            "{:?}",
            admin.list_agreements(ListAgreementsRequest {}).await.expect("agreements").into_inner()
        ),
        groups,
    }
}

fn earn(key: &str, member: &str, amount_points: u64) -> EarnRequest {
    EarnRequest { idempotency_key: key.into(), member_id: member.into(), amount_points }
}

fn hold(key: &str, member: &str, amount_points: u64, expires_in_ms: u64) -> AuthorizeHoldRequest {
    AuthorizeHoldRequest {
        idempotency_key: key.into(),
        member_id: member.into(),
        amount_points,
        expires_in_ms,
    }
}

fn batch_of_earns(prefix: &str, member: &str, count: u64, amount_points: u64) -> SubmitBatchRequest {
    let operations = (0..count)
        .map(|index| BatchOperation {
            operation: Some(BatchOp::Earn(earn(&format!("{prefix}{index}"), member, amount_points))),
        })
        .collect();
    SubmitBatchRequest { operations }
}

/// Partners, an agreement, open/closed records, and a member at exactly `u64::MAX` points.
async fn seed() -> World {
    // The whale's batches of 9,223 earns take a few seconds on a busy 2-core machine: more
    // than the default 5 s request deadline, which is not what this test is about.
    let config = GatewayConfig { request_deadline_ms: 120_000, ..GatewayConfig::default() };
    let cluster = TestCluster::start_with(config).await;
    let sky = cluster.create_partner("skyair", "SKYMILES").await;
    let hotel = cluster.create_partner("grandhotel", "HOTELPTS").await;
    let mint = cluster.create_partner("mint", "MINTPTS").await;
    cluster.create_partner("cafe", "BEANS").await;
    let terms = AgreementTerms {
        rate_numerator: 1,
        rate_denominator: 2,
        minimum_points: 10,
        maximum_points: 500,
        block_size_points: 10,
        fee_points: 0,
    };
    cluster.set_agreement("SKYMILES", "HOTELPTS", terms).await;
    let channel = cluster.channel().await;
    let mut admin = AdminClient::new(channel.clone());
    // Tally has no separate revocation: rotating a key is how an operator revokes it. The key
    // kept here was current until the second rotation.
    let rotated = RotatePartnerKeyRequest { partner_id: "cafe".into() };
    let revoked = admin.rotate_partner_key(rotated.clone()).await.expect("rotate").into_inner().api_key;
    admin.rotate_partner_key(rotated).await.expect("rotate again");
    let origin = cluster.url().parse().expect("the cluster's URL");
    let world = World { cluster, client: common::raw::plain_client(), origin, sky, hotel, mint, revoked };

    let mut ledger = world.ledger();
    let sky = world.sky.clone();
    ledger.earn(authorized(earn("seed", "alice", 1_000), &sky)).await.expect("earn");
    ledger.earn(authorized(earn("seed", "alice", 1_000), &world.hotel)).await.expect("earn");
    ledger.earn(authorized(earn("reversed", "alice", 50), &sky)).await.expect("earn");
    let reversal = ReverseEarnRequest {
        idempotency_key: "reversal".into(),
        earn_idempotency_key: "reversed".into(),
        amount_points: 0,
        member_id: "alice".into(),
    };
    ledger.reverse_earn(authorized(reversal, &sky)).await.expect("reverse");
    ledger.authorize_hold(authorized(hold("open-hold", "alice", 100, 3_600_000), &sky)).await.expect("hold");
    ledger.authorize_hold(authorized(hold("void-me", "alice", 10, 3_600_000), &sky)).await.expect("hold");
    let void = VoidHoldRequest {
        idempotency_key: "voided".into(),
        hold_idempotency_key: "void-me".into(),
        member_id: "alice".into(),
    };
    ledger.void_hold(authorized(void, &sky)).await.expect("void");
    ledger
        .enrol(authorized(EnrolRequest { idempotency_key: "bob".into(), member_id: "bob".into() }, &sky))
        .await
        .expect("enrol");

    // The whale: 18,446 earns of the per-operation maximum, then the remainder: u64::MAX.
    let half = WHALE_FULL_EARNS / 2;
    for (prefix, count) in [("whale-a", half), ("whale-b", WHALE_FULL_EARNS - half)] {
        let reply = ledger
            .submit_batch(authorized(batch_of_earns(prefix, "whale", count, AMOUNT_POINTS_MAX), &world.mint))
            .await;
        let results = reply.expect("whale batch").into_inner().results;
        let failure = results.iter().find(|result| !matches!(result.result, Some(BatchResult::Ok(_))));
        assert!(failure.is_none(), "every whale earn is applied: {failure:?}");
    }
    let last =
        ledger.earn(authorized(earn("whale-last", "whale", WHALE_LAST_EARN_POINTS), &world.mint)).await;
    let balance = last.expect("last whale earn").into_inner().balances[0].balance_points;
    assert_eq!(balance, u64::MAX, "the whale holds exactly u64::MAX points");
    world
}

/// Protobuf bytes that no message accepts: a length-delimited field longer than the body.
fn truncated_field() -> Vec<u8> {
    vec![0x12, 0x7f, b'a']
}

/// Field 2 (`member_id`) of an EarnRequest holding bytes that are not UTF-8.
fn invalid_utf8_member() -> Vec<u8> {
    vec![0x0a, 0x01, b'k', 0x12, 0x04, 0xff, 0xfe, 0xc3, 0x28, 0x18, 0x05]
}

/// A varint that never ends (eleven continuation bytes).
fn endless_varint() -> Vec<u8> {
    let mut body = vec![0x18];
    body.extend([0xff; 11]);
    body
}

/// A field with wire type 7, which does not exist.
fn bad_wire_type() -> Vec<u8> {
    vec![0x0f, 0x01]
}

/// A member on the same shard as `member` (`same_shard`) or on another one (the dev cluster
/// of `common` has 4 shards). A key is deduplicated per partner across shards: reused for
/// either, it is refused.
fn member_near(member: &str, same_shard: bool) -> String {
    let shard_count = common::node_config(std::path::Path::new(".")).shard_count;
    let shard = |id: &str| shard_of_member(&MemberId::parse(id).expect("valid member"), shard_count);
    (0..)
        .map(|index| format!("neighbour-{index}"))
        .find(|candidate| (shard(candidate) == shard(member)) == same_shard)
        .expect("some member on the wanted shard")
}

fn ledger_cases() -> Vec<Case> {
    use Call::*;
    use Caller::*;
    let over_long = "k".repeat(129);
    let multibyte_over_long = "é".repeat(65);
    let neighbour = member_near("alice", true);
    let stranger = member_near("alice", false);
    vec![
        // Enrol
        case(
            "empty member",
            Sky,
            Enrol(EnrolRequest { idempotency_key: "e1".into(), member_id: String::new() }),
            Code::InvalidArgument,
            "member_id must not be empty",
        ),
        case(
            "NUL in member",
            Sky,
            Enrol(EnrolRequest { idempotency_key: "e2".into(), member_id: "al\u{0}ice".into() }),
            Code::InvalidArgument,
            "member_id contains a control character",
        ),
        case(
            "over-long key",
            Sky,
            Enrol(EnrolRequest { idempotency_key: over_long.clone(), member_id: "bob".into() }),
            Code::InvalidArgument,
            "idempotency_key is 129 bytes",
        ),
        case(
            "reserved key prefix",
            Sky,
            Enrol(EnrolRequest { idempotency_key: "xfer-in:x".into(), member_id: "bob".into() }),
            Code::InvalidArgument,
            "reserved",
        ),
        case(
            "key of an earn reused for an enrol",
            Sky,
            Enrol(EnrolRequest { idempotency_key: "seed".into(), member_id: "alice".into() }),
            Code::AlreadyExists,
            "operation type differs",
        )
        .logged(),
        // Earn
        case(
            "u64::MAX amount",
            Sky,
            Earn(earn("m1", "alice", u64::MAX)),
            Code::InvalidArgument,
            "amount_points is 18446744073709551615",
        ),
        case(
            "earn past u64::MAX",
            Mint,
            Earn(earn("whale-more", "whale", 1)),
            Code::FailedPrecondition,
            "overflow",
        )
        .logged(),
        case(
            "largest earn past u64::MAX",
            Mint,
            Earn(earn("whale-max", "whale", AMOUNT_POINTS_MAX)),
            Code::FailedPrecondition,
            "overflow",
        )
        .logged(),
        case(
            "65 two-byte chars in member",
            Sky,
            Earn(earn("m2", &multibyte_over_long, 5)),
            Code::InvalidArgument,
            "member_id is 130 bytes",
        ),
        case(
            "escape sequence in member",
            Sky,
            Earn(earn("m3", "\u{1b}[31mred", 5)),
            Code::InvalidArgument,
            "member_id contains a control character at position 0",
        ),
        case(
            "newline in key",
            Sky,
            Earn(earn("line\nbreak", "alice", 5)),
            Code::InvalidArgument,
            "idempotency_key contains a control character",
        ),
        case(
            "key reused for another member of the shard",
            Sky,
            Earn(earn("seed", &neighbour, 1_000)),
            Code::AlreadyExists,
            "member_id differs",
        )
        .logged(),
        case(
            "key reused for a member of another shard",
            Sky,
            Earn(earn("seed", &stranger, 1_000)),
            Code::AlreadyExists,
            "member_id differs",
        )
        .logged(),
        case(
            "bearer without key",
            Header("Bearer"),
            Earn(earn("a1", "alice", 5)),
            Code::Unauthenticated,
            "malformed authorization",
        ),
        case(
            "basic scheme",
            Header("Basic c2t5OnB3"),
            Earn(earn("a2", "alice", 5)),
            Code::Unauthenticated,
            "malformed authorization",
        ),
        case(
            "non-ASCII key bytes",
            HeaderBytes(b"Bearer \xff\xfe\xfd"),
            Earn(earn("a3", "alice", 5)),
            Code::Unauthenticated,
            "malformed authorization",
        ),
        case(
            "revoked (rotated) key",
            Revoked,
            Earn(earn("a4", "alice", 5)),
            Code::Unauthenticated,
            "rotated key stops working",
        ),
        case("deadline already past", Sky, Earn(earn("d1", "alice", 5)), Code::DeadlineExceeded, "deadline")
            .deadline_passed(),
        case(
            "100 MiB message",
            Sky,
            Earn(earn("huge", &"m".repeat(ONE_HUNDRED_MIB), 5)),
            Code::ResourceExhausted,
            "at most 8388608 bytes (8 MiB) in one request: split it",
        ),
        case(
            "truncated protobuf",
            Sky,
            Raw("/tally.v1.Ledger/Earn", truncated_field()),
            Code::InvalidArgument,
            "not a valid tally.v1.EarnRequest message",
        ),
        case(
            "non-UTF-8 member bytes",
            Sky,
            Raw("/tally.v1.Ledger/Earn", invalid_utf8_member()),
            Code::InvalidArgument,
            "EarnRequest.member_id: invalid string value",
        ),
        case(
            "endless varint",
            Sky,
            Raw("/tally.v1.Ledger/Redeem", endless_varint()),
            Code::InvalidArgument,
            "not a valid tally.v1.RedeemRequest message",
        ),
        case(
            "wire type 7",
            Sky,
            Raw("/tally.v1.Ledger/AuthorizeHold", bad_wire_type()),
            Code::InvalidArgument,
            "not a valid tally.v1.AuthorizeHoldRequest message",
        ),
        case("unknown method", Sky, Raw("/tally.v1.Ledger/Mint", vec![]), Code::Unimplemented, ""),
        // Redeem
        case(
            "zero redeem",
            Sky,
            Redeem(RedeemRequest {
                idempotency_key: "r1".into(),
                member_id: "alice".into(),
                amount_points: 0,
            }),
            Code::InvalidArgument,
            "amount_points must be at least 1",
        ),
        case(
            "u64::MAX redeem",
            Mint,
            Redeem(RedeemRequest {
                idempotency_key: "r2".into(),
                member_id: "whale".into(),
                amount_points: u64::MAX,
            }),
            Code::InvalidArgument,
            "amount_points is 18446744073709551615",
        ),
        case(
            "member without account in this currency",
            Hotel,
            Redeem(RedeemRequest { idempotency_key: "r3".into(), member_id: "bob".into(), amount_points: 1 }),
            Code::NotFound,
            "bob has no HOTELPTS account",
        )
        .logged(),
        case(
            "redeem of held points",
            Sky,
            Redeem(RedeemRequest {
                idempotency_key: "r4".into(),
                member_id: "alice".into(),
                amount_points: 901,
            }),
            Code::FailedPrecondition,
            "900 available",
        )
        .logged(),
        // ReverseEarn
        case(
            "another partner's earn",
            Hotel,
            ReverseEarn(ReverseEarnRequest {
                idempotency_key: "v1".into(),
                earn_idempotency_key: "reversed".into(),
                amount_points: 0,
                member_id: "alice".into(),
            }),
            Code::NotFound,
            "reversed",
        )
        .logged(),
        case(
            "earn already fully reversed",
            Sky,
            ReverseEarn(ReverseEarnRequest {
                idempotency_key: "v2".into(),
                earn_idempotency_key: "reversed".into(),
                amount_points: 0,
                member_id: "alice".into(),
            }),
            Code::FailedPrecondition,
            "earn reversed is already fully reversed",
        )
        .logged(),
        case(
            "u64::MAX reversal",
            Sky,
            ReverseEarn(ReverseEarnRequest {
                idempotency_key: "v3".into(),
                earn_idempotency_key: "seed".into(),
                amount_points: u64::MAX,
                member_id: "alice".into(),
            }),
            Code::InvalidArgument,
            "amount_points",
        ),
        case(
            "empty earn key",
            Sky,
            ReverseEarn(ReverseEarnRequest {
                idempotency_key: "v4".into(),
                earn_idempotency_key: String::new(),
                amount_points: 1,
                member_id: "alice".into(),
            }),
            Code::InvalidArgument,
            "earn_idempotency_key must not be empty",
        ),
        case(
            "over-long earn key",
            Sky,
            ReverseEarn(ReverseEarnRequest {
                idempotency_key: "v5".into(),
                earn_idempotency_key: over_long.clone(),
                amount_points: 1,
                member_id: "alice".into(),
            }),
            Code::InvalidArgument,
            "earn_idempotency_key is 129 bytes",
        ),
        // AuthorizeHold
        case(
            "zero hold",
            Sky,
            AuthorizeHold(hold("h1", "alice", 0, 60_000)),
            Code::InvalidArgument,
            "amount_points must be at least 1",
        ),
        case(
            "u64::MAX expiry",
            Sky,
            AuthorizeHold(hold("h2", "alice", 1, u64::MAX)),
            Code::InvalidArgument,
            "expires_in_ms is 18446744073709551615",
        ),
        case(
            "expiry under a second",
            Sky,
            AuthorizeHold(hold("h3", "alice", 1, 999)),
            Code::InvalidArgument,
            "expires_in_ms is 999",
        ),
        case(
            "hold over available",
            Sky,
            AuthorizeHold(hold("h4", "alice", 901, 60_000)),
            Code::FailedPrecondition,
            "insufficient points",
        )
        .logged(),
        case(
            "hold for unknown member",
            Sky,
            AuthorizeHold(hold("h5", "carol", 1, 60_000)),
            Code::NotFound,
            "carol",
        )
        .logged(),
        case(
            "hold key reused with another amount",
            Sky,
            AuthorizeHold(hold("open-hold", "alice", 99, 3_600_000)),
            Code::AlreadyExists,
            "amount_points differs",
        )
        .logged(),
        case(
            "hold of u64::MAX",
            Mint,
            AuthorizeHold(hold("h6", "whale", u64::MAX, 60_000)),
            Code::InvalidArgument,
            "amount_points",
        ),
        // CaptureHold
        case(
            "another partner's hold",
            Hotel,
            CaptureHold(CaptureHoldRequest {
                idempotency_key: "c1".into(),
                hold_idempotency_key: "open-hold".into(),
                member_id: "alice".into(),
                amount_points: 0,
            }),
            Code::NotFound,
            "open-hold",
        )
        .logged(),
        case(
            "capture of a voided hold",
            Sky,
            CaptureHold(CaptureHoldRequest {
                idempotency_key: "c2".into(),
                hold_idempotency_key: "void-me".into(),
                member_id: "alice".into(),
                amount_points: 0,
            }),
            Code::FailedPrecondition,
            "voided",
        )
        .logged(),
        case(
            "capture over the hold",
            Sky,
            CaptureHold(CaptureHoldRequest {
                idempotency_key: "c3".into(),
                hold_idempotency_key: "open-hold".into(),
                member_id: "alice".into(),
                amount_points: 101,
            }),
            Code::FailedPrecondition,
            "exceeds the hold's 100 points",
        )
        .logged(),
        case(
            "u64::MAX capture",
            Sky,
            CaptureHold(CaptureHoldRequest {
                idempotency_key: "c4".into(),
                hold_idempotency_key: "open-hold".into(),
                member_id: "alice".into(),
                amount_points: u64::MAX,
            }),
            Code::InvalidArgument,
            "amount_points",
        ),
        case(
            "empty hold key",
            Sky,
            CaptureHold(CaptureHoldRequest {
                idempotency_key: "c5".into(),
                hold_idempotency_key: String::new(),
                member_id: "alice".into(),
                amount_points: 0,
            }),
            Code::InvalidArgument,
            "hold_idempotency_key must not be empty",
        ),
        // VoidHold
        case(
            "void another partner's hold",
            Hotel,
            VoidHold(VoidHoldRequest {
                idempotency_key: "w1".into(),
                hold_idempotency_key: "open-hold".into(),
                member_id: "alice".into(),
            }),
            Code::NotFound,
            "open-hold",
        )
        .logged(),
        case(
            "void twice",
            Sky,
            VoidHold(VoidHoldRequest {
                idempotency_key: "w2".into(),
                hold_idempotency_key: "void-me".into(),
                member_id: "alice".into(),
            }),
            Code::FailedPrecondition,
            "already voided",
        )
        .logged(),
        case(
            "tab in hold key",
            Sky,
            VoidHold(VoidHoldRequest {
                idempotency_key: "w3".into(),
                hold_idempotency_key: "open\thold".into(),
                member_id: "alice".into(),
            }),
            Code::InvalidArgument,
            "hold_idempotency_key contains a control character",
        ),
        // Transfer
        case(
            "zero transfer",
            Sky,
            Transfer(TransferRequest {
                idempotency_key: "t1".into(),
                from_member_id: "alice".into(),
                to_member_id: "bob".into(),
                amount_points: 0,
            }),
            Code::InvalidArgument,
            "amount_points must be at least 1",
        ),
        case(
            "u64::MAX transfer",
            Mint,
            Transfer(TransferRequest {
                idempotency_key: "t2".into(),
                from_member_id: "whale".into(),
                to_member_id: "bob".into(),
                amount_points: u64::MAX,
            }),
            Code::InvalidArgument,
            "amount_points",
        ),
        case(
            "transfer from an empty account",
            Sky,
            Transfer(TransferRequest {
                idempotency_key: "t3".into(),
                from_member_id: "bob".into(),
                to_member_id: "alice".into(),
                amount_points: 1,
            }),
            Code::FailedPrecondition,
            "insufficient points",
        )
        .logged(),
        case(
            "transfer from unknown member",
            Sky,
            Transfer(TransferRequest {
                idempotency_key: "t4".into(),
                from_member_id: "carol".into(),
                to_member_id: "alice".into(),
                amount_points: 1,
            }),
            Code::NotFound,
            "carol",
        )
        .logged(),
        case(
            "empty recipient",
            Sky,
            Transfer(TransferRequest {
                idempotency_key: "t5".into(),
                from_member_id: "alice".into(),
                to_member_id: String::new(),
                amount_points: 1,
            }),
            Code::InvalidArgument,
            "to_member_id must not be empty",
        ),
        case(
            "over-long recipient",
            Sky,
            Transfer(TransferRequest {
                idempotency_key: "t6".into(),
                from_member_id: "alice".into(),
                to_member_id: over_long.clone(),
                amount_points: 1,
            }),
            Code::InvalidArgument,
            "to_member_id is 129 bytes",
        ),
        // Exchange
        case(
            "zero exchange",
            Sky,
            Exchange(ExchangeRequest {
                idempotency_key: "x1".into(),
                member_id: "alice".into(),
                from_currency: "SKYMILES".into(),
                to_currency: "HOTELPTS".into(),
                amount_points: 0,
            }),
            Code::InvalidArgument,
            "amount_points must be at least 1",
        ),
        case(
            "same currency twice",
            Sky,
            Exchange(ExchangeRequest {
                idempotency_key: "x2".into(),
                member_id: "alice".into(),
                from_currency: "SKYMILES".into(),
                to_currency: "SKYMILES".into(),
                amount_points: 10,
            }),
            Code::InvalidArgument,
            "to_currency must differ",
        ),
        case(
            "lower-case currency",
            Sky,
            Exchange(ExchangeRequest {
                idempotency_key: "x3".into(),
                member_id: "alice".into(),
                from_currency: "skymiles".into(),
                to_currency: "HOTELPTS".into(),
                amount_points: 10,
            }),
            Code::InvalidArgument,
            "upper-case",
        ),
        case(
            "currency nobody issues",
            Sky,
            Exchange(ExchangeRequest {
                idempotency_key: "x4".into(),
                member_id: "alice".into(),
                from_currency: "SKYMILES".into(),
                to_currency: "NOPE".into(),
                amount_points: 10,
            }),
            Code::FailedPrecondition,
            "no partner issues currency NOPE",
        ),
        case(
            "below the agreement's minimum",
            Sky,
            Exchange(ExchangeRequest {
                idempotency_key: "x5".into(),
                member_id: "alice".into(),
                from_currency: "SKYMILES".into(),
                to_currency: "HOTELPTS".into(),
                amount_points: 5,
            }),
            Code::FailedPrecondition,
            "outside the agreement",
        )
        .logged(),
        case(
            "not a multiple of the block",
            Sky,
            Exchange(ExchangeRequest {
                idempotency_key: "x6".into(),
                member_id: "alice".into(),
                from_currency: "SKYMILES".into(),
                to_currency: "HOTELPTS".into(),
                amount_points: 15,
            }),
            Code::FailedPrecondition,
            "outside the agreement",
        )
        .logged(),
        case(
            "reverse direction without agreement",
            Hotel,
            Exchange(ExchangeRequest {
                idempotency_key: "x7".into(),
                member_id: "alice".into(),
                from_currency: "HOTELPTS".into(),
                to_currency: "SKYMILES".into(),
                amount_points: 10,
            }),
            Code::FailedPrecondition,
            "no exchange agreement from HOTELPTS to SKYMILES",
        ),
        // SubmitBatch
        case(
            "empty batch",
            Sky,
            SubmitBatch(SubmitBatchRequest { operations: vec![] }),
            Code::InvalidArgument,
            "at least one operation",
        ),
        case(
            "duplicate keys in a batch",
            Sky,
            SubmitBatch(SubmitBatchRequest {
                operations: vec![
                    BatchOperation { operation: Some(BatchOp::Earn(earn("dup", "alice", 1))) },
                    BatchOperation { operation: Some(BatchOp::Earn(earn("dup", "bob", 1))) },
                ],
            }),
            Code::InvalidArgument,
            "used more than once",
        ),
        case(
            "operation not set",
            Sky,
            SubmitBatch(SubmitBatchRequest { operations: vec![BatchOperation { operation: None }] }),
            Code::InvalidArgument,
            "operation",
        ),
        case(
            "batch of 20,000",
            Sky,
            SubmitBatch(batch_of_earns("big", "alice", 20_000, 1)),
            Code::ResourceExhausted,
            "exceeds the limit of 10000",
        ),
        case(
            "batch past the whale's u64::MAX",
            Mint,
            SubmitBatch(batch_of_earns("whale-batch", "whale", 2, 1)),
            Code::FailedPrecondition,
            "overflow",
        )
        .logged(),
        case(
            "batch without a key",
            Anonymous,
            SubmitBatch(batch_of_earns("anon", "alice", 1, 1)),
            Code::Unauthenticated,
            "missing authorization",
        ),
        case(
            "batch with a past deadline",
            Sky,
            SubmitBatch(batch_of_earns("late", "alice", 1, 1)),
            Code::DeadlineExceeded,
            "deadline",
        )
        .deadline_passed(),
        // Reads
        case(
            "balance of unknown member",
            Sky,
            GetBalance(GetBalanceRequest { member_id: "carol".into(), consistency: 0 }),
            Code::NotFound,
            "carol has no SKYMILES account",
        ),
        case(
            "unknown consistency",
            Sky,
            GetBalance(GetBalanceRequest { member_id: "alice".into(), consistency: 7 }),
            Code::InvalidArgument,
            "consistency is 7",
        ),
        case(
            "wrong key of the right shape",
            Header("Bearer tly_0000000000000000000000000000000000000000000000000000000000000000"),
            GetBalance(GetBalanceRequest { member_id: "alice".into(), consistency: 0 }),
            Code::Unauthenticated,
            "not recognised",
        ),
        case(
            "read with a past deadline",
            Sky,
            GetBalance(GetBalanceRequest { member_id: "alice".into(), consistency: 0 }),
            Code::DeadlineExceeded,
            "deadline",
        )
        .deadline_passed(),
        case(
            "page over the limit",
            Sky,
            ListStatement(ListStatementRequest {
                member_id: "alice".into(),
                order: 0,
                page_size: 1001,
                page_token: String::new(),
            }),
            Code::InvalidArgument,
            "page_size is 1001",
        ),
        case(
            "forged page token",
            Sky,
            ListStatement(ListStatementRequest {
                member_id: "alice".into(),
                order: 0,
                page_size: 10,
                page_token: "abc".into(),
            }),
            Code::InvalidArgument,
            "page_token",
        ),
        case(
            "page token past u64",
            Sky,
            ListStatement(ListStatementRequest {
                member_id: "alice".into(),
                order: 0,
                page_size: 10,
                page_token: "18446744073709551616".into(),
            }),
            Code::InvalidArgument,
            "page_token",
        ),
        case(
            "unknown order",
            Sky,
            ListStatement(ListStatementRequest {
                member_id: "alice".into(),
                order: 99,
                page_size: 10,
                page_token: String::new(),
            }),
            Code::InvalidArgument,
            "order is 99",
        ),
        case(
            "empty operation key",
            Sky,
            GetOperation(GetOperationRequest { idempotency_key: String::new(), member_id: "alice".into() }),
            Code::InvalidArgument,
            "idempotency_key must not be empty",
        ),
        case(
            "another partner's operation",
            Hotel,
            GetOperation(GetOperationRequest {
                idempotency_key: "open-hold".into(),
                member_id: "alice".into(),
            }),
            Code::NotFound,
            "open-hold",
        ),
        case(
            "DEL in operation key",
            Sky,
            GetOperation(GetOperationRequest {
                idempotency_key: "k\u{7f}".into(),
                member_id: "alice".into(),
            }),
            Code::InvalidArgument,
            "control character",
        ),
    ]
}

fn admin_cases() -> Vec<Case> {
    use Call::*;
    use Caller::*;
    let partner = |partner_id: &str, display_name: &str, currency: &str| CreatePartnerRequest {
        partner_id: partner_id.into(),
        display_name: display_name.into(),
        currency: currency.into(),
    };
    let terms = |numerator: u64, denominator: u64, minimum: u64, fee: u64| AgreementTerms {
        rate_numerator: numerator,
        rate_denominator: denominator,
        minimum_points: minimum,
        fee_points: fee,
        ..Default::default()
    };
    vec![
        case(
            "upper-case partner id",
            Operator,
            CreatePartner(partner("SkyAir", "", "NEWPTS")),
            Code::InvalidArgument,
            "partner_id may contain only lower-case",
        ),
        case(
            "65-byte partner id",
            Operator,
            CreatePartner(partner(&"p".repeat(65), "", "NEWPTS")),
            Code::InvalidArgument,
            "partner_id is 65 bytes",
        ),
        case(
            "empty partner id",
            Operator,
            CreatePartner(partner("", "", "NEWPTS")),
            Code::InvalidArgument,
            "partner_id must not be empty",
        ),
        case(
            "17-byte currency",
            Operator,
            CreatePartner(partner("newco", "", &"C".repeat(17))),
            Code::InvalidArgument,
            "currency must be 2 to 16",
        ),
        case(
            "201-byte display name",
            Operator,
            CreatePartner(partner("newco", &"n".repeat(201), "NEWPTS")),
            Code::InvalidArgument,
            "display_name is 201 bytes",
        ),
        case(
            "control character in display name",
            Operator,
            CreatePartner(partner("newco", "New\u{8}Co", "NEWPTS")),
            Code::InvalidArgument,
            "display_name contains a control character",
        ),
        case(
            "5 MiB create request",
            Operator,
            CreatePartner(partner("newco", &"n".repeat(5 * 1024 * 1024), "NEWPTS")),
            Code::ResourceExhausted,
            "at most 4194304 bytes (4 MiB) in one request: split it",
        ),
        case(
            "rotate unknown partner",
            Operator,
            RotatePartnerKey(RotatePartnerKeyRequest { partner_id: "nobody".into() }),
            Code::NotFound,
            "nobody",
        )
        .logged(),
        case(
            "rotate empty partner",
            Operator,
            RotatePartnerKey(RotatePartnerKeyRequest { partner_id: String::new() }),
            Code::InvalidArgument,
            "partner_id must not be empty",
        ),
        case(
            "agreement without terms",
            Operator,
            SetAgreement(SetAgreementRequest {
                from_currency: "SKYMILES".into(),
                to_currency: "MINTPTS".into(),
                terms: None,
            }),
            Code::InvalidArgument,
            "terms must be set",
        ),
        case(
            "u64::MAX rate",
            Operator,
            SetAgreement(SetAgreementRequest {
                from_currency: "SKYMILES".into(),
                to_currency: "MINTPTS".into(),
                terms: Some(terms(1, u64::MAX, 0, 0)),
            }),
            Code::InvalidArgument,
            "rate_denominator is 18446744073709551615",
        ),
        case(
            "agreement into itself",
            Operator,
            SetAgreement(SetAgreementRequest {
                from_currency: "SKYMILES".into(),
                to_currency: "SKYMILES".into(),
                terms: Some(terms(1, 1, 0, 0)),
            }),
            Code::InvalidArgument,
            "to_currency must differ",
        ),
        case(
            "fee eats the minimum",
            Operator,
            SetAgreement(SetAgreementRequest {
                from_currency: "SKYMILES".into(),
                to_currency: "MINTPTS".into(),
                terms: Some(terms(1, 1, 10, 10)),
            }),
            Code::InvalidArgument,
            "fee_points is 10",
        ),
        case(
            "remove unknown agreement",
            Operator,
            RemoveAgreement(RemoveAgreementRequest {
                from_currency: "HOTELPTS".into(),
                to_currency: "SKYMILES".into(),
            }),
            Code::NotFound,
            "HOTELPTS",
        )
        .logged(),
        case(
            "remove with malformed currency",
            Operator,
            RemoveAgreement(RemoveAgreementRequest {
                from_currency: "x".into(),
                to_currency: "SKYMILES".into(),
            }),
            Code::InvalidArgument,
            "currency must be 2 to 16",
        ),
        case(
            "add node without address",
            Operator,
            AddNode(AddNodeRequest { address: "  ".into() }),
            Code::InvalidArgument,
            "address must be host:port",
        ),
        case(
            "add node with space in address",
            Operator,
            AddNode(AddNodeRequest { address: "127.0.0.1 :1".into() }),
            Code::InvalidArgument,
            "address must be host:port",
        ),
        case(
            "remove node 0",
            Operator,
            RemoveNode(RemoveNodeRequest { node_id: 0 }),
            Code::InvalidArgument,
            "node_id must be set",
        ),
        case(
            "remove unknown node from the one-node dev cluster",
            Operator,
            RemoveNode(RemoveNodeRequest { node_id: 99 }),
            Code::FailedPrecondition,
            "needs a multi-node cluster",
        ),
        case(
            "move replica to itself",
            Operator,
            MoveReplica(MoveReplicaRequest { shard: 0, from_node_id: 1, to_node_id: 1 }),
            Code::InvalidArgument,
            "to_node_id must differ",
        ),
        case(
            "move replica of unknown shard to unknown node",
            Operator,
            MoveReplica(MoveReplicaRequest { shard: 99, from_node_id: 1, to_node_id: 2 }),
            Code::FailedPrecondition,
            "needs a multi-node cluster",
        ),
        case(
            "move leader to node 0",
            Operator,
            MoveLeader(MoveLeaderRequest { shard: 0, to_node_id: 0 }),
            Code::InvalidArgument,
            "to_node_id must be set",
        ),
        case(
            "move leader of unknown shard",
            Operator,
            MoveLeader(MoveLeaderRequest { shard: 99, to_node_id: 1 }),
            Code::FailedPrecondition,
            "needs a multi-node cluster",
        ),
        case(
            "snapshot of unknown shard",
            Operator,
            TriggerSnapshot(TriggerSnapshotRequest { shard: Some(99) }),
            Code::InvalidArgument,
            "shard is 99; shards are 0 to",
        ),
        case(
            "malformed list partners",
            Operator,
            Raw("/tally.v1.Admin/ListPartners", endless_varint()),
            Code::InvalidArgument,
            "not a valid tally.v1.ListPartnersRequest message",
        ),
        case(
            "malformed list agreements",
            Operator,
            Raw("/tally.v1.Admin/ListAgreements", truncated_field()),
            Code::InvalidArgument,
            "not a valid tally.v1.ListAgreementsRequest message",
        ),
        case(
            "malformed cluster status",
            Operator,
            Raw("/tally.v1.Admin/ClusterStatus", bad_wire_type()),
            Code::InvalidArgument,
            "not a valid tally.v1.ClusterStatusRequest message",
        ),
        case("status with a past deadline", Operator, ClusterStatus, Code::DeadlineExceeded, "deadline")
            .deadline_passed(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_clear_statuses_and_change_nothing() {
    let world = seed().await;
    let mut cases = ledger_cases();
    cases.extend(admin_cases());
    assert!(cases.len() >= 50, "the catalogue has {} cases", cases.len());
    println!("{:<45} {:<18} {:<20} message", "case", "rpc", "code");
    let mut failures = Vec::new();
    for mut case in cases {
        let rpc = case.call.rpc();
        let before = snapshot(&world).await;
        let result = tokio::time::timeout(Duration::from_secs(60), world.send(&mut case)).await;
        let after = snapshot(&world).await;
        let status = match result {
            Err(_) => Status::new(Code::Unknown, "no answer within 60 s"),
            Ok(Ok(reply)) => Status::new(Code::Ok, format!("accepted: {}", truncate(&reply))),
            Ok(Err(status)) => status,
        };
        println!(
            "{:<45} {:<18} {:<20} {}",
            case.name,
            rpc,
            format!("{:?}", status.code()),
            truncate(status.message())
        );
        let mut problems = Vec::new();
        if !case.accepts(&status) {
            problems.push(format!(
                "answered {:?} {:?}; expected {:?} naming {:?}",
                status.code(),
                truncate(status.message()),
                case.code,
                case.needle
            ));
        }
        let unchanged = match case.trace {
            Trace::None => before == after,
            Trace::Log => {
                (&before.accounts, &before.currency_totals, &before.partners, &before.agreements)
                    == (&after.accounts, &after.currency_totals, &after.partners, &after.agreements)
            }
        };
        if !unchanged {
            problems.push(format!("state changed:\nbefore {before:#?}\nafter {after:#?}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{} ({rpc}): {}", case.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    world.cluster.cluster.expect("running").stop().await.expect("stop");
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(160) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}
