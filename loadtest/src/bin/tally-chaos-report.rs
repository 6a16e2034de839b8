//! `tally-chaos-report`: the verdict of a chaos run (cluster/docker/chaos.sh). Reads the load
//! generator's JSON report (made with `--timeline`) and the log of injected faults, prints the
//! counts of the generator's proof (acknowledged, lost, applied twice), the faults by kind and
//! every unavailability window, writes them as JSON, and exits non-zero if the proof failed,
//! anything was lost or applied twice, or the replicas were not identical.
//!
//! The fault log has one fault per line, tab-separated: `kind target start_unix_ms end_unix_ms`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tally_loadtest::timeline::{
    fault_impacts, unavailability_windows, Fault, FaultImpact, TimelineReport, Window,
};

#[derive(Parser, Debug)]
#[command(name = "tally-chaos-report", version)]
struct Args {
    /// The load generator's JSON report (`tally-loadtest --timeline --report FILE`).
    #[arg(long)]
    report: PathBuf,
    /// The fault log (kind, target, start and end in ms since the Unix epoch, tab-separated).
    #[arg(long)]
    faults: PathBuf,
    /// Windows starting up to this long after a fault was undone (and before the next one) are
    /// still its own.
    #[arg(long, default_value_t = 3_000)]
    settle_ms: u64,
    /// "ok" when every replica's state digest equals its leader's; otherwise what differed.
    #[arg(long)]
    replicas: String,
    /// The chaos run's seed, repeated in the output.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the verdict as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Verdict {
    passed: bool,
    seed: Option<u64>,
    run_id: String,
    /// Start of the measured load phase (ms since the Unix epoch); times print relative to it.
    load_start_unix_ms: u64,
    load_secs: f64,
    proof_passed: bool,
    operations_acknowledged: u64,
    operations_lost: u64,
    operations_applied_twice: u64,
    operations_applied_unacknowledged: u64,
    operations_applied_differently: u64,
    operations_checked: u64,
    accounts_mismatched: u64,
    unknown_outcomes: u64,
    replicas: String,
    faults_by_kind: BTreeMap<String, u64>,
    faults: Vec<FaultImpact>,
    windows: Vec<Window>,
    failures: Vec<String>,
}

fn read_faults(path: &PathBuf) -> anyhow::Result<Vec<Fault>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut faults = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [kind, target, start, end] = fields[..] else {
            anyhow::bail!("{}:{}: want 4 tab-separated fields, got {line:?}", path.display(), n + 1);
        };
        let number =
            |s: &str| s.trim().parse::<u64>().with_context(|| format!("{}:{}: {s:?}", path.display(), n + 1));
        faults.push(Fault {
            kind: kind.to_owned(),
            target: target.to_owned(),
            start_unix_ms: number(start)?,
            end_unix_ms: number(end)?,
        });
    }
    faults.sort_by_key(|f| f.start_unix_ms);
    Ok(faults)
}

fn count(proof: &serde_json::Value, field: &str) -> anyhow::Result<u64> {
    proof.get(field).and_then(|v| v.as_u64()).with_context(|| format!("the report's proof has no {field}"))
}

