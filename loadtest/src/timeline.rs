//! A timeline of call attempts, for measuring unavailability under faults: per `bucket_ms`
//! interval of the measured phase, how many attempts were acknowledged, refused, and failed (by
//! gRPC code). Every attempt counts, in-line retries included, so a shard without a leader shows
//! up as errors or as empty intervals even when the retries finally succeed.
//!
//! [`unavailability_windows`] and [`fault_impacts`] turn a timeline and a list of injected faults
//! into windows ("from the injection until writes succeed again"); `tally-chaos-report` prints
//! them for cluster/docker/chaos.sh.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tonic::Code;

/// Buckets kept at most (100 ms buckets: 10 hours); attempts later than that are only counted.
const BUCKETS_MAX: usize = 360_000;

/// Attempts that ended in one interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Acknowledged operations (a batch counts each of its operations).
    pub ok: u64,
    /// FAILED_PRECONDITION: a definite answer from the ledger, so the cluster was available.
    pub refused: u64,
    /// Every other failed attempt, by gRPC code name (`Unavailable`, `DeadlineExceeded`, ...).
    pub errors: BTreeMap<String, u64>,
}

impl Bucket {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// An interval is degraded when any attempt failed or no attempt got a definite answer.
    pub fn degraded(&self) -> bool {
        self.ok + self.refused == 0 || self.error_count() > 0
    }
}

/// The recorded timeline, as written in the JSON report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimelineReport {
    /// Wall-clock time of the start of bucket 0 (the start of the measured phase), ms since the
    /// Unix epoch, so that fault logs written by other programs can be aligned with it.
    pub start_unix_ms: u64,
    pub bucket_ms: u64,
    /// Length of the measured phase; later buckets hold the end-of-run resolution's attempts.
    pub measured_ms: u64,
    /// Attempts past `BUCKETS_MAX` buckets, not placed.
    pub dropped: u64,
    pub buckets: Vec<Bucket>,
}

/// The recorder, shared by every worker.
pub(crate) struct Timeline {
    start: Instant,
    start_unix_ms: u64,
    bucket_ms: u64,
    state: Mutex<(Vec<Bucket>, u64)>,
}

/// How one attempt ended, for the timeline.
pub(crate) enum Attempt {
    Ok,
    Refused,
    Error(Code),
}

impl Timeline {
    pub(crate) fn start_now(bucket_ms: u64) -> Self {
        assert!(bucket_ms > 0, "a timeline bucket lasts at least 1 ms");
        let start_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Timeline { start: Instant::now(), start_unix_ms, bucket_ms, state: Mutex::new((Vec::new(), 0)) }
    }

    /// Counts `count` attempts (operations of one call) that ended now.
    pub(crate) fn record(&self, attempt: Attempt, count: u64) {
        let index = (self.start.elapsed().as_millis() as u64 / self.bucket_ms) as usize;
        let Ok(mut state) = self.state.lock() else { return };
        let (buckets, dropped) = &mut *state;
        if index >= BUCKETS_MAX {
            *dropped += count;
            return;
        }
        if buckets.len() <= index {
            buckets.resize_with(index + 1, Bucket::default);
        }
        let bucket = &mut buckets[index];
        match attempt {
            Attempt::Ok => bucket.ok += count,
            Attempt::Refused => bucket.refused += count,
            Attempt::Error(code) => *bucket.errors.entry(format!("{code:?}")).or_default() += count,
        }
    }

    pub(crate) fn report(&self, measured_ms: u64) -> TimelineReport {
        let (mut buckets, dropped) = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        // Intervals of the measured phase in which nothing ended are buckets too (empty ones).
        let measured_buckets = measured_ms.div_ceil(self.bucket_ms) as usize;
        if buckets.len() < measured_buckets.min(BUCKETS_MAX) {
            buckets.resize_with(measured_buckets.min(BUCKETS_MAX), Bucket::default);
        }
        TimelineReport {
            start_unix_ms: self.start_unix_ms,
            bucket_ms: self.bucket_ms,
            measured_ms,
            dropped,
            buckets,
        }
    }
}

