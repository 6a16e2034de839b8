//! Tally's load generator: drives a gateway with a named workload (closed or open loop, single
//! calls or SubmitBatch), reports HDR-histogram latencies per operation type, and proves at the
//! end that every acknowledged operation had exactly its effect (see README.md).
//!
//! The binary `tally-loadtest` parses flags into a [`Config`] and calls [`run`].

mod client;
pub mod config;
pub mod exactly_once;
mod ops;
mod proof;
pub mod report;
mod stats;
pub mod timeline;
mod worker;
mod zipf;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use tally_ledger::routing::shard_of_member;
use tally_ledger::MemberId;
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::{AgreementTerms, ClusterStatusRequest, CreatePartnerRequest, SetAgreementRequest};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

pub use config::{Config, Profile};
pub use ops::Kind;
pub use report::{AccountMismatch, CurrencyCheck, OperationStats, Proof, Report, Totals};

use exactly_once::Journal;
use ops::{Model, Names, Op};
use stats::{Counters, Latency, LatencyShard, LocalStats};
use timeline::Timeline;
use worker::{Shared, Worker};
use zipf::MemberPicker;

/// Opens one HTTP/2 connection.
pub async fn connect(target: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(target.to_owned())
        .with_context(|| format!("bad address {target}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_adaptive_window(true);
    endpoint.connect().await.with_context(|| format!("connecting to {target}"))
}

fn random_run_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..6).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

/// Terms of the agreements the generator sets between neighbouring partners.
fn forward_terms() -> AgreementTerms {
    AgreementTerms {
        rate_numerator: 3,
        rate_denominator: 2,
        minimum_points: 10,
        maximum_points: 1_000_000,
        block_size_points: 0,
        fee_points: 1,
    }
}

fn backward_terms() -> AgreementTerms {
    AgreementTerms {
        rate_numerator: 2,
        rate_denominator: 3,
        minimum_points: 10,
        maximum_points: 0,
        block_size_points: 0,
        fee_points: 1,
    }
}

/// Runs the whole thing: setup (partners, agreements, enrolment and funding), the measured
/// phase, the resolution of unknown outcomes and the correctness proof. An `Err` is a failure
/// to set up or to reach the cluster; a failed proof is `Ok` with `report.proof.passed == false`.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    config.validate()?;
    let setup_start = Instant::now();
    let run_id = match &config.run_id {
        Some(id) => {
            anyhow::ensure!(
                !id.is_empty()
                    && id.len() <= 8
                    && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "--run-id must be 1 to 8 lower-case letters or digits"
            );
            id.clone()
        }
        None => random_run_id(),
    };
    let mut channels = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        channels.push(connect(&config.target).await?);
    }
    let admin_target = config.admin_target.clone().unwrap_or_else(|| config.target.clone());
    let mut admin = AdminClient::new(connect(&admin_target).await?);
    let status = admin
        .cluster_status(ClusterStatusRequest::default())
        .await
        .context("Admin/ClusterStatus")?
        .into_inner();
    let shard_count = status.shard_count.max(1);

    // Partners, one currency each.
    let mut partner_ids = Vec::new();
    let mut currencies = Vec::new();
    let mut auth = Vec::new();
    for p in 0..config.partners {
        let partner_id = format!("lt-{run_id}-{p}");
        let currency = format!("LT{}{p}", run_id.to_uppercase());
        let reply = admin
            .create_partner(CreatePartnerRequest {
                partner_id: partner_id.clone(),
                display_name: format!("tally-loadtest {run_id} partner {p}"),
                currency: currency.clone(),
            })
            .await
            .with_context(|| format!("creating partner {partner_id}"))?
            .into_inner();
        let value: AsciiMetadataValue =
            format!("Bearer {}", reply.api_key).parse().context("API key is not valid metadata")?;
        partner_ids.push(partner_id);
        currencies.push(currency);
        auth.push(value);
    }

    // Agreements both ways between neighbours (p, p+1).
    let partners = config.partners;
    let mut terms = vec![None; partners * partners];
    if config.profile.uses_exchange() {
        for p in 0..partners {
            let q = (p + 1) % partners;
            if p == q || terms[p * partners + q].is_some() {
                continue;
            }
            for (from, to, t) in [(p, q, forward_terms()), (q, p, backward_terms())] {
                if terms[from * partners + to].is_some() {
                    continue;
                }
                admin
                    .set_agreement(SetAgreementRequest {
                        from_currency: currencies[from].clone(),
                        to_currency: currencies[to].clone(),
                        terms: Some(t),
                    })
                    .await
                    .with_context(|| {
                        format!("setting the agreement {} -> {}", currencies[from], currencies[to])
                    })?;
                terms[from * partners + to] = Some(t);
            }
        }
    }

    // Members and their shards.
    let members: Vec<String> = (0..config.members).map(|m| format!("{run_id}-m{m}")).collect();
    let mut member_shard = Vec::with_capacity(members.len());
    let mut by_shard = vec![Vec::new(); shard_count as usize];
    for (m, id) in members.iter().enumerate() {
        let shard = shard_of_member(&MemberId::parse(id.clone())?, shard_count);
        member_shard.push(shard);
        by_shard[shard as usize].push(m as u32);
    }

    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        names: Names {
            members,
            partner_ids: partner_ids.clone(),
            currencies: currencies.clone(),
            hold_expiry_ms: config.hold_expiry_ms,
            partners,
            terms,
        },
        auth,
        member_shard,
        by_shard,
        picker: MemberPicker::new(config.members, config.zipf_exponent),
        model: Model::new(config.members, partners),
        counters: counters.clone(),
        unresolved: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        error_samples: Mutex::new(Vec::new()),
        claimed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        journal: Journal::default(),
        timeline: OnceLock::new(),
        cfg: config.clone(),
    });

    fund(&shared, &channels, &run_id).await?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let unknown_in_setup = counters.unknown.load(Ordering::Relaxed);
    counters.reset();
    counters.unknown.store(unknown_in_setup, Ordering::Relaxed);

    // The measured phase, once the target has written the funding away.
    tokio::time::sleep(Duration::from_millis(config.settle_ms)).await;
    if config.progress {
        eprintln!(
            "setup done in {setup_secs:.1} s, settled for {} ms; measured phase started",
            config.settle_ms
        );
    }
    // Workers (and their histograms) exist before the clock starts: with an open loop, the
    // first calls are due from `start` on, and building a thousand workers took long enough
    // that they were sent late and counted as slow.
    let latency: Vec<Arc<LatencyShard>> =
        (0..stats::LATENCY_SHARDS).map(|_| Arc::new(LatencyShard::new())).collect();
    let mut workers = Vec::with_capacity(config.concurrency);
    for w in 0..config.concurrency {
        workers.push(Worker::new(
            shared.clone(),
            channels[w % channels.len()].clone(),
            config.seed.wrapping_mul(1_000_003).wrapping_add(w as u64),
            format!("{run_id}-w{w}-"),
            latency[w % latency.len()].clone(),
        ));
    }
    if let Some(bucket_ms) = config.timeline_bucket_ms {
        let _ = shared.timeline.set(Timeline::start_now(bucket_ms));
    }
    let start = Instant::now();
    let deadline = config.duration.map(|d| start + d);
    let progress_stop = Arc::new(AtomicBool::new(false));
    let progress = config.progress.then(|| {
        let (counters, stop, shards) = (counters.clone(), progress_stop.clone(), latency.clone());
        std::thread::spawn(move || stats::progress(counters, shards, start, stop))
    });
    let handles: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run_loop(start, deadline))).collect();
    let mut total = LocalStats::new(Arc::new(LatencyShard::new()));
    for handle in handles {
        total.merge(&handle.await.context("a worker panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress_stop.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
    }

    let histograms = LatencyShard::merged(&latency);
    let mut operations = Vec::new();
    let mut totals = Totals::default();
    for kind in Kind::ALL {
        let k = kind.index();
        let latency = Latency::of(&histograms[k]);
        if total.ok[k] + total.refused[k] + total.errors[k] + total.unknown[k] == 0 && latency.is_none() {
            continue;
        }
        totals.ok += total.ok[k];
        totals.refused += total.refused[k];
        totals.errors += total.errors[k];
        totals.unknown += total.unknown[k];
        operations.push(OperationStats {
            operation: kind.name(),
            ok: total.ok[k],
            refused: total.refused[k],
            errors: total.errors[k],
            unknown: total.unknown[k],
            latency,
        });
    }
    totals.operations = totals.ok + totals.refused + totals.errors + totals.unknown;
    totals.retries = counters.retries.load(Ordering::Relaxed);
    totals.ops_per_sec = totals.operations as f64 / elapsed.max(1e-9);
    let timeout_probes = counters.timeout_probes.load(Ordering::Relaxed);
    let timeout_probes_applied = counters.timeout_probes_applied.load(Ordering::Relaxed);
    let replay_checks = counters.replay_checks.load(Ordering::Relaxed);

    // The timeline's measured phase ends at the deadline: calls still in flight after it end
    // while the workers wind down, and would show as a (false) drop in the last buckets.
    let measured_ms = config.duration.map_or(elapsed, |d| elapsed.min(d.as_secs_f64())) * 1000.0;
    let timeline = shared.timeline.get().map(|t| t.report(measured_ms as u64));
    let mut proof = proof::check(&shared, &channels, &mut admin, &run_id).await?;
    proof.replay_checks = replay_checks;
    proof.timeout_probes = timeout_probes;
    proof.timeout_probes_applied = timeout_probes_applied;
    proof.add_exactly_once(exactly_once::check(&shared, &channels).await?);

    let error_samples = shared.error_samples.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(Report {
        run_id,
        config,
        shard_count,
        partners: partner_ids,
        currencies,
        setup_secs,
        elapsed_secs: elapsed,
        totals,
        operations,
        error_samples,
        proof,
        timeline,
    })
}

/// Enrols every member with every partner and earns `initial_points` for each, in batches.
async fn fund(shared: &Arc<Shared>, channels: &[Channel], run_id: &str) -> anyhow::Result<()> {
    const MEMBERS_PER_BATCH: usize = 250;
    let cfg = &shared.cfg;
    let chunks_per_partner = cfg.members.div_ceil(MEMBERS_PER_BATCH);
    let jobs = (chunks_per_partner * cfg.partners) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let tasks = cfg.concurrency.clamp(1, 16);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut worker = Worker::new(
            shared.clone(),
            channels[t % channels.len()].clone(),
            cfg.seed ^ 0xf00d ^ t as u64,
            format!("{run_id}-f{t}-"),
            Arc::new(LatencyShard::new()),
        );
        let next = next.clone();
        let shared = shared.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= jobs {
                    break;
                }
                let partner = (job as usize / chunks_per_partner) as u16;
                let chunk = job as usize % chunks_per_partner;
                let range =
                    chunk * MEMBERS_PER_BATCH..((chunk + 1) * MEMBERS_PER_BATCH).min(shared.cfg.members);
                let mut ops = Vec::with_capacity(range.len() * 2);
                for member in range {
                    ops.push(Op::Enrol { partner, member: member as u32 });
                    if shared.cfg.initial_points > 0 {
                        ops.push(Op::Earn {
                            partner,
                            member: member as u32,
                            amount: shared.cfg.initial_points,
                        });
                    }
                }
                worker.batch(partner, ops, Instant::now()).await;
            }
        }));
    }
    for handle in handles {
        handle.await.context("a funding task panicked")?;
    }
    let c = &shared.counters;
    let failed = c.errors.load(Ordering::Relaxed) + c.refused.load(Ordering::Relaxed);
    if failed > 0 {
        let samples = shared.error_samples.lock().map(|s| s.join("; ")).unwrap_or_default();
        anyhow::bail!("the funding phase failed for {failed} operations: {samples}");
    }
    Ok(())
}
