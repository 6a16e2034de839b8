//! End to end write path of an in-process single-node cluster (`tally::dev::start`, 4 shards,
//! data in a temporary folder, real fsync): a gRPC `Earn` (one command) and a `SubmitBatch` of
//! 100 earns spread over 100 members, each with fresh idempotency keys, from one client.
//! Latency covers gateway, proposer, Raft append + flush, apply and the reply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_gateway::GatewayConfig;
use tally_node::NodeConfig;
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::batch_operation::Operation as BatchOp;
use tally_proto::v1::batch_result::Result as BatchResultKind;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{BatchOperation, CreatePartnerRequest, EarnRequest, SubmitBatchRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const BATCH: u64 = 100;

fn authorized<T>(message: T, api_key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {api_key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn earn(key: u64) -> EarnRequest {
    EarnRequest {
        idempotency_key: format!("k-{key}"),
        member_id: format!("member-{}", key % 100),
        amount_points: 1,
    }
}

fn batch_request(next_key: &AtomicU64) -> SubmitBatchRequest {
    let first = next_key.fetch_add(BATCH, Ordering::Relaxed);
    let operations = (first..first + BATCH)
        .map(|key| BatchOperation { operation: Some(BatchOp::Earn(earn(key))) })
        .collect();
    SubmitBatchRequest { operations }
}

async fn submit_batch(mut ledger: LedgerClient<Channel>, api_key: &str, request: SubmitBatchRequest) {
    let reply = ledger.submit_batch(authorized(request, api_key)).await.unwrap().into_inner();
    assert_eq!(reply.results.len() as u64, BATCH);
    for result in reply.results {
        assert!(matches!(result.result, Some(BatchResultKind::Ok(_))), "{result:?}");
    }
}

fn write_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: temp.path().join("data"),
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        shard_count: 4,
        ..NodeConfig::default()
    };
    let (cluster, ledger, api_key) = runtime.block_on(async {
        let cluster = tally::dev::start(config, GatewayConfig::default()).await.unwrap();
        let channel =
            Channel::from_shared(format!("http://{}", cluster.addr)).unwrap().connect().await.unwrap();
        let request = CreatePartnerRequest {
            partner_id: "skyair".into(),
            display_name: "skyair brand".into(),
            currency: "SKYMILES".into(),
        };
        let api_key =
            AdminClient::new(channel.clone()).create_partner(request).await.unwrap().into_inner().api_key;
        (cluster, LedgerClient::new(channel), api_key)
    });
    let next_key = AtomicU64::new(0);
    runtime.block_on(submit_batch(ledger.clone(), &api_key, batch_request(&next_key)));

    let mut group = c.benchmark_group("write_path");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("earn", |b| {
        b.to_async(&runtime).iter(|| {
            let mut ledger = ledger.clone();
            let request = authorized(earn(next_key.fetch_add(1, Ordering::Relaxed)), &api_key);
            async move { ledger.earn(request).await.unwrap() }
        })
    });
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("submit_batch_100", |b| {
        b.to_async(&runtime).iter(|| submit_batch(ledger.clone(), &api_key, batch_request(&next_key)))
    });
    group.finish();
    runtime.block_on(cluster.stop()).unwrap();
}

criterion_group!(benches, write_path);
criterion_main!(benches);