/// A maximal run of degraded buckets inside the measured phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub duration_ms: u64,
    /// Buckets of the window with no definite answer at all.
    pub empty_buckets: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Indexes (into the fault list) of the faults this window is attributed to.
    pub faults: Vec<usize>,
}

/// One injected fault, as the chaos script logs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `partition`, `kill-leader`, `restart`, `pause`, `gateway-restart`, ...
    pub kind: String,
    /// What was hit, e.g. `node2` or `gateway`.
    pub target: String,
    /// When the fault was injected and when it was undone (ms since the Unix epoch).
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
}

/// The unavailability a fault caused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultImpact {
    pub fault: Fault,
    /// From the injection until writes succeed again (the end of the last window attributed to
    /// it); 0 when no window is attributed to it.
    pub unavailable_ms: u64,
    /// Total length of its windows (the time in which writes actually failed or stalled).
    pub degraded_ms: u64,
    pub errors: u64,
}

/// Maximal runs of degraded buckets among the buckets that lie wholly inside the measured phase.
pub fn unavailability_windows(timeline: &TimelineReport) -> Vec<Window> {
    let whole = (timeline.measured_ms / timeline.bucket_ms.max(1)) as usize;
    let mut windows: Vec<Window> = Vec::new();
    let mut open: Option<Window> = None;
    for (i, bucket) in timeline.buckets.iter().take(whole).enumerate() {
        let start = timeline.start_unix_ms + i as u64 * timeline.bucket_ms;
        if !bucket.degraded() {
            windows.extend(open.take());
            continue;
        }
        let window = open.get_or_insert_with(|| Window {
            start_unix_ms: start,
            end_unix_ms: start,
            duration_ms: 0,
            empty_buckets: 0,
            ok: 0,
            errors: BTreeMap::new(),
            faults: Vec::new(),
        });
        window.end_unix_ms = start + timeline.bucket_ms;
        window.duration_ms = window.end_unix_ms - window.start_unix_ms;
        window.ok += bucket.ok;
        if bucket.ok + bucket.refused == 0 {
            window.empty_buckets += 1;
        }
        for (code, n) in &bucket.errors {
            *window.errors.entry(code.clone()).or_default() += n;
        }
    }
    windows.extend(open);
    windows
}

/// Attributes each window to the fault whose span it starts in, and measures each fault.
///
/// A fault's span runs from one bucket before its injection (an injection inside a bucket
/// degrades that bucket) until `settle_ms` after it was undone (undoing a fault disrupts too:
/// a partitioned node coming back with a higher term, a restarted node rejoining), or until the
/// next fault's injection if that comes first. Windows in no span are nobody's. Faults must be
/// given in injection order.
pub fn fault_impacts(
    faults: &[Fault],
    windows: &mut [Window],
    bucket_ms: u64,
    settle_ms: u64,
) -> Vec<FaultImpact> {
    let mut impacts: Vec<FaultImpact> = faults
        .iter()
        .map(|fault| FaultImpact { fault: fault.clone(), unavailable_ms: 0, degraded_ms: 0, errors: 0 })
        .collect();
    for window in windows.iter_mut() {
        for (f, fault) in faults.iter().enumerate() {
            let span_start = fault.start_unix_ms.saturating_sub(bucket_ms);
            let settled = fault.end_unix_ms.max(fault.start_unix_ms) + settle_ms;
            let span_end = match faults.get(f + 1) {
                Some(next) => settled.min(next.start_unix_ms.saturating_sub(bucket_ms)),
                None => settled,
            };
            if window.start_unix_ms < span_start || window.start_unix_ms >= span_end {
                continue;
            }
            window.faults.push(f);
            let impact = &mut impacts[f];
            impact.unavailable_ms =
                impact.unavailable_ms.max(window.end_unix_ms.saturating_sub(fault.start_unix_ms));
            impact.degraded_ms += window.duration_ms;
            impact.errors += window.errors.values().sum::<u64>();
        }
    }
    impacts
}
