//! Counters and latency histograms. Workers count outcomes on their own (merged at the end),
//! record latencies into the histograms of their [`LatencyShard`] and bump shared atomics; the
//! progress line reads the atomics and swaps each shard's one-second histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ops::{Kind, KINDS};

pub(crate) fn histogram() -> Histogram<u64> {
    // Microseconds, 3 significant digits, growing as needed.
    Histogram::new(3).expect("3 significant digits is valid")
}

/// Shared atomics for the progress line and the totals.
#[derive(Default)]
pub(crate) struct Counters {
    pub ok: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    pub unknown: AtomicU64,
    pub retries: AtomicU64,
    pub replay_checks: AtomicU64,
    pub timeout_probes: AtomicU64,
    pub timeout_probes_applied: AtomicU64,
}

impl Counters {
    pub(crate) fn reset(&self) {
        for c in [
            &self.ok,
            &self.refused,
            &self.errors,
            &self.unknown,
            &self.retries,
            &self.replay_checks,
            &self.timeout_probes,
            &self.timeout_probes_applied,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.refused.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
            + self.unknown.load(Ordering::Relaxed)
    }
}

/// Latency shards of a run: worker i records into shard i mod this.
pub(crate) const LATENCY_SHARDS: usize = 16;

/// Latency histograms shared by the workers of one shard. Shared, not one set per worker: with
/// a thousand workers in an open loop, every worker's histograms grew at once when latencies
/// rose (hundreds of MB for the kernel to zero), which stalled the generator itself and showed
/// as latency.
pub(crate) struct LatencyShard {
    per_kind: Mutex<Vec<Histogram<u64>>>,
    /// The current second's latencies, read by the progress line.
    pub interval: Mutex<Histogram<u64>>,
}

impl LatencyShard {
    pub(crate) fn new() -> Self {
        LatencyShard {
            per_kind: Mutex::new((0..KINDS).map(|_| histogram()).collect()),
            interval: Mutex::new(histogram()),
        }
    }

    /// Every shard's histograms added up, per kind.
    pub(crate) fn merged(shards: &[Arc<LatencyShard>]) -> Vec<Histogram<u64>> {
        let mut merged: Vec<Histogram<u64>> = (0..KINDS).map(|_| histogram()).collect();
        for shard in shards {
            if let Ok(per_kind) = shard.per_kind.lock() {
                for (total, histogram) in merged.iter_mut().zip(per_kind.iter()) {
                    let _ = total.add(histogram);
                }
            }
        }
        merged
    }
}

/// Per-kind outcomes of one worker, and where it records latencies.
pub(crate) struct LocalStats {
    pub ok: [u64; KINDS],
    pub refused: [u64; KINDS],
    pub errors: [u64; KINDS],
    pub unknown: [u64; KINDS],
    latency: Arc<LatencyShard>,
}

impl LocalStats {
    pub(crate) fn new(latency: Arc<LatencyShard>) -> Self {
        LocalStats { ok: [0; KINDS], refused: [0; KINDS], errors: [0; KINDS], unknown: [0; KINDS], latency }
    }

    pub(crate) fn record(&mut self, kind: Kind, latency: Duration) {
        let us = (latency.as_micros() as u64).max(1);
        // `record` grows the histogram (auto-resize); `saturating_record` would clamp.
        if let Ok(mut per_kind) = self.latency.per_kind.lock() {
            let _ = per_kind[kind.index()].record(us);
        }
        if let Ok(mut interval) = self.latency.interval.lock() {
            let _ = interval.record(us);
        }
    }

    /// Adds `other`'s outcome counts (latencies are in the shards already).
    pub(crate) fn merge(&mut self, other: &LocalStats) {
        for k in 0..KINDS {
            self.ok[k] += other.ok[k];
            self.refused[k] += other.refused[k];
            self.errors[k] += other.errors[k];
            self.unknown[k] += other.unknown[k];
        }
    }
}

/// Percentiles in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

pub(crate) fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}ms", us as f64 / 1000.0)
    }
}

/// Prints a progress line every second until `stop`. On a thread of its own, not on the
/// runtime: merging histograms takes milliseconds, and calls queued on a runtime worker would
/// wait behind it and count as slow.
pub(crate) fn progress(
    counters: Arc<Counters>,
    shards: Vec<Arc<LatencyShard>>,
    start: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    const TICK: Duration = Duration::from_secs(1);
    const POLL: Duration = Duration::from_millis(50);
    let mut last_done = counters.done();
    let mut last = Instant::now();
    let mut merged = histogram();
    loop {
        let due = last + TICK;
        while Instant::now() < due {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(POLL.min(due.saturating_duration_since(Instant::now())));
        }
        let done = counters.done();
        let now = Instant::now();
        let rate = (done - last_done) as f64 / now.duration_since(last).as_secs_f64().max(1e-9);
        last_done = done;
        last = now;
        merged.reset();
        for shard in &shards {
            if let Ok(mut h) = shard.interval.lock() {
                let _ = merged.add(&*h);
                h.reset();
            }
        }
        let (p50, p99) = if !merged.is_empty() {
            (ms(merged.value_at_quantile(0.5)), ms(merged.value_at_quantile(0.99)))
        } else {
            ("-".into(), "-".into())
        };
        eprintln!(
            "[{:>5.0}s] {:>9.0} ops/s  p50 {p50:>8}  p99 {p99:>8}  ok {}  refused {}  errors {}  unknown {}  retries {}",
            now.duration_since(start).as_secs_f64(),
            rate,
            counters.ok.load(Ordering::Relaxed),
            counters.refused.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
            counters.unknown.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed),
        );
    }
}
