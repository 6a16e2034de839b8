//! `Ledger::apply_batch` throughput per operation type: one batch of 1,000 commands with fresh
//! idempotency keys, applied to a clone of a pre-funded ledger (the clone is not timed).

mod common;

use common::*;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally_ledger::{ChangeSet, Command, Ledger, ShardBatch};

/// Benches applying `commands` as log entry 3 to clones of `base`, after checking once that
/// every command succeeds.
fn bench_batch(c: &mut Criterion, name: &str, base: &Ledger, commands: Vec<Command>) {
    apply_ok(&mut base.clone(), 3, commands.clone());
    let batch: ShardBatch = batch(START_MS, commands);
    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(batch.commands.len() as u64));
    group.bench_function(name, |b| {
        b.iter_batched(
            || base.clone(),
            |mut ledger| {
                let mut changes = ChangeSet::default();
                let outcomes = ledger.apply_batch(3, &batch, &mut changes);
                (ledger, changes, outcomes)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn state_machine(c: &mut Criterion) {
    let funded = funded_ledger();
    bench_batch(c, "earn", &funded, commands("earn", |i| earn(i, SKY, 10)));
    bench_batch(c, "redeem", &funded, commands("redeem", |i| redeem(i, 10)));
    bench_batch(c, "transfer", &funded, commands("transfer", |i| transfer(i, 10)));
    bench_batch(c, "authorize_hold", &funded, commands("hold", |i| authorize(i, 10)));
    // Capture the holds authorized above (all of each hold).
    let mut held = funded.clone();
    apply_ok(&mut held, 2, commands("hold", |i| authorize(i, 10)));
    bench_batch(c, "capture_hold", &held, commands("capture", |i| capture(&format!("hold-{i}"))));
    bench_batch(c, "exchange", &funded, commands("exchange", |i| exchange(i, 10)));
}

criterion_group!(benches, state_machine);
criterion_main!(benches);