fn verdict(args: &Args) -> anyhow::Result<Verdict> {
    let text = std::fs::read_to_string(&args.report)
        .with_context(|| format!("reading {}", args.report.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text).context("the load report is not JSON")?;
    let proof = report.get("proof").context("the load report has no proof")?;
    let timeline: TimelineReport = serde_json::from_value(
        report.get("timeline").cloned().context("the load report has no timeline (run with --timeline)")?,
    )
    .context("reading the timeline")?;
    let faults = read_faults(&args.faults)?;
    let mut windows = unavailability_windows(&timeline);
    let impacts = fault_impacts(&faults, &mut windows, timeline.bucket_ms, args.settle_ms);
    let mut faults_by_kind = BTreeMap::new();
    for fault in &faults {
        *faults_by_kind.entry(fault.kind.clone()).or_default() += 1;
    }
    let mut v = Verdict {
        passed: false,
        seed: args.seed,
        run_id: report.get("run_id").and_then(|r| r.as_str()).unwrap_or("?").to_owned(),
        load_start_unix_ms: timeline.start_unix_ms,
        load_secs: report.get("elapsed_secs").and_then(|e| e.as_f64()).unwrap_or(0.0),
        proof_passed: proof.get("passed").and_then(|p| p.as_bool()).unwrap_or(false),
        operations_acknowledged: count(proof, "operations_acknowledged")?,
        operations_lost: count(proof, "operations_lost")?,
        operations_applied_twice: count(proof, "operations_applied_twice")?,
        operations_applied_unacknowledged: count(proof, "operations_applied_unacknowledged")?,
        operations_applied_differently: count(proof, "operations_applied_differently")?,
        operations_checked: count(proof, "operations_checked")?,
        accounts_mismatched: count(proof, "accounts_mismatched")?,
        unknown_outcomes: count(proof, "unknown_outcomes")?,
        replicas: args.replicas.clone(),
        faults_by_kind,
        faults: impacts,
        windows,
        failures: proof
            .get("failures")
            .and_then(|f| f.as_array())
            .map(|f| f.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
    };
    let mut problems = Vec::new();
    if !v.proof_passed {
        problems.push("the generator's correctness proof failed".to_owned());
    }
    for (what, n) in [
        ("lost", v.operations_lost),
        ("applied twice", v.operations_applied_twice),
        ("applied although refused", v.operations_applied_unacknowledged),
        ("applied differently", v.operations_applied_differently),
    ] {
        if n > 0 {
            problems.push(format!("{n} operations {what}"));
        }
    }
    if v.operations_acknowledged == 0 {
        problems.push("no operation was acknowledged".to_owned());
    }
    if v.replicas != "ok" {
        problems.push(format!("replicas differ: {}", v.replicas));
    }
    v.passed = problems.is_empty();
    v.failures.splice(0..0, problems);
    Ok(v)
}

/// Seconds since `origin`, with one decimal.
fn at(origin: u64, unix_ms: u64) -> String {
    format!("{:+.1}", (unix_ms as f64 - origin as f64) / 1000.0)
}

fn codes(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "-".to_owned();
    }
    errors.iter().map(|(code, n)| format!("{code} {n}")).collect::<Vec<_>>().join(", ")
}

fn print(v: &Verdict) {
    let origin = v.load_start_unix_ms;
    println!(
        "chaos run {} (seed {}): {:.0} s of load",
        v.run_id,
        v.seed.map_or("-".into(), |s| s.to_string()),
        v.load_secs
    );
    println!("{:<34} {:>10}", "operations acknowledged", v.operations_acknowledged);
    println!("{:<34} {:>10}", "  checked by key in statements", v.operations_checked);
    println!("{:<34} {:>10}   (must be 0)", "operations lost", v.operations_lost);
    println!("{:<34} {:>10}   (must be 0)", "operations applied twice", v.operations_applied_twice);
    println!("{:<34} {:>10}   (must be 0)", "applied although refused", v.operations_applied_unacknowledged);
    println!("{:<34} {:>10}   (must be 0)", "applied differently", v.operations_applied_differently);
    println!("{:<34} {:>10}", "accounts mismatched (read-back)", v.accounts_mismatched);
    println!("{:<34} {:>10}", "unknown outcomes resolved", v.unknown_outcomes);
    println!("{:<34} {:>10}", "proof", if v.proof_passed { "PASSED" } else { "FAILED" });
    println!("{:<34} {:>10}", "replica digests", if v.replicas == "ok" { "equal" } else { "DIFFER" });
    let kinds: Vec<String> = v.faults_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {} ({})", v.faults.len(), kinds.join(", "));
    println!();
    println!("times in s from the start of the measured load phase");
    println!(
        "{:>3} {:<16} {:<8} {:>9} {:>9} {:>14} {:>11} {:>7}",
        "#", "fault", "target", "injected", "undone", "unavailable_ms", "degraded_ms", "errors"
    );
    for (i, impact) in v.faults.iter().enumerate() {
        let f = &impact.fault;
        println!(
            "{:>3} {:<16} {:<8} {:>9} {:>9} {:>14} {:>11} {:>7}",
            i + 1,
            f.kind,
            f.target,
            at(origin, f.start_unix_ms),
            at(origin, f.end_unix_ms),
            impact.unavailable_ms,
            impact.degraded_ms,
            impact.errors
        );
    }
    println!();
    println!("unavailability windows (intervals with an error or no definite answer):");
    println!(
        "{:>9} {:>9} {:>8} {:>6} {:>8}  {:<10} errors by code",
        "from", "to", "ms", "empty", "acked", "fault"
    );
    for w in &v.windows {
        let faults: Vec<String> = w.faults.iter().map(|f| format!("#{}", f + 1)).collect();
        println!(
            "{:>9} {:>9} {:>8} {:>6} {:>8}  {:<10} {}",
            at(origin, w.start_unix_ms),
            at(origin, w.end_unix_ms),
            w.duration_ms,
            w.empty_buckets,
            w.ok,
            if faults.is_empty() { "-".to_owned() } else { faults.join(",") },
            codes(&w.errors)
        );
    }
    if v.windows.is_empty() {
        println!("(none)");
    }
    for failure in &v.failures {
        println!("FAILURE {failure}");
    }
    println!("{}", if v.passed { "CHAOS RUN PASSED" } else { "CHAOS RUN FAILED" });
}

fn main() -> ExitCode {
    let args = Args::parse();
    let v = match verdict(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    print(&v);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&v).expect("the verdict serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if v.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
