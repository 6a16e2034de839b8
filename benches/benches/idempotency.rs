//! Deduplication cost: a batch of 1,000 earns whose keys were all applied before (hit: every
//! command is answered from its idempotency record) vs. the same batch with fresh keys (miss:
//! every command is checked, applied and recorded). Each iteration works on a clone of the same
//! ledger (not timed).

mod common;

use common::*;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally_ledger::{ChangeSet, Ledger, ShardBatch};

fn run(ledger: &Ledger, batch: &ShardBatch, expect_replay: bool) {
    let mut changes = ChangeSet::default();
    for outcome in ledger.clone().apply_batch(3, batch, &mut changes) {
        assert_eq!(outcome.replay, expect_replay);
        assert!(outcome.result.is_ok());
    }
}

fn idempotency(c: &mut Criterion) {
    let mut ledger = funded_ledger();
    let applied = commands("earn", |i| earn(i, SKY, 10));
    apply_ok(&mut ledger, 2, applied.clone());
    let hit = batch(START_MS, applied);
    let miss = batch(START_MS, commands("fresh", |i| earn(i, SKY, 10)));
    run(&ledger, &hit, true);
    run(&ledger, &miss, false);

    let mut group = c.benchmark_group("idempotency");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, batch) in [("hit", &hit), ("miss", &miss)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || ledger.clone(),
                |mut ledger| {
                    let mut changes = ChangeSet::default();
                    let outcomes = ledger.apply_batch(3, batch, &mut changes);
                    (ledger, changes, outcomes)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, idempotency);
criterion_main!(benches);
