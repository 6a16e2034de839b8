//! The real `tally dev` process is killed with SIGKILL while writes are in flight, then started
//! again on the same data folder: every acknowledged write is still there exactly once, every
//! balance equals the sum of the writes the cluster says it applied, and points are conserved.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::authorized;
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    ClusterStatusRequest, CreatePartnerRequest, EarnRequest, GetBalanceRequest, GetOperationRequest,
};
use tonic::transport::Channel;

struct DevProcess {
    child: Child,
}

impl DevProcess {
    fn start(data_dir: &std::path::Path, addr: &str) -> DevProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["dev", "--no-metrics", "--shards", "4", "--listen", addr, "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the tally binary starts");
        DevProcess { child }
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown path runs, unflushed state-machine writes are lost.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await;
        match attempt {
            Ok(channel) => {
                // The port opens only once every group has a leader.
                return channel;
            }
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("tally dev did not come up on {addr}: {error}"),
        }
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn member_of(index: u64) -> String {
    format!("member-{}", index % 16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let addr = free_addr();
    let process = DevProcess::start(&data_dir, &addr);
    let channel = connect(&addr).await;
    let api_key = AdminClient::new(channel.clone())
        .create_partner(CreatePartnerRequest {
            partner_id: "skyair".into(),
            display_name: String::new(),
            currency: "SKYMILES".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_key;

    // 16 writers send earns until the process dies under them.
    let mut writers = Vec::new();
    for writer in 0..16u64 {
        let mut ledger = LedgerClient::new(channel.clone());
        let api_key = api_key.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut attempted = Vec::new();
            for step in 0..100_000u64 {
                let index = writer * 1_000_000 + step;
                let request = EarnRequest {
                    idempotency_key: format!("k{index}"),
                    member_id: member_of(index),
                    amount_points: 1 + index % 7,
                };
                attempted.push(index);
                match ledger.earn(authorized(request, &api_key)).await {
                    Ok(_) => acknowledged.push(index),
                    Err(_) => break,
                }
            }
            (attempted, acknowledged)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    process.kill();
    let mut attempted = Vec::new();
    let mut acknowledged = Vec::new();
    for writer in writers {
        let (tried, acked) = writer.await.unwrap();
        attempted.extend(tried);
        acknowledged.extend(acked);
    }
    assert!(acknowledged.len() > 50, "the workload ran before the kill ({} writes)", acknowledged.len());

    let _process = DevProcess::start(&data_dir, &addr);
    let channel = connect(&addr).await;
    let mut ledger = LedgerClient::new(channel.clone());
    let mut applied_sum: BTreeMap<String, u64> = BTreeMap::new();
    let acknowledged_set: std::collections::BTreeSet<u64> = acknowledged.iter().copied().collect();
    for index in &attempted {
        let request =
            GetOperationRequest { idempotency_key: format!("k{index}"), member_id: member_of(*index) };
        match ledger.get_operation(authorized(request, &api_key)).await {
            Ok(_) => *applied_sum.entry(member_of(*index)).or_default() += 1 + index % 7,
            Err(status) if status.code() == tonic::Code::NotFound => {
                assert!(!acknowledged_set.contains(index), "acknowledged write k{index} was lost");
            }
            Err(status) => panic!("GetOperation k{index}: {status:?}"),
        }
    }
    for (member, expected_points) in &applied_sum {
        let request = GetBalanceRequest { member_id: member.clone(), consistency: 0 };
        let balance = ledger.get_balance(authorized(request, &api_key)).await.unwrap().into_inner();
        assert_eq!(
            balance.balance.unwrap().balance_points,
            *expected_points,
            "{member}: the balance is the sum of the applied earns, each once"
        );
    }
    let status =
        AdminClient::new(channel).cluster_status(ClusterStatusRequest::default()).await.unwrap().into_inner();
    for total in status.currency_totals {
        assert_eq!(total.debits_points, total.credits_points, "{} conserved", total.currency);
    }
}
