//! The run's results: JSON-serializable, with a readable table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Config;
use crate::exactly_once::Counts;
use crate::stats::{ms, Latency};
use crate::timeline::TimelineReport;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub config: Config,
    pub shard_count: u32,
    pub partners: Vec<String>,
    pub currencies: Vec<String>,
    pub setup_secs: f64,
    /// The measured phase.
    pub elapsed_secs: f64,
    pub totals: Totals,
    pub operations: Vec<OperationStats>,
    pub error_samples: Vec<String>,
    pub proof: Proof,
    /// With `--timeline`: attempts per interval of the measured phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineReport>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub operations: u64,
    pub ok: u64,
    /// FAILED_PRECONDITION: deterministic refusals, no effect.
    pub refused: u64,
    pub errors: u64,
    /// Outcome unknown after the in-line retries (resolved before the check).
    pub unknown: u64,
    pub retries: u64,
    pub ops_per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OperationStats {
    pub operation: &'static str,
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
    pub unknown: u64,
    /// From the intended send time to the final answer (retries included).
    pub latency: Option<Latency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AccountMismatch {
    pub member_id: String,
    pub currency: String,
    pub expected_balance: i64,
    pub actual_balance: i64,
    pub expected_held: i64,
    pub actual_held: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CurrencyCheck {
    pub currency: String,
    pub debits_points: String,
    pub credits_points: String,
    pub balanced: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Proof {
    pub passed: bool,
    /// Accounts (member, currency) read back linearizably and compared with the model.
    pub accounts_checked: u64,
    pub accounts_mismatched: u64,
    /// The first differing accounts (at most 20).
    pub first_mismatches: Vec<AccountMismatch>,
    pub conservation: Vec<CurrencyCheck>,
    /// Operations re-sent with the same key whose answer was compared with the first.
    pub replay_checks: u64,
    /// Calls sent first with a short client timeout, then again with the same key.
    pub timeout_probes: u64,
    /// Of those that timed out, how many turned out applied (answered as replays).
    pub timeout_probes_applied: u64,
    pub unknown_outcomes: u64,
    pub unknown_resolved_applied: u64,
    pub unknown_resolved_not_applied: u64,
    /// Operations of the run (funding included) answered with success, in the end (after
    /// retries and the resolution of unknown outcomes).
    pub operations_acknowledged: u64,
    /// Operations answered with a refusal (no effect expected).
    pub operations_refused: u64,
    /// Operations (acknowledged or refused) whose statement lines were checked by key; the
    /// others move no points (Enrol, AuthorizeHold, VoidHold) and are covered by the read-back.
    pub operations_checked: u64,
    /// Acknowledged operations with no statement line under their key. Must be 0.
    pub operations_lost: u64,
    /// Acknowledged operations whose lines add up to two or more times their effect. Must be 0.
    pub operations_applied_twice: u64,
    /// Refused operations with statement lines under their key. Must be 0.
    pub operations_applied_unacknowledged: u64,
    /// Acknowledged operations whose lines match neither once, nor lost, nor twice. Must be 0.
    pub operations_applied_differently: u64,
    pub statement_lines_read: u64,
    /// Every reason the proof failed (replays that did not replay, unresolved outcomes,
    /// mismatched balances, unbalanced currencies, ...), the first 50.
    pub failures: Vec<String>,
}

impl Proof {
    /// Adds the per-operation check's counts; any operation lost, applied twice, applied
    /// although refused, or applied differently fails the proof.
    pub(crate) fn add_exactly_once(&mut self, counts: Counts) {
        self.operations_acknowledged = counts.acknowledged;
        self.operations_refused = counts.refused;
        self.operations_checked = counts.checked;
        self.operations_lost = counts.lost;
        self.operations_applied_twice = counts.applied_twice;
        self.operations_applied_unacknowledged = counts.applied_unacknowledged;
        self.operations_applied_differently = counts.different;
        self.statement_lines_read = counts.statement_lines_read;
        if !counts.failures.is_empty() {
            self.passed = false;
            let room = FAILURES_KEPT.saturating_sub(self.failures.len());
            self.failures.extend(counts.failures.into_iter().take(room));
        }
    }
}

/// Failure reasons kept in the report.
pub(crate) const FAILURES_KEPT: usize = 50;

impl Report {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let t = &self.totals;
        let _ = writeln!(
            out,
            "run {}: profile {}, {} partners, {} members, {} shards, {} loop, batch {}, {} connections",
            self.run_id,
            self.config.profile.name(),
            self.config.partners,
            self.config.members,
            self.shard_count,
            match self.config.rate {
                Some(r) => format!("open ({r} ops/s)"),
                None => format!("closed ({} in flight)", self.config.concurrency),
            },
            self.config.batch,
            self.config.connections,
        );
        let _ = writeln!(
            out,
            "setup {:.1}s; measured {:.1}s: {} operations, {:.0} ops/s; ok {}, refused {}, errors {}, unknown {}, retries {}",
            self.setup_secs, self.elapsed_secs, t.operations, t.ops_per_sec, t.ok, t.refused, t.errors, t.unknown, t.retries
        );
        let _ = writeln!(
            out,
            "{:<15} {:>9} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation", "ok", "refused", "errors", "unknown", "p50", "p90", "p99", "p99.9", "max"
        );
        for op in &self.operations {
            let (p50, p90, p99, p999, max) = match &op.latency {
                Some(l) => (ms(l.p50_us), ms(l.p90_us), ms(l.p99_us), ms(l.p999_us), ms(l.max_us)),
                None => Default::default(),
            };
            let _ = writeln!(
                out,
                "{:<15} {:>9} {:>8} {:>7} {:>7} {p50:>9} {p90:>9} {p99:>9} {p999:>9} {max:>9}",
                op.operation, op.ok, op.refused, op.errors, op.unknown
            );
        }
        for sample in &self.error_samples {
            let _ = writeln!(out, "error sample: {sample}");
        }
        let p = &self.proof;
        let _ = writeln!(
            out,
            "proof: {} accounts checked, {} mismatched; {} replay checks; {} timeout probes ({} applied); \
             {} unknown outcomes ({} applied, {} not applied); {} currencies checked for conservation",
            p.accounts_checked,
            p.accounts_mismatched,
            p.replay_checks,
            p.timeout_probes,
            p.timeout_probes_applied,
            p.unknown_outcomes,
            p.unknown_resolved_applied,
            p.unknown_resolved_not_applied,
            p.conservation.len(),
        );
        let _ = writeln!(
            out,
            "exactly once: {} operations acknowledged, {} refused; {} checked by key against {} statement lines: \
             {} lost, {} applied twice, {} applied although refused, {} applied differently",
            p.operations_acknowledged,
            p.operations_refused,
            p.operations_checked,
            p.statement_lines_read,
            p.operations_lost,
            p.operations_applied_twice,
            p.operations_applied_unacknowledged,
            p.operations_applied_differently,
        );
        for m in &p.first_mismatches {
            let _ = writeln!(
                out,
                "  MISMATCH member {} {}: expected balance {} held {}, found balance {} held {}",
                m.member_id, m.currency, m.expected_balance, m.expected_held, m.actual_balance, m.actual_held
            );
        }
        for f in &p.failures {
            let _ = writeln!(out, "  FAILURE {f}");
        }
        if p.passed {
            let _ = writeln!(out, "PROOF PASSED");
        } else {
            let _ = writeln!(out, "PROOF FAILED");
        }
        out
    }
}
