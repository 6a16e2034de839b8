//! `tally-loadtest`: see loadtest/README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tally_loadtest::{Config, Profile};

/// mimalloc, as the node uses: the generator shares the machine with the system it measures,
/// and glibc's malloc and free were about a tenth of its CPU (each call allocates its request,
/// its HTTP/2 frames and its answer).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for Tally with an end-of-run correctness proof.
#[derive(Parser, Debug)]
#[command(name = "tally-loadtest", version)]
struct Args {
    /// Gateway address (partner API).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Admin API address (default: the gateway address).
    #[arg(long)]
    admin_target: Option<String>,
    /// Workload profile.
    #[arg(long, value_enum, default_value = "earn-heavy")]
    profile: Profile,
    /// Partners (each issues its own currency) created for the run.
    #[arg(long, default_value_t = 2)]
    partners: usize,
    /// Members enrolled and funded for the run.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Choose members by a Zipf law with this exponent (e.g. 0.99); default uniform.
    #[arg(long)]
    zipf_exponent: Option<f64>,
    /// Calls in flight (closed loop), or the most in flight (open loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Open loop at this many operations per second (latency from the intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Length of the measured phase (default 10 s unless --operations is given).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Stop after about this many operations.
    #[arg(long)]
    operations: Option<u64>,
    /// Pause between the funding phase and the measured phase, in ms (the target writes the
    /// funding away meanwhile).
    #[arg(long, default_value_t = tally_loadtest::config::SETTLE_MS_DEFAULT)]
    settle_ms: u64,
    /// Operations per SubmitBatch; 1 sends single calls.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// HTTP/2 connections to the gateway.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Gifting: share of transfers between members of different shards.
    #[arg(long, default_value_t = 0.5)]
    cross_shard_share: f64,
    /// Share of operations re-sent at once with the same key (must replay).
    #[arg(long, default_value_t = 0.01)]
    replay_share: f64,
    /// Share of calls sent with a short client timeout, then again with the same key.
    #[arg(long, default_value_t = 0.001)]
    timeout_share: f64,
    /// The short timeout of those calls, in ms.
    #[arg(long, default_value_t = 2)]
    short_timeout_ms: u64,
    /// Timeout of every other call, in ms.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// In-line retries with the same key after an unknown outcome.
    #[arg(long, default_value_t = 20)]
    max_retries: u32,
    /// Points earned per member and currency in the funding phase.
    #[arg(long, default_value_t = 1_000_000)]
    initial_points: u64,
    /// expires_in_ms of holds.
    #[arg(long, default_value_t = 3_600_000)]
    hold_expiry_ms: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of partner and member ids (1-8 of a-z, 0-9); default random.
    #[arg(long)]
    run_id: Option<String>,
    /// Record a timeline of call attempts (acknowledged, refused, errors by code) over the
    /// measured phase in the JSON report, in buckets of --timeline-bucket-ms.
    #[arg(long)]
    timeline: bool,
    /// Width of a timeline bucket, in ms.
    #[arg(long, default_value_t = 100)]
    timeline_bucket_ms: u64,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let duration = match (args.duration_secs, args.operations) {
        (Some(secs), _) if secs > 0.0 && secs.is_finite() => Some(Duration::from_secs_f64(secs)),
        (Some(_), _) => {
            eprintln!("error: --duration-secs must be positive");
            return ExitCode::from(2);
        }
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let config = Config {
        target: args.target,
        admin_target: args.admin_target,
        profile: args.profile,
        partners: args.partners,
        members: args.members,
        zipf_exponent: args.zipf_exponent,
        concurrency: args.concurrency,
        rate: args.rate,
        duration,
        operations: args.operations,
        batch: args.batch,
        connections: args.connections,
        cross_shard_share: args.cross_shard_share,
        replay_share: args.replay_share,
        timeout_share: args.timeout_share,
        short_timeout_ms: args.short_timeout_ms,
        request_timeout_ms: args.request_timeout_ms,
        max_retries: args.max_retries,
        initial_points: args.initial_points,
        hold_expiry_ms: args.hold_expiry_ms,
        seed: args.seed,
        progress: !args.quiet,
        run_id: args.run_id,
        timeline_bucket_ms: args.timeline.then_some(args.timeline_bucket_ms),
        settle_ms: args.settle_ms,
        unrecorded_earn: None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(tally_loadtest::run(config)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).expect("the report serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.proof.passed {
        ExitCode::SUCCESS
    } else {
        eprintln!("\n!!! CORRECTNESS PROOF FAILED for run {} !!!", report.run_id);
        for failure in report.proof.failures.iter().take(10) {
            eprintln!("!!! {failure}");
        }
        ExitCode::FAILURE
    }
}
