//! `tally-bench-report`: turns the files of one `benches/baseline/run.sh` run into a Markdown
//! summary (tables with ratios against the baseline and the targets) and SVG plots
//! (throughput against concurrency; latency percentiles), so the figures in
//! docs/benchmarks.md come from the measured JSON, never typed by hand.
//!
//! Input folder (written by run.sh):
//! - `<system>__<run>.json`: a `tally-loadtest --report` file; `<system>` is `tally-dev` or
//!   `tally-cluster`, the run's shape comes from its `config` (concurrency, batch, rate).
//! - `postgresql__c<N>.json`, `etcd__c<N>.json`: `{"system", "workload", "clients",
//!   "ops_per_sec", "latency_mean_ms"}` from pgbench / wrk.
//! - `machine.json`: free-form facts about the run (date, CPU, flush probe, commit).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

/// Summarise and plot one baseline run.
#[derive(Parser, Debug)]
#[command(name = "tally-bench-report")]
struct Args {
    /// The run's folder (benches/results/<name>).
    results: PathBuf,
}

/// One tally-loadtest run, reduced to what the tables and plots show.
#[derive(Clone, Debug)]
struct LoadRun {
    system: String,
    file: String,
    profile: String,
    concurrency: u64,
    batch: u64,
    rate: Option<f64>,
    /// Gifting: the share of transfers between members of different shards.
    cross_shard_share: f64,
    ops_per_sec: f64,
    /// Per call: single operations, or whole batches when `batch > 1`.
    latency_us: Option<Percentiles>,
    proof_passed: bool,
    accounts_checked: u64,
}

#[derive(Clone, Copy, Debug)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Clone, Debug)]
struct BaselineRun {
    system: String,
    workload: String,
    clients: u64,
    ops_per_sec: f64,
    latency_mean_ms: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (runs, baselines, machine) = read_folder(&args.results)?;
    if runs.is_empty() {
        bail!("no tally-loadtest reports (<system>__<run>.json) in {}", args.results.display());
    }
    let summary = summary_markdown(&runs, &baselines, &machine);
    let summary_path = args.results.join("summary.md");
    std::fs::write(&summary_path, &summary).with_context(|| format!("writing {}", summary_path.display()))?;
    let throughput_svg = args.results.join("throughput-vs-concurrency.svg");
    plot_throughput(&runs, &baselines, &throughput_svg)?;
    let latency_svg = args.results.join("latency-percentiles.svg");
    plot_latency(&runs, &latency_svg)?;
    print!("{summary}");
    println!("wrote {}, {}, {}", summary_path.display(), throughput_svg.display(), latency_svg.display());
    Ok(())
}

fn read_folder(folder: &Path) -> Result<(Vec<LoadRun>, Vec<BaselineRun>, Value)> {
    let mut runs = Vec::new();
    let mut baselines = Vec::new();
    let mut machine = Value::Null;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let stem = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or_default().to_string();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if stem == "machine" {
            machine = json;
            continue;
        }
        let Some((system, _)) = stem.split_once("__") else { continue };
        if json.get("config").is_some() {
            runs.push(load_run(system, &stem, &json).with_context(|| format!("reading {}", path.display()))?);
        } else {
            baselines.push(BaselineRun {
                system: system.to_string(),
                workload: json["workload"].as_str().unwrap_or("?").to_string(),
                clients: json["clients"].as_u64().context("baseline without clients")?,
                ops_per_sec: json["ops_per_sec"].as_f64().context("baseline without ops_per_sec")?,
                latency_mean_ms: json["latency_mean_ms"].as_f64().unwrap_or(f64::NAN),
            });
        }
    }
    Ok((runs, baselines, machine))
}

