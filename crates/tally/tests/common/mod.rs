//! A dev cluster in-process on port 0 with its data in a temporary folder, and clients for it.

#![allow(dead_code)]

pub mod raw;

use std::path::{Path, PathBuf};

use tally::dev::{self, DevCluster};
use tally_gateway::GatewayConfig;
use tally_node::NodeConfig;
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    AgreementTerms, Balance, CreatePartnerRequest, GetBalanceRequest, ListStatementRequest,
    SetAgreementRequest, StatementLine,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub struct TestCluster {
    pub cluster: Option<DevCluster>,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

pub fn node_config(data_dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: data_dir.to_path_buf(),
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        shard_count: 4,
        ..NodeConfig::default()
    }
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        Self::start_with(GatewayConfig::default()).await
    }

    pub async fn start_with(gateway_config: GatewayConfig) -> TestCluster {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = temp.path().join("data");
        let cluster = dev::start(node_config(&data_dir), gateway_config).await.unwrap();
        TestCluster { cluster: Some(cluster), data_dir, _temp: Some(temp) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.cluster.as_ref().unwrap().addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.unwrap()
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn ledger(&self) -> LedgerClient<Channel> {
        LedgerClient::new(self.channel().await).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Stops the process-equivalent and starts it again on the same data folder.
    pub async fn restart(&mut self) {
        let cluster = self.cluster.take().unwrap();
        cluster.stop().await.unwrap();
        let cluster = dev::start(node_config(&self.data_dir), GatewayConfig::default()).await.unwrap();
        self.cluster = Some(cluster);
    }

    pub async fn create_partner(&self, partner_id: &str, currency: &str) -> String {
        let request = CreatePartnerRequest {
            partner_id: partner_id.into(),
            display_name: format!("{partner_id} brand"),
            currency: currency.into(),
        };
        self.admin().await.create_partner(request).await.unwrap().into_inner().api_key
    }

    pub async fn set_agreement(&self, from: &str, to: &str, terms: AgreementTerms) {
        let request =
            SetAgreementRequest { from_currency: from.into(), to_currency: to.into(), terms: Some(terms) };
        self.admin().await.set_agreement(request).await.unwrap();
    }
}

pub fn authorized<T>(message: T, api_key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {api_key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

pub async fn balance(ledger: &mut LedgerClient<Channel>, api_key: &str, member: &str) -> Option<Balance> {
    let request = GetBalanceRequest { member_id: member.into(), consistency: 0 };
    match ledger.get_balance(authorized(request, api_key)).await {
        Ok(reply) => reply.into_inner().balance,
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("balance of {member}: {status:?}"),
    }
}

pub async fn statement(
    ledger: &mut LedgerClient<Channel>,
    api_key: &str,
    member: &str,
) -> Vec<StatementLine> {
    let request = ListStatementRequest {
        member_id: member.into(),
        order: 2,
        page_size: 1000,
        page_token: String::new(),
    };
    match ledger.list_statement(authorized(request, api_key)).await {
        Ok(reply) => reply.into_inner().lines,
        Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
        Err(status) => panic!("statement of {member}: {status:?}"),
    }
}
