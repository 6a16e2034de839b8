//! Raft log append through the real log writer: `LogStore` (openraft `RaftLogStorage` on
//! raft-engine) appends of 1, 16, 256 and 4096 entries, each call returning once its
//! `LogFlushed` callback has fired, i.e. after the writer thread's group-committed fdatasync. In
//! a temporary folder on the real disk, so every sync really reaches it. Each entry carries a one-command shard batch. The log is purged
//! after each append (not timed) so it does not grow without bound.

mod common;

use std::time::{Duration, Instant};

use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::EntryPayload;
use tally_raft::{Entry, GroupRequest, TallyRaft};
use tally_store::NodeStore;

fn log_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let payload = GroupRequest::Shard(batch(START_MS, vec![command("k-0", earn(0, SKY, 10))]));
    let mut group = c.benchmark_group("log_append");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for size in [1u64, 16, 256, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeStore::open(dir.path()).unwrap();
        let mut log = node.log_store::<TallyRaft>(1).unwrap();
        let mut next = 1u64;
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("entries_{size}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let entries: Vec<Entry> = (next..next + size)
                            .map(|index| Entry {
                                log_id: log_id(1, 0, index),
                                payload: EntryPayload::Normal(payload.clone()),
                            })
                            .collect();
                        next += size;
                        let start = Instant::now();
                        log.blocking_append(entries).await.unwrap();
                        total += start.elapsed();
                        log.purge(log_id(1, 0, next - 1)).await.unwrap();
                    }
                    total
                })
            })
        });
        drop(log);
        drop(node);
    }
    group.finish();
}

criterion_group!(benches, log_append);
criterion_main!(benches);