fn load_run(system: &str, file: &str, json: &Value) -> Result<LoadRun> {
    let config = &json["config"];
    let batch = config["batch"].as_u64().unwrap_or(1);
    // Batched runs report the batch as its own row; single calls are every other row merged,
    // so take the busiest row (the profile's main operation) for single-call latency.
    let operations = json["operations"].as_array().cloned().unwrap_or_default();
    let latency_row = if batch > 1 {
        operations.iter().find(|row| row["operation"] == "submit_batch")
    } else {
        operations
            .iter()
            .filter(|row| row["operation"] != "submit_batch" && row["latency"].is_object())
            .max_by_key(|row| row["latency"]["count"].as_u64().unwrap_or(0))
    };
    let latency_us = latency_row.and_then(|row| {
        let latency = &row["latency"];
        Some(Percentiles {
            p50: latency["p50_us"].as_f64()?,
            p90: latency["p90_us"].as_f64()?,
            p99: latency["p99_us"].as_f64()?,
            p999: latency["p999_us"].as_f64()?,
            max: latency["max_us"].as_f64()?,
        })
    });
    Ok(LoadRun {
        system: system.to_string(),
        file: file.to_string(),
        profile: config["profile"].as_str().unwrap_or("?").to_string(),
        concurrency: config["concurrency"].as_u64().context("config.concurrency")?,
        batch,
        rate: config["rate"].as_f64(),
        cross_shard_share: config["cross_shard_share"].as_f64().unwrap_or(0.0),
        ops_per_sec: json["totals"]["ops_per_sec"].as_f64().context("totals.ops_per_sec")?,
        latency_us,
        proof_passed: json["proof"]["passed"].as_bool().unwrap_or(false),
        accounts_checked: json["proof"]["accounts_checked"].as_u64().unwrap_or(0),
    })
}

/// The write-path issue's throughput targets (64 callers for single calls), per system and
/// shape, for the "target" column.
fn target_ops_per_sec(system: &str, batched: bool) -> Option<f64> {
    match (system, batched) {
        ("tally-dev", false) => Some(20_000.0),
        ("tally-dev", true) => Some(150_000.0),
        ("tally-cluster", false) => Some(10_000.0),
        ("tally-cluster", true) => Some(80_000.0),
        _ => None,
    }
}

/// The write-path issue's bound on p99 at half of the peak rate (open loop), in ms.
fn target_open_loop_p99_ms(system: &str) -> f64 {
    if system == "tally-cluster" {
        25.0
    } else {
        10.0
    }
}

/// The closed-loop single-call run of this system at this concurrency with the run's usual
/// (smallest) cross-shard share; a run with more cross-shard transfers is shown on its own row.
fn closed_single(runs: &[LoadRun], system: &str, concurrency: u64) -> Option<LoadRun> {
    closed_single_runs(runs, system, concurrency)
        .min_by(|a, b| a.cross_shard_share.total_cmp(&b.cross_shard_share))
}

fn closed_single_runs<'a>(
    runs: &'a [LoadRun],
    system: &'a str,
    concurrency: u64,
) -> impl Iterator<Item = LoadRun> + 'a {
    runs.iter()
        .filter(move |run| {
            run.system == system && run.batch == 1 && run.rate.is_none() && run.concurrency == concurrency
        })
        .cloned()
}

/// Closed-loop single-call runs at 64 callers with more cross-shard transfers than the usual one.
fn cross_shard_variants(runs: &[LoadRun], system: &str) -> Vec<LoadRun> {
    let usual = closed_single(runs, system, 64).map(|run| run.cross_shard_share).unwrap_or(0.0);
    closed_single_runs(runs, system, 64).filter(|run| run.cross_shard_share > usual).collect()
}

fn batched(runs: &[LoadRun], system: &str) -> Option<LoadRun> {
    runs.iter().find(|run| run.system == system && run.batch > 1).cloned()
}

fn open_loop(runs: &[LoadRun], system: &str) -> Option<LoadRun> {
    runs.iter().find(|run| run.system == system && run.rate.is_some()).cloned()
}

