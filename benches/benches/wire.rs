//! Raft transport codec: `encode_wire` / `decode_wire` of an AppendEntries request carrying one
//! entry whose payload is a `GroupRequest::Shard` batch of 1,000 earn commands (the size the
//! proposer groups under load). Throughput is in commands.

mod common;

use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openraft::raft::AppendEntriesRequest;
use openraft::testing::log_id;
use openraft::{EntryPayload, Vote};
use tally_raft::network::{decode_wire, encode_wire};
use tally_raft::{Entry, GroupRequest, TallyRaft};

fn wire(c: &mut Criterion) {
    let shard_batch = batch(START_MS, commands("wire", |i| earn(i, SKY, 10)));
    let request = AppendEntriesRequest::<TallyRaft> {
        vote: Vote::new_committed(1, 0),
        prev_log_id: Some(log_id(1, 0, 99)),
        entries: vec![Entry {
            log_id: log_id(1, 0, 100),
            payload: EntryPayload::Normal(GroupRequest::Shard(shard_batch.clone())),
        }],
        leader_commit: Some(log_id(1, 0, 99)),
    };
    let bytes = encode_wire(&request);
    let decoded: AppendEntriesRequest<TallyRaft> = decode_wire(&bytes).unwrap();
    match &decoded.entries[0].payload {
        EntryPayload::Normal(GroupRequest::Shard(decoded_batch)) => assert_eq!(decoded_batch, &shard_batch),
        other => panic!("unexpected payload {other:?}"),
    }

    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("encode_append_entries_1000", |b| b.iter(|| encode_wire(&request)));
    group.bench_function("decode_append_entries_1000", |b| {
        b.iter(|| decode_wire::<AppendEntriesRequest<TallyRaft>>(&bytes).unwrap())
    });
    group.finish();
    println!("wire: AppendEntries with {BATCH} commands is {} bytes", bytes.len());
}

criterion_group!(benches, wire);
criterion_main!(benches);
