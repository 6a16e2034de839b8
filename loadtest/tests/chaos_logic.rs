//! The logic behind the chaos report, on hand-made inputs: unavailability windows from a
//! timeline, their attribution to faults, and the per-operation exactly-once verdicts.

use std::collections::BTreeMap;

use tally_loadtest::exactly_once::{classify, combine, Found, Verdict};
use tally_loadtest::timeline::{fault_impacts, unavailability_windows, Bucket, Fault, TimelineReport};

const T0: u64 = 1_700_000_000_000;

fn ok(n: u64) -> Bucket {
    Bucket { ok: n, ..Bucket::default() }
}

fn failing(ok: u64, code: &str, n: u64) -> Bucket {
    Bucket { ok, refused: 0, errors: BTreeMap::from([(code.to_owned(), n)]) }
}

fn timeline(buckets: Vec<Bucket>, measured_ms: u64) -> TimelineReport {
    TimelineReport { start_unix_ms: T0, bucket_ms: 100, measured_ms, dropped: 0, buckets }
}

fn fault(kind: &str, start_ms: u64, end_ms: u64) -> Fault {
    Fault {
        kind: kind.into(),
        target: "node1".into(),
        start_unix_ms: T0 + start_ms,
        end_unix_ms: T0 + end_ms,
    }
}

/// Errors, empty intervals and refusals: a window is a maximal run of intervals with an error or
/// without any definite answer; refusals count as answers; a trailing partial bucket and buckets
/// after the measured phase are ignored.
#[test]
fn windows_are_runs_of_intervals_with_errors_or_no_answer() {
    let buckets = vec![
        ok(50),                                                // 0.0
        ok(3),                                                 // 0.1
        Bucket::default(),                                     // 0.2 nothing answered
        failing(0, "Unavailable", 4),                          // 0.3
        failing(7, "DeadlineExceeded", 1),                     // 0.4 some acks, but an error
        ok(40),                                                // 0.5
        Bucket { ok: 0, refused: 2, errors: BTreeMap::new() }, // 0.6 refusals are answers
        Bucket::default(),                                     // 0.7
        ok(9),                                                 // 0.8
        Bucket::default(),                                     // 0.9 partly outside the measured phase
        failing(0, "Unavailable", 1),                          // 1.0 resolution phase
    ];
    let windows = unavailability_windows(&timeline(buckets, 950));
    assert_eq!(windows.len(), 2, "{windows:?}");
    assert_eq!((windows[0].start_unix_ms, windows[0].end_unix_ms), (T0 + 200, T0 + 500));
    assert_eq!(windows[0].duration_ms, 300);
    assert_eq!(windows[0].empty_buckets, 2);
    assert_eq!(windows[0].ok, 7);
    assert_eq!(
        windows[0].errors,
        BTreeMap::from([("DeadlineExceeded".into(), 1), ("Unavailable".into(), 4)])
    );
    assert_eq!((windows[1].start_unix_ms, windows[1].duration_ms), (T0 + 700, 100));
}

/// A window belongs to the fault whose span it starts in (from one bucket before the injection
/// until `settle_ms` after it was undone, or the next injection); a fault's unavailability runs
/// from its injection to the end of its last window, and a fault without a window has none.
#[test]
fn windows_are_attributed_to_the_fault_they_start_under() {
    let mut buckets = vec![ok(10); 100];
    // Fault A at 1.05 s: broken from 1.0 s to 1.8 s, and again 2.0-2.2 s.
    for b in &mut buckets[10..18] {
        *b = failing(0, "Unavailable", 2);
    }
    for b in &mut buckets[20..22] {
        *b = Bucket::default();
    }
    // Fault B at 4.0 s does nothing; fault C at 6.0 s: 6.3-6.6 s; unrelated blips at 0.5 s and
    // at 8.5 s, 2.3 s after C was undone.
    for b in &mut buckets[63..66] {
        *b = Bucket::default();
    }
    buckets[5] = Bucket::default();
    buckets[85] = Bucket::default();
    let mut windows = unavailability_windows(&timeline(buckets, 10_000));
    assert_eq!(windows.len(), 5);
    let faults =
        [fault("kill-leader", 1050, 3000), fault("partition", 4000, 5000), fault("pause", 6000, 6200)];
    let impacts = fault_impacts(&faults, &mut windows, 100, 2000);
    assert_eq!(windows[0].faults, Vec::<usize>::new(), "the blip before any fault is nobody's");
    assert_eq!(windows[1].faults, vec![0]);
    assert_eq!(windows[2].faults, vec![0]);
    assert_eq!(windows[3].faults, vec![2]);
    assert_eq!(windows[4].faults, Vec::<usize>::new(), "2.3 s after C was undone (settle 2 s)");
    assert_eq!(impacts[0].unavailable_ms, 2200 - 1050);
    assert_eq!(impacts[0].degraded_ms, 800 + 200);
    assert_eq!(impacts[0].errors, 16);
    assert_eq!((impacts[1].unavailable_ms, impacts[1].degraded_ms), (0, 0));
    assert_eq!(impacts[2].unavailable_ms, 600);
    // The last fault's span ends settle_ms after it was undone.
    let mut late = unavailability_windows(&timeline(
        (0..100).map(|i| if i == 90 { Bucket::default() } else { ok(1) }).collect(),
        10_000,
    ));
    let impacts = fault_impacts(&[fault("restart", 6000, 6500)], &mut late, 100, 2000);
    assert_eq!(impacts[0].unavailable_ms, 0, "a window 2.5 s after the end is not the fault's");
}

/// Statement lines under an operation's key against its outcome.
#[test]
fn verdicts_tell_once_lost_twice_and_applied_although_refused_apart() {
    let found = |net_points, lines| Found { net_points, lines };
    assert_eq!(classify(true, 250, found(250, 1)), Verdict::Once);
    assert_eq!(classify(true, -40, found(-40, 1)), Verdict::Once);
    assert_eq!(classify(true, 250, found(0, 0)), Verdict::Lost);
    assert_eq!(classify(true, 250, found(500, 2)), Verdict::AppliedTwice);
    assert_eq!(classify(true, -40, found(-120, 3)), Verdict::AppliedTwice);
    assert_eq!(classify(true, 250, found(100, 1)), Verdict::Different);
    assert_eq!(classify(true, 250, found(-250, 1)), Verdict::Different);
    assert_eq!(classify(false, 250, found(0, 0)), Verdict::NotApplied);
    assert_eq!(classify(false, 250, found(250, 1)), Verdict::AppliedUnacknowledged);

    // An exchange's two sides must agree.
    assert_eq!(combine(&[Verdict::Once, Verdict::Once]), Verdict::Once);
    assert_eq!(combine(&[Verdict::Lost, Verdict::Lost]), Verdict::Lost);
    assert_eq!(combine(&[Verdict::Once, Verdict::Lost]), Verdict::Different);
    assert_eq!(combine(&[Verdict::Once, Verdict::AppliedTwice]), Verdict::AppliedTwice);
    assert_eq!(
        combine(&[Verdict::NotApplied, Verdict::AppliedUnacknowledged]),
        Verdict::AppliedUnacknowledged
    );
}
