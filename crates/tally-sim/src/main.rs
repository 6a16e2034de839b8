//! `tally-sim`: run one seed, or soak many.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use tally_sim::stats::Totals;
use tally_sim::{run, SimConfig};

#[derive(Parser)]
#[command(about = "Seeded fault-injection simulation of a Tally cluster in one process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replays one seed and prints its violations.
    Run {
        #[arg(long, env = "TALLY_SIM_SEED")]
        seed: u64,
        #[command(flatten)]
        shape: Shape,
    },
    /// Runs many seeds and ends with a table of results and injected faults.
    Soak {
        #[arg(long, default_value_t = 100)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed_start: u64,
        #[command(flatten)]
        shape: Shape,
    },
}

#[derive(Args)]
struct Shape {
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 4)]
    shards: u32,
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// How long each run injects faults and starts new requests.
    #[arg(long, default_value_t = 3_000)]
    workload_ms: u64,
}

impl Shape {
    fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            nodes: self.nodes,
            shards: self.shards,
            clients: self.clients,
            workload_ms: self.workload_ms,
            ..SimConfig::new(seed)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tally_sim=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { seed, shape } => {
            let config = shape.config(seed);
            let report = run(&config);
            println!(
                "seed {seed}: {} in {:.1} s",
                if report.passed() { "passed" } else { "FAILED" },
                report.elapsed.as_secs_f64()
            );
            println!("{}", report.totals);
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                eprint!("{}", report.failure_message(&config));
                ExitCode::FAILURE
            }
        }
        Command::Soak { runs, seed_start, shape } => soak(runs, seed_start, &shape),
    }
}

fn soak(runs: u64, seed_start: u64, shape: &Shape) -> ExitCode {
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut failed: Vec<u64> = Vec::new();
    for (done, seed) in (seed_start..seed_start + runs).enumerate() {
        let config = shape.config(seed);
        let report = run(&config);
        totals.add(&report.totals);
        if !report.passed() {
            failed.push(seed);
            eprintln!();
            eprint!("{}", report.failure_message(&config));
        }
        let done = done as u64 + 1;
        eprint!(
            "\r[{:>6.0} s] run {done}/{runs} seed {seed}: passed {} failed {} | acked {} crashes {} partitions {} drops {}   ",
            started.elapsed().as_secs_f64(),
            done - failed.len() as u64,
            failed.len(),
            totals.acknowledged,
            totals.crashes,
            totals.partitions,
            totals.drops,
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "| soak ({} nodes x {} shards, {} ms of faults per run) | |",
        shape.nodes, shape.shards, shape.workload_ms
    );
    println!("|---|---|");
    println!("| runs | {runs} (seeds {seed_start}..={}) in {elapsed:.0} s |", seed_start + runs - 1);
    println!("| passed | {} |", runs - failed.len() as u64);
    let failing: Vec<String> = failed.iter().map(u64::to_string).collect();
    println!(
        "| failed | {} {} |",
        failed.len(),
        if failing.is_empty() { String::new() } else { format!("(seeds {})", failing.join(", ")) }
    );
    for (name, value) in totals.rows() {
        println!("| {name} | {value} |");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
