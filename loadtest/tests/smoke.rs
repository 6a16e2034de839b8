//! Smoke runs against an in-process dev cluster, with the correctness proof.

use std::path::Path;
use std::time::Duration;

use tally::dev;
use tally_gateway::GatewayConfig;
use tally_loadtest::{run, Config, Profile};
use tally_node::NodeConfig;

fn node_config(data_dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: data_dir.to_path_buf(),
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        shard_count: 4,
        ..NodeConfig::default()
    }
}

fn small(target: String, profile: Profile) -> Config {
    Config {
        target,
        profile,
        partners: 2,
        members: 200,
        concurrency: 8,
        connections: 2,
        duration: Some(Duration::from_secs(2)),
        replay_share: 0.05,
        timeout_share: 0.02,
        short_timeout_ms: 1,
        initial_points: 10_000,
        progress: false,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_runs_pass_the_proof_and_a_hidden_earn_is_caught() {
    let temp = tempfile::tempdir().unwrap();
    let cluster = dev::start(node_config(&temp.path().join("data")), GatewayConfig::default()).await.unwrap();
    let target = format!("http://{}", cluster.addr);

    // Mixed single calls, Zipfian members.
    let mut config = small(target.clone(), Profile::Mixed);
    config.zipf_exponent = Some(0.99);
    config.timeline_bucket_ms = Some(100);
    let report = run(config).await.unwrap();
    println!("{}", report.table());
    assert!(report.proof.passed, "{:?}", report.proof.failures);
    // Every operation checked by key: the 400 funding earns and the measured ones.
    let p = &report.proof;
    assert!(p.operations_acknowledged >= 800 + report.totals.ok, "{p:?}");
    assert!(p.operations_checked > 400 && p.statement_lines_read >= 400, "{p:?}");
    assert_eq!(
        (p.operations_lost, p.operations_applied_twice, p.operations_applied_unacknowledged),
        (0, 0, 0)
    );
    assert_eq!(p.operations_applied_differently, 0);
    // The timeline covers the measured phase and saw every acknowledgement (probes' short
    // first attempts are left out of it).
    let timeline = report.timeline.as_ref().expect("a timeline was asked for");
    assert_eq!(timeline.bucket_ms, 100);
    assert!(timeline.buckets.len() >= 19, "{} buckets for 2 s", timeline.buckets.len());
    let acked: u64 = timeline.buckets.iter().map(|b| b.ok).sum();
    assert!(acked + p.timeout_probes >= report.totals.ok, "{acked} acks in the timeline");
    assert!(report.totals.ok > 50, "too few operations: {:?}", report.totals);
    assert_eq!(report.proof.accounts_checked, 400);
    assert!(report.proof.replay_checks > 0);
    for kind in ["earn", "redeem", "authorize_hold", "transfer", "exchange"] {
        assert!(report.operations.iter().any(|o| o.operation == kind && o.ok > 0), "no {kind} succeeded");
    }
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"p99_us\""));

    // Batched checkout and gifting, open loop, stopped by an operation count.
    for profile in [Profile::Checkout, Profile::Gifting] {
        let mut config = small(target.clone(), profile);
        config.batch = 20;
        config.rate = Some(2000.0);
        config.duration = None;
        config.operations = Some(1000);
        let report = run(config).await.unwrap();
        println!("{}", report.table());
        assert!(report.proof.passed, "{profile:?}: {:?}", report.proof.failures);
        assert!(report.operations.iter().any(|o| o.operation == "submit_batch" && o.latency.is_some()));
    }

    // An earn behind the generator's back must fail the proof, naming the member.
    let mut config = small(target.clone(), Profile::EarnHeavy);
    config.duration = Some(Duration::from_secs(1));
    config.run_id = Some("tamper1".into());
    config.unrecorded_earn = Some((7, 5));
    let report = run(config).await.unwrap();
    println!("{}", report.table());
    assert!(!report.proof.passed);
    assert_eq!(report.proof.accounts_mismatched, 1);
    let mismatch = &report.proof.first_mismatches[0];
    assert_eq!(mismatch.member_id, "tamper1-m7");
    assert_eq!(mismatch.actual_balance - mismatch.expected_balance, 5);
    assert!(report.proof.failures.iter().any(|f| f.contains("tamper1-m7")), "{:?}", report.proof.failures);
    // The per-key check finds the hidden earn under its key, and misses the one never sent.
    assert_eq!(report.proof.operations_applied_unacknowledged, 1);
    assert_eq!(report.proof.operations_lost, 1);
    assert_eq!(report.proof.operations_applied_twice, 0);
    assert!(report.timeline.is_none());

    cluster.stop().await.unwrap();
}

/// Every call gets 1 ms and no in-line retry, so many outcomes are unknown: the proof must
/// resolve them (GetOperation by key, or the same key again) and still balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcomes_are_resolved_before_the_check() {
    let temp = tempfile::tempdir().unwrap();
    let cluster = dev::start(node_config(&temp.path().join("data")), GatewayConfig::default()).await.unwrap();
    let mut config = small(format!("http://{}", cluster.addr), Profile::Mixed);
    config.request_timeout_ms = 1;
    config.max_retries = 0;
    config.timeout_share = 0.0;
    config.duration = None;
    config.operations = Some(300);
    let report = run(config).await.unwrap();
    println!("{}", report.table());
    assert!(report.proof.passed, "{:?}", report.proof.failures);
    assert!(report.proof.unknown_outcomes > 0, "no unknown outcome was provoked");
    assert_eq!(
        report.proof.unknown_resolved_applied + report.proof.unknown_resolved_not_applied,
        report.proof.unknown_outcomes
    );
    cluster.stop().await.unwrap();
}
