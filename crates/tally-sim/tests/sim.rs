//! Whole-cluster simulations from fixed seeds: 3 nodes x 4 shards of real Tally code with
//! message drops, delays, duplicates and reorders, partitions and heals, crashes and restarts,
//! and the auditor's verdict on each run. A failure prints the seed and the replay command.

use tally_sim::{run, SimConfig};

/// Seeds checked on every test run; a seed that once found a bug stays here as a regression.
const SEEDS: [u64; 4] = [1, 2, 3, 4];

fn config(seed: u64) -> SimConfig {
    SimConfig { workload_ms: 2_500, ..SimConfig::new(seed) }
}

#[test]
fn fixed_seeds_pass_the_audit() {
    let mut failures = Vec::new();
    for seed in SEEDS {
        let config = config(seed);
        let report = run(&config);
        let totals = report.totals;
        println!("seed {seed}: {} in {:.1} s: {totals}", report.passed(), report.elapsed.as_secs_f64());
        // Every run injects every kind of fault and does real work.
        let injected = [
            ("drops", totals.drops),
            ("delays", totals.delays),
            ("duplicates", totals.duplicates),
            ("reorders", totals.reorders),
            ("partitions", totals.partitions),
            ("heals", totals.heals),
            ("crashes", totals.crashes),
            ("restarts", totals.restarts),
        ];
        for (name, count) in injected {
            assert!(count > 0, "seed {seed} injected no {name}: {totals}");
        }
        // Low bars (2 shared cores in debug builds vary a lot): proof that work happened.
        assert!(totals.acknowledged >= 10, "seed {seed} acknowledged little: {totals}");
        assert!(totals.reads >= 1, "seed {seed} read nothing: {totals}");
        if !report.passed() {
            failures.push(report.failure_message(&config));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `TALLY_SIM_SEED=<n> cargo test -p tally-sim --test sim replay_seed_from_env -- --ignored --nocapture`
/// replays one seed.
#[test]
#[ignore = "replays the seed in TALLY_SIM_SEED"]
fn replay_seed_from_env() {
    let seed = std::env::var("TALLY_SIM_SEED").expect("set TALLY_SIM_SEED to the seed to replay");
    let seed: u64 = seed.parse().expect("TALLY_SIM_SEED is a u64");
    let config = config(seed);
    let report = run(&config);
    println!("seed {seed}: {} in {:.1} s: {}", report.passed(), report.elapsed.as_secs_f64(), report.totals);
    assert!(report.passed(), "{}", report.failure_message(&config));
}
