//! A quick closed-loop throughput probe against a running gateway (the full load generator,
//! with its correctness proof, is `loadtest/`). Creates a partner, then has `--callers`
//! tasks send Earn calls (or SubmitBatch calls of `--batch` earns) for `--seconds`, and prints
//! operations per second and latency percentiles.
//!
//! cargo run --release -p tally --example throughput -- --addr http://127.0.0.1:50051 --callers 64 --seconds 10
//! cargo run --release -p tally --example throughput -- --batch 1000 --callers 8 --seconds 10

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::batch_operation::Operation as BatchOp;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{BatchOperation, CreatePartnerRequest, EarnRequest, SubmitBatchRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long, default_value_t = 64)]
    callers: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// 0: single Earn calls; N: SubmitBatch calls of N earns.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    #[arg(long, default_value_t = 10_000)]
    members: u64,
    /// HTTP/2 connections shared by the callers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

fn authorized<T>(message: T, api_key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {api_key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(Channel::from_shared(args.addr.clone())?.connect().await?);
    }
    let partner_id = format!("probe{run_id}");
    let currency = format!("P{}", run_id % 1_000_000_000);
    let created = AdminClient::new(channels[0].clone())
        .create_partner(CreatePartnerRequest { partner_id, display_name: String::new(), currency })
        .await?
        .into_inner();
    let api_key = Arc::new(created.api_key);
    let operations = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for caller in 0..args.callers {
        let mut ledger = LedgerClient::new(channels[caller % channels.len()].clone())
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20);
        let (api_key, operations, errors) = (api_key.clone(), operations.clone(), errors.clone());
        let (batch, members) = (args.batch, args.members);
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let mut next_earn = || {
                    sequence += 1;
                    let member = (sequence * 7919 + caller as u64 * 104_729) % members;
                    EarnRequest {
                        idempotency_key: format!("c{caller}-{sequence}"),
                        member_id: format!("member-{member}"),
                        amount_points: 1,
                    }
                };
                let (ok, count) = if batch == 0 {
                    (ledger.earn(authorized(next_earn(), &api_key)).await.is_ok(), 1)
                } else {
                    let operations = (0..batch)
                        .map(|_| BatchOperation { operation: Some(BatchOp::Earn(next_earn())) })
                        .collect();
                    let reply =
                        ledger.submit_batch(authorized(SubmitBatchRequest { operations }, &api_key)).await;
                    (reply.is_ok(), batch as u64)
                };
                latencies_us.push(started.elapsed().as_micros() as u64);
                if ok {
                    operations.fetch_add(count, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies_us
        }));
    }
    let started = Instant::now();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let percentile =
        |p: f64| latencies_us[((latencies_us.len() as f64 * p) as usize).min(latencies_us.len() - 1)];
    let ops = operations.load(Ordering::Relaxed);
    println!(
        "callers={} batch={} ops={} errors={} elapsed={:.1}s ops/s={:.0} call p50={:.2}ms p99={:.2}ms max={:.2}ms",
        args.callers,
        args.batch,
        ops,
        errors.load(Ordering::Relaxed),
        elapsed,
        ops as f64 / elapsed,
        percentile(0.50) as f64 / 1000.0,
        percentile(0.99) as f64 / 1000.0,
        *latencies_us.last().unwrap() as f64 / 1000.0
    );
    Ok(())
}