fn ms(us: f64) -> String {
    if us >= 100_000.0 {
        format!("{:.0}", us / 1000.0)
    } else {
        format!("{:.1}", us / 1000.0)
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn summary_markdown(runs: &[LoadRun], baselines: &[BaselineRun], machine: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Baseline run\n");
    if let Some(facts) = machine.as_object() {
        for (key, value) in facts {
            let shown = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            let _ = writeln!(out, "- {key}: {shown}");
        }
        out.push('\n');
    }

    // Headline: the same durable transfer workload, single calls at the same concurrency.
    let _ = writeln!(out, "## Durable transfers with an idempotency key, side by side\n");
    let _ = writeln!(out, "| system | shape | ops/s | latency p50 / p99 (ms) | vs PostgreSQL | target |");
    let _ = writeln!(out, "|---|---|--:|---|--:|---|");
    let mut postgres_by_clients: BTreeMap<u64, f64> = BTreeMap::new();
    for baseline in baselines {
        if baseline.system == "postgresql" {
            postgres_by_clients.insert(baseline.clients, baseline.ops_per_sec);
        }
    }
    for baseline in baselines {
        let _ = writeln!(
            out,
            "| {} | {} clients, {} | {} | mean {:.1} | {} | |",
            baseline.system,
            baseline.clients,
            baseline.workload,
            thousands(baseline.ops_per_sec),
            baseline.latency_mean_ms,
            if baseline.system == "postgresql" { "1.00×".to_string() } else { String::new() },
        );
    }
    for system in ["tally-dev", "tally-cluster"] {
        let mut shaped: Vec<LoadRun> = closed_single(runs, system, 64).into_iter().collect();
        shaped.extend(cross_shard_variants(runs, system));
        shaped.extend(batched(runs, system));
        shaped.extend(open_loop(runs, system));
        for run in shaped {
            let shape = if run.batch > 1 {
                format!("SubmitBatch of {}, {} in flight", run.batch, run.concurrency)
            } else if let Some(rate) = run.rate {
                format!("open loop at {} ops/s", thousands(rate))
            } else if run.cross_shard_share > 0.0 {
                format!(
                    "{} callers, single calls, {:.0} % across shards",
                    run.concurrency,
                    run.cross_shard_share * 100.0
                )
            } else {
                format!("{} callers, single calls", run.concurrency)
            };
            let latency = run
                .latency_us
                .map(|latency| format!("{} / {}", ms(latency.p50), ms(latency.p99)))
                .unwrap_or_default();
            let versus = postgres_by_clients
                .get(&run.concurrency)
                .filter(|_| run.rate.is_none())
                .map(|postgres| format!("{:.2}×", run.ops_per_sec / postgres))
                .unwrap_or_default();
            let target = if run.rate.is_some() {
                let p99_ms = run.latency_us.map(|latency| latency.p99 / 1000.0).unwrap_or(f64::INFINITY);
                let bound_ms = target_open_loop_p99_ms(system);
                format!("p99 ≤ {bound_ms} ms: {}", if p99_ms <= bound_ms { "met" } else { "missed" })
            } else if run.concurrency != 64 && run.batch == 1 {
                String::new()
            } else {
                target_ops_per_sec(system, run.batch > 1)
                    .map(|target| {
                        let verdict = if run.ops_per_sec >= target { "met" } else { "missed" };
                        format!("{} ({verdict}, {:.2}× of it)", thousands(target), run.ops_per_sec / target)
                    })
                    .unwrap_or_default()
            };
            let _ = writeln!(
                out,
                "| {system} | {shape} | {} | {latency} | {versus} | {target} |",
                thousands(run.ops_per_sec)
            );
        }
    }

    let _ = writeln!(out, "\n## Throughput against concurrency (closed loop, single calls)\n");
    let _ = writeln!(
        out,
        "| callers | tally-dev ops/s | p50 / p99 (ms) | tally-cluster ops/s | p50 / p99 (ms) |"
    );
    let _ = writeln!(out, "|--:|--:|---|--:|---|");
    let mut concurrencies: Vec<u64> =
        runs.iter().filter(|run| run.batch == 1 && run.rate.is_none()).map(|run| run.concurrency).collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    for concurrency in concurrencies {
        let mut row = format!("| {concurrency} |");
        for system in ["tally-dev", "tally-cluster"] {
            match closed_single(runs, system, concurrency) {
                Some(run) => {
                    let latency = run
                        .latency_us
                        .map(|latency| format!("{} / {}", ms(latency.p50), ms(latency.p99)))
                        .unwrap_or_default();
                    let _ = write!(row, " {} | {latency} |", thousands(run.ops_per_sec));
                }
                None => row.push_str(" | |"),
            }
        }
        let _ = writeln!(out, "{row}");
    }

    let _ = writeln!(out, "\n## Every run\n");
    let _ = writeln!(
        out,
        "| file | profile | in flight | batch | rate | ops/s | p50 | p90 | p99 | p99.9 | max (ms) | proof |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for run in runs {
        let latency = run.latency_us.map_or_else(
            || "| | | | |".to_string(),
            |latency| {
                format!(
                    "{} | {} | {} | {} | {}",
                    ms(latency.p50),
                    ms(latency.p90),
                    ms(latency.p99),
                    ms(latency.p999),
                    ms(latency.max)
                )
            },
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {latency} | {} |",
            run.file,
            run.profile,
            run.concurrency,
            run.batch,
            run.rate.map(thousands).unwrap_or_else(|| "closed".into()),
            thousands(run.ops_per_sec),
            if run.proof_passed {
                format!("passed ({} accounts)", thousands(run.accounts_checked as f64))
            } else {
                "FAILED".to_string()
            },
        );
    }
    out
}

const SERIES_COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

fn plot_throughput(runs: &[LoadRun], baselines: &[BaselineRun], path: &Path) -> Result<()> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for system in ["tally-dev", "tally-cluster"] {
        let mut concurrencies: Vec<u64> = runs
            .iter()
            .filter(|run| run.system == system && run.batch == 1 && run.rate.is_none())
            .map(|run| run.concurrency)
            .collect();
        concurrencies.sort_unstable();
        concurrencies.dedup();
        let mut points: Vec<(f64, f64)> = concurrencies
            .into_iter()
            .filter_map(|concurrency| closed_single(runs, system, concurrency))
            .map(|run| (run.concurrency as f64, run.ops_per_sec))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            series.push((system.to_string(), points));
        }
    }
    for system in ["postgresql", "etcd"] {
        let mut points: Vec<(f64, f64)> = baselines
            .iter()
            .filter(|baseline| baseline.system == system)
            .map(|baseline| (baseline.clients as f64, baseline.ops_per_sec))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            series.push((system.to_string(), points));
        }
    }
    let all = series.iter().flat_map(|(_, points)| points.iter());
    let x_max = all.clone().map(|point| point.0).fold(1.0, f64::max) * 1.5;
    let y_max = all.map(|point| point.1).fold(1.0, f64::max) * 1.15;

    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Single calls, closed loop: throughput against callers", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((1f64..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("concurrent callers (log scale)")
        .y_desc("acknowledged operations per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| thousands(*y))
        .draw()?;
    for (index, (name, points)) in series.iter().enumerate() {
        let color = SERIES_COLORS[index % SERIES_COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|point| Circle::new(*point, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn plot_latency(runs: &[LoadRun], path: &Path) -> Result<()> {
    // Per system: the 64-caller closed-loop run and the open-loop run, p50 to max.
    let mut series: Vec<(String, Percentiles)> = Vec::new();
    for system in ["tally-dev", "tally-cluster"] {
        if let Some(latency) = closed_single(runs, system, 64).and_then(|run| run.latency_us) {
            series.push((format!("{system}, 64 callers (closed)"), latency));
        }
        if let Some(run) = open_loop(runs, system) {
            if let Some(latency) = run.latency_us {
                series.push((
                    format!("{system}, open loop {} ops/s", thousands(run.rate.unwrap_or(0.0))),
                    latency,
                ));
            }
        }
    }
    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    let values = |latency: &Percentiles| {
        [latency.p50, latency.p90, latency.p99, latency.p999, latency.max].map(|us| (us / 1000.0).max(0.01))
    };
    let y_max = series.iter().flat_map(|(_, latency)| values(latency)).fold(1.0, f64::max) * 2.0;
    let y_min = series.iter().flat_map(|(_, latency)| values(latency)).fold(y_max, f64::min) / 2.0;

    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Single-call latency percentiles", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..(labels.len() as f64 - 0.5), (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|x| {
            let index = x.round();
            if (x - index).abs() < 0.01 && index >= 0.0 {
                labels.get(index as usize).map(|label| label.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("percentile")
        .y_desc("latency in ms (log scale)")
        .y_label_formatter(&|y| if *y >= 1.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .draw()?;
    for (index, (name, latency)) in series.iter().enumerate() {
        let color = SERIES_COLORS[index % SERIES_COLORS.len()];
        let points: Vec<(f64, f64)> =
            values(latency).iter().enumerate().map(|(position, value)| (position as f64, *value)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|point| Circle::new(*point, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
