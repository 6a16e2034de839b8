//! The admin service end to end: partners, keys, agreements, cluster status.

mod common;

use common::{authed, TestGateway, SKY_KEY};
use tally_proto::v1::{
    AgreementTerms, ClusterStatusRequest, CreatePartnerRequest, EarnRequest, ExchangeRequest,
    ListAgreementsRequest, ListPartnersRequest, RemoveAgreementRequest, RotatePartnerKeyRequest,
    SetAgreementRequest,
};
use tonic::{Code, Status};

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "message {:?} should contain {needle:?}", status.message());
}

fn create(partner_id: &str, currency: &str) -> CreatePartnerRequest {
    CreatePartnerRequest {
        partner_id: partner_id.into(),
        display_name: "Cafe".into(),
        currency: currency.into(),
    }
}

fn earn(key: &str) -> EarnRequest {
    EarnRequest { idempotency_key: key.into(), member_id: "alice".into(), amount_points: 10 }
}

fn terms(numerator: u64, denominator: u64) -> AgreementTerms {
    AgreementTerms { rate_numerator: numerator, rate_denominator: denominator, ..Default::default() }
}

#[tokio::test]
async fn partners_and_their_keys() {
    let gateway = TestGateway::start(2).await;
    let mut admin = gateway.admin();
    let created = admin.create_partner(create("cafe", "BEANS")).await.unwrap().into_inner();
    let partner = created.partner.unwrap();
    assert_eq!((partner.partner_id.as_str(), partner.currency.as_str()), ("cafe", "BEANS"));
    assert!(created.api_key.starts_with("tly_") && created.api_key.len() == 68, "{}", created.api_key);
    // Only the hash is stored.
    let stored = gateway.backend.meta_partner_hash("cafe");
    assert_eq!(stored, tally_gateway::auth::api_key_sha256(&created.api_key));
    assert_ne!(stored, created.api_key);

    let mut ledger = gateway.ledger();
    let reply = ledger.earn(authed(&created.api_key, earn("e1"))).await.unwrap().into_inner();
    assert_eq!(reply.balances[0].currency, "BEANS");

    let partners = admin.list_partners(ListPartnersRequest {}).await.unwrap().into_inner().partners;
    let ids: Vec<_> = partners.iter().map(|partner| partner.partner_id.as_str()).collect();
    assert_eq!(ids, ["cafe", "hotel", "sky"]);

    let rotated = admin
        .rotate_partner_key(RotatePartnerKeyRequest { partner_id: "cafe".into() })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.api_key, created.api_key);
    assert_status(
        ledger.earn(authed(&created.api_key, earn("e2"))).await,
        Code::Unauthenticated,
        "API key not recognised",
    );
    ledger.earn(authed(&rotated.api_key, earn("e2"))).await.unwrap();

    assert_status(admin.create_partner(create("cafe", "MUGS")).await, Code::AlreadyExists, "cafe");
    assert_status(admin.create_partner(create("tea", "BEANS")).await, Code::AlreadyExists, "BEANS");
    assert_status(admin.create_partner(create("Bad Id", "TEA")).await, Code::InvalidArgument, "partner_id");
    assert_status(admin.create_partner(create("tea", "t")).await, Code::InvalidArgument, "currency");
    assert_status(
        admin.rotate_partner_key(RotatePartnerKeyRequest { partner_id: "nobody".into() }).await,
        Code::NotFound,
        "nobody",
    );
}

#[tokio::test]
async fn agreements() {
    let gateway = TestGateway::start(2).await;
    let mut admin = gateway.admin();
    let set = |terms: Option<AgreementTerms>| SetAgreementRequest {
        from_currency: "SKYMILES".into(),
        to_currency: "HOTELPTS".into(),
        terms,
    };
    assert_status(admin.set_agreement(set(None)).await, Code::InvalidArgument, "terms must be set");
    assert_status(admin.set_agreement(set(Some(terms(0, 1)))).await, Code::InvalidArgument, "rate_numerator");
    let same = SetAgreementRequest {
        from_currency: "SKYMILES".into(),
        to_currency: "SKYMILES".into(),
        terms: Some(terms(1, 1)),
    };
    assert_status(admin.set_agreement(same).await, Code::InvalidArgument, "to_currency must differ");
    let unknown = SetAgreementRequest {
        from_currency: "SKYMILES".into(),
        to_currency: "NOBODY".into(),
        terms: Some(terms(1, 1)),
    };
    assert_status(admin.set_agreement(unknown).await, Code::NotFound, "NOBODY");

    let agreement = admin.set_agreement(set(Some(terms(3, 2)))).await.unwrap().into_inner();
    assert_eq!(agreement.terms.unwrap().rate_numerator, 3);
    let listed = admin.list_agreements(ListAgreementsRequest {}).await.unwrap().into_inner().agreements;
    assert_eq!(listed.len(), 1);

    // The partner API sees it at once.
    let mut ledger = gateway.ledger();
    ledger.earn(authed(SKY_KEY, earn("e1"))).await.unwrap();
    let exchange = ExchangeRequest {
        idempotency_key: "x1".into(),
        member_id: "alice".into(),
        from_currency: "SKYMILES".into(),
        to_currency: "HOTELPTS".into(),
        amount_points: 4,
    };
    let reply = ledger.exchange(authed(SKY_KEY, exchange.clone())).await.unwrap().into_inner();
    assert_eq!(reply.credited_points, 6);

    let remove =
        || RemoveAgreementRequest { from_currency: "SKYMILES".into(), to_currency: "HOTELPTS".into() };
    admin.remove_agreement(remove()).await.unwrap();
    assert_status(admin.remove_agreement(remove()).await, Code::NotFound, "no exchange agreement");
    let exchange = ExchangeRequest { idempotency_key: "x2".into(), ..exchange };
    assert_status(
        ledger.exchange(authed(SKY_KEY, exchange)).await,
        Code::FailedPrecondition,
        "no exchange agreement from SKYMILES to HOTELPTS",
    );
}

#[tokio::test]
async fn cluster_status_is_the_backends() {
    let gateway = TestGateway::start(3).await;
    gateway.ledger().earn(authed(SKY_KEY, earn("e1"))).await.unwrap();
    let status = gateway.admin().cluster_status(ClusterStatusRequest::default()).await.unwrap().into_inner();
    assert_eq!(status.shard_count, 3);
    assert_eq!(status.groups.len(), 3);
    let sky = status.currency_totals.iter().find(|total| total.currency == "SKYMILES").unwrap();
    assert_eq!(sky.debits_points, sky.credits_points);
    assert!(status.groups.iter().all(|group| group.state_digest.is_empty()), "digests only when asked");

    let request = ClusterStatusRequest { include_state_digests: true };
    let with_digests = gateway.admin().cluster_status(request).await.unwrap().into_inner();
    assert!(with_digests.groups.iter().all(|group| group.state_digest.len() == 64), "hex SHA-256 each");
    assert_eq!(with_digests.currency_totals, status.currency_totals);
}
