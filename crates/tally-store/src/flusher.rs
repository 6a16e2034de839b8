//! The node's single flusher thread: group commit across every Raft group of the node.
//!
//! sled's `Tree::flush()` flushes the whole pagecache, so one `flush()` makes every write that
//! was applied before it started durable, for every group at once. Writers (log appends, vote
//! saves, explicit [`NodeStore::flush`](crate::NodeStore::flush) calls) apply their sled write
//! first and then send a completion callback here. The thread blocks for one request, drains
//! everything else that is pending, calls `db.flush()` once and completes all of them with its
//! result. Because a request is only sent after its write was applied, and the thread only
//! starts a flush after receiving the request, every completed request is covered by a flush
//! that started after its write: that is the whole durability argument.
//!
//! Why a dedicated `std::thread` and blocking `flush()`: `flush_async` can deadlock in sled
//! 0.34.x when called concurrently (spacejam/sled#1308, #1241, #1357), and a blocking fsync on a
//! tokio worker would stall every task scheduled on it. This thread is the only place in the
//! crate that calls `flush()`.
//!
//! The watchdog: sled 0.34 can also wait forever inside a blocking `flush()` (seen once under
//! heavy load, docs/reliability.md). A second thread looks at the flush in progress a few times
//! per bound; when one has not returned within `flush_stall_abort_ms` it logs, counts the stall
//! and runs the stall action, which in production aborts the process (see [`abort_on_stall`]).
//! The flusher's only extra work per flush is two atomic stores of a time it already reads.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::flush_mark::{self, FlushMark};
use crate::value_log::ValueLog;

/// What a writer hands to the flusher: called once, on the flusher thread, with the result of a
/// `flush()` that started after the writer's data was applied. It must be quick and must not
/// block (it runs inside the group-commit loop).
pub(crate) type FlushCallback = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// The durable flush itself: `db.flush()` in production, a stand-in in the unit tests.
pub(crate) type FlushFn = Box<dyn FnMut() -> io::Result<()> + Send + 'static>;

/// What the watchdog does once a flush has stalled (after logging and counting it).
pub(crate) type StallAction = Box<dyn Fn(&FlushStall) + Send + 'static>;

/// How many requests may wait for the flusher before writers block in `submit`. Far above what
/// the node can have in flight (one append or vote per group at a time, plus explicit flushes),
/// so in practice it only bounds memory if the disk stalls.
pub(crate) const FLUSH_QUEUE_CAPACITY: usize = 16_384;

/// How often the watchdog looks at the flush in progress, as a fraction of the bound, and at
/// least once a second: a stall is noticed at most a tenth of the bound (or a second) late.
const WATCHDOG_LOOKS_PER_BOUND: u64 = 10;
const WATCHDOG_LOOK_INTERVAL_MS_MAX: u64 = 1_000;

/// Counters of the flusher, for the node's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// `db.flush()` calls made by the flusher (successful or not).
    pub flushes: u64,
    /// Completion requests served (appends, vote saves, explicit flushes). `requests / flushes`
    /// is the group-commit factor.
    pub requests: u64,
    /// Time spent inside `db.flush()`, summed, in nanoseconds.
    pub flush_time_ns: u64,
    /// How long the flush in progress has been running, in nanoseconds; 0 when none is. Lets an
    /// alert fire on a slow flush before the watchdog's bound is reached.
    pub flush_in_progress_ns: u64,
    /// Flushes the watchdog found stalled (in production the first one aborts the process).
    pub stalls: u64,
}

/// sled's files in its folder, made durable with `fsync` after each flush.
///
/// sled 0.34 ends a flush with `sync_file_range` on Linux, which neither flushes the device's
/// write cache nor records a grown file's size, and writes values too large for a page to
/// `blobs/*` files that it never syncs: a power cut could undo a flush it reported. An
/// `fsync` of `db`, of every blob file not synced yet and of the folders closes that gap.
pub(crate) struct SledFiles {
    folder: std::path::PathBuf,
    synced_blobs: std::collections::HashSet<std::ffi::OsString>,
}

impl SledFiles {
    pub(crate) fn new(folder: &std::path::Path) -> SledFiles {
        SledFiles { folder: folder.to_path_buf(), synced_blobs: std::collections::HashSet::new() }
    }

    fn sync(&mut self) -> io::Result<()> {
        let db_file = self.folder.join("db");
        std::fs::File::open(&db_file)
            .and_then(|file| file.sync_all())
            .map_err(|e| crate::files::error_at(&db_file, e))?;
        let blobs = self.folder.join("blobs");
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut new_blobs = false;
            for entry in entries {
                let entry = entry?;
                if self.synced_blobs.contains(&entry.file_name()) {
                    continue;
                }
                // A blob removed meanwhile (sled collects them) needs no sync.
                if let Ok(file) = std::fs::File::open(entry.path()) {
                    file.sync_all()?;
                }
                self.synced_blobs.insert(entry.file_name());
                new_blobs = true;
            }
            if new_blobs {
                crate::files::sync_folder(&blobs)?;
            }
        }
        crate::files::sync_folder(&self.folder)
    }
}

/// A flush that has not returned within the watchdog's bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlushStall {
    /// How long the flush has been running while the process ran, in milliseconds.
    pub(crate) stalled_ms: u64,
    /// The store's folder, as given to `NodeStore::open`, or a note for a temporary store.
    pub(crate) data_folder: String,
}

/// The flusher's watchdog settings: the bound and what to do when a flush exceeds it.
pub(crate) struct FlushWatchdog {
    pub(crate) stall_abort_ms: u64,
    pub(crate) on_stall: StallAction,
}

impl FlushWatchdog {
    /// The production watchdog: aborts the process on a stall.
    pub(crate) fn aborting(stall_abort_ms: u64) -> FlushWatchdog {
        FlushWatchdog { stall_abort_ms, on_stall: Box::new(abort_on_stall) }
    }
}

/// The production stall action.
///
/// Why abort, and not an error or a clean exit: the flusher thread is stuck inside sled with
/// sled's locks held, so nothing that needs the database can finish. A clean shutdown would
/// join that thread (and sled's own) and hang again; `std::process::exit` runs exit handlers
/// that may wait on locks the stuck threads hold. `abort` ends the process at once (leaving a
/// core dump where they are enabled), and a crash is safe for a Raft node: every acknowledged
/// append was flushed before it was acknowledged, and the rest comes back from its peers'
/// logs. The supervisor (systemd, a container restart policy, `cluster/local.sh` by hand)
/// restarts it; a hung node would instead keep its shard leaderships and serve nothing.
pub(crate) fn abort_on_stall(_stall: &FlushStall) {
    std::process::abort();
}

#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    requests: AtomicU64,
    flush_time_ns: AtomicU64,
    stalls: AtomicU64,
    /// When the flush in progress started, as [`stamp_ns`] of its start; 0 when none runs.
    /// Written only by the flusher thread, read by the watchdog and `stats`.
    flush_started_stamp_ns: AtomicU64,
}

/// Owns the flusher thread and its watchdog. Dropping it closes the channel, lets the thread
/// finish what is queued (plus one final flush) and joins both threads.
pub(crate) struct Flusher {
    tx: Option<SyncSender<FlushCallback>>,
    handle: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    /// The origin of the stamps in `Counters::flush_started_stamp_ns`.
    epoch: Instant,
}

impl Flusher {
    /// The flusher of a sled `Db`, watched by `watchdog`; `data_folder` names the store in the
    /// watchdog's error. With a `mark`, each flush first stores its sequence number in sled
    /// and records it in the mark once it has returned (see `flush_mark`); a failed insert or
    /// mark write fails the flush like a failed fsync.
    ///
    /// With `files`, every flush then `fsync`s sled's files (see [`SledFiles`]): sled's own flush
    /// ends with `sync_file_range`, which a power cut can undo.
    pub(crate) fn start_for_db(
        db: sled::Db,
        mut mark: Option<FlushMark>,
        mut files: Option<SledFiles>,
        values: Arc<ValueLog>,
        watchdog: FlushWatchdog,
        data_folder: String,
    ) -> io::Result<Flusher> {
        let flush: FlushFn = Box::new(move || {
            // Files whose last pointer went before this flush started: gone once it is durable.
            let unreferenced = values.take_unreferenced();
            let sequence = match &mut mark {
                Some(mark) => {
                    let sequence = mark.next_sequence();
                    flush_mark::store_sequence(&db, sequence).map_err(io::Error::from)?;
                    Some(sequence)
                }
                None => None,
            };
            let flushed = db.flush().map_err(io::Error::from).and_then(|_| match &mut files {
                Some(files) => files.sync(),
                None => Ok(()),
            });
            if let Err(error) = flushed {
                values.restore_unreferenced(unreferenced);
                return Err(error);
            }
            values.delete(unreferenced).map_err(io::Error::other)?;
            match (&mut mark, sequence) {
                (Some(mark), Some(sequence)) => mark.record(sequence),
                _ => Ok(()),
            }
        });
        Flusher::start(flush, watchdog, data_folder)
    }

    pub(crate) fn start(flush: FlushFn, watchdog: FlushWatchdog, data_folder: String) -> io::Result<Flusher> {
        assert!(watchdog.stall_abort_ms > 0, "a zero stall bound would abort at the first flush");
        let (tx, rx) = sync_channel::<FlushCallback>(FLUSH_QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let epoch = Instant::now();
        // The flusher thread owns `watchdog_stop` and drops it when it ends (after the final
        // flush, or in a panic), which ends the watchdog: it watches exactly as long as there is
        // a flush to watch, the final one at shutdown included.
        let (watchdog_stop, watchdog_stopped) = channel::<()>();
        let watchdog_counters = counters.clone();
        let watchdog = std::thread::Builder::new()
            .name("tally-store-flush-watchdog".to_string())
            .spawn(move || watch(watchdog, data_folder, epoch, &watchdog_counters, &watchdog_stopped))?;
        let thread_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name("tally-store-flusher".to_string())
            .spawn(move || run(flush, rx, &thread_counters, epoch, watchdog_stop))?;
        Ok(Flusher { tx: Some(tx), handle: Some(handle), watchdog: Some(watchdog), counters, epoch })
    }

    /// Queues `callback` for the next flush. Blocks the calling thread only while the queue is
    /// full (`FLUSH_QUEUE_CAPACITY` requests waiting, i.e. the disk is stalled), which is the
    /// backpressure we want. Gives the callback back if the flusher thread is gone.
    pub(crate) fn submit(&self, callback: FlushCallback) -> Result<(), FlushCallback> {
        let Some(tx) = &self.tx else {
            return Err(callback);
        };
        match tx.try_send(callback) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(cb)) => Err(cb),
            Err(TrySendError::Full(cb)) => {
                tracing::warn!("flush queue full ({FLUSH_QUEUE_CAPACITY} waiting); writer blocks");
                tx.send(cb).map_err(|e| e.0)
            }
        }
    }

    pub(crate) fn stats(&self) -> FlushStats {
        let started_stamp_ns = self.counters.flush_started_stamp_ns.load(Ordering::Relaxed);
        let flush_in_progress_ns = match started_stamp_ns {
            0 => 0,
            started => stamp_ns(self.epoch, Instant::now()).saturating_sub(started),
        };
        FlushStats {
            flushes: self.counters.flushes.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            flush_time_ns: self.counters.flush_time_ns.load(Ordering::Relaxed),
            flush_in_progress_ns,
            stalls: self.counters.stalls.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the queued requests are served.
        drop(self.tx.take());
        // Joining makes the flusher's `Db` handle go away before `drop` returns, so the same
        // path can be reopened right after the last `NodeStore` handle is dropped. Never join
        // from the flusher thread itself (a callback could own the last handle): both threads
        // then end on their own. The flusher first, since the watchdog ends after it.
        for handle in [self.handle.take(), self.watchdog.take()].into_iter().flatten() {
            let name = handle.thread().name().unwrap_or("unnamed").to_string();
            if handle.thread().id() != std::thread::current().id() && handle.join().is_err() {
                tracing::error!(thread = name, "a store thread panicked");
            }
        }
    }
}

/// `at` as nanoseconds since `epoch`, plus one so that 0 can mean "no flush running".
fn stamp_ns(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

fn run(
    mut flush: FlushFn,
    rx: Receiver<FlushCallback>,
    counters: &Counters,
    epoch: Instant,
    watchdog_stop: Sender<()>,
) {
    let mut pending: Vec<FlushCallback> = Vec::new();
    while let Ok(first) = rx.recv() {
        pending.push(first);
        // Take everything already waiting: one flush serves them all (group commit). Bounded so
        // that a steady stream of requests cannot postpone the flush forever.
        while pending.len() < FLUSH_QUEUE_CAPACITY {
            match rx.try_recv() {
                Ok(cb) => pending.push(cb),
                Err(_) => break,
            }
        }
        // Every callback in `pending` was sent after its write was applied, and this flush
        // starts after they were all received, so a success covers all of their writes.
        let result = watched_flush(&mut flush, counters, epoch);
        counters.requests.fetch_add(pending.len() as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => tracing::trace!(requests = pending.len(), "flushed"),
            Err(e) => tracing::error!(error = %e, requests = pending.len(), "sled flush failed"),
        }
        for cb in pending.drain(..) {
            // io::Error is not Clone: give every waiter its own copy of the failure.
            cb(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
    // Every handle is gone. Writes that never asked for durability (state-machine batches,
    // `committed`, truncates, purges) are made durable here on a clean shutdown; after a crash
    // openraft recovers them from the flushed log instead. Watched too: the one hang seen was
    // at shutdown.
    if let Err(e) = watched_flush(&mut flush, counters, epoch) {
        tracing::error!(error = %e, "final sled flush at shutdown failed");
    }
    drop(watchdog_stop);
}

/// One flush, published to the watchdog: the start stamp before, 0 after. `Instant::now` is
/// read here anyway for `flush_time_ns`, so the watchdog costs two atomic stores per flush.
fn watched_flush(flush: &mut FlushFn, counters: &Counters, epoch: Instant) -> io::Result<()> {
    let started = Instant::now();
    counters.flush_started_stamp_ns.store(stamp_ns(epoch, started), Ordering::Relaxed);
    let result = flush();
    counters.flush_started_stamp_ns.store(0, Ordering::Relaxed);
    let elapsed_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counters.flush_time_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
    counters.flushes.fetch_add(1, Ordering::Relaxed);
    result
}

/// The watchdog thread: looks at the flush in progress every `look_interval` until the flusher
/// thread ends (drops its end of `stopped`).
fn watch(
    watchdog: FlushWatchdog,
    data_folder: String,
    epoch: Instant,
    counters: &Counters,
    stopped: &Receiver<()>,
) {
    let bound_ms = watchdog.stall_abort_ms;
    let look_interval_ms = (bound_ms / WATCHDOG_LOOKS_PER_BOUND).clamp(1, WATCHDOG_LOOK_INTERVAL_MS_MAX);
    let look_interval = Duration::from_millis(look_interval_ms);
    let mut tracker = StallTracker::new(bound_ms, look_interval_ms, stamp_ns(epoch, Instant::now()));
    loop {
        match stopped.recv_timeout(look_interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let started_stamp_ns = counters.flush_started_stamp_ns.load(Ordering::Relaxed);
        let Some(stalled_ns) = tracker.look(started_stamp_ns, stamp_ns(epoch, Instant::now())) else {
            continue;
        };
        let stall = FlushStall { stalled_ms: stalled_ns / 1_000_000, data_folder: data_folder.clone() };
        counters.stalls.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            stalled_ms = stall.stalled_ms,
            flush_stall_abort_ms = bound_ms,
            data_folder = %stall.data_folder,
            "a sled flush has not returned for {} ms (bound flush_stall_abort_ms = {bound_ms} ms), store \
             at {}: the node aborts so that it restarts instead of hanging (docs/reliability.md, sled \
             flush hang)",
            stall.stalled_ms,
            stall.data_folder,
        );
        (watchdog.on_stall)(&stall);
    }
}

/// Decides, from the watchdog's periodic looks, when the flush in progress has stalled.
///
/// Only time between looks counts, and at most two look intervals per look: if the whole process
/// was paused (SIGSTOP, a suspended VM), the watchdog wakes late and that pause, which the flush
/// spent frozen too, is not held against the flush.
struct StallTracker {
    bound_ns: u64,
    credit_per_look_ns_max: u64,
    /// The start stamp of the flush being watched; 0 when none is.
    watched_stamp_ns: u64,
    credited_ns: u64,
    last_look_ns: u64,
    reported: bool,
}

impl StallTracker {
    fn new(bound_ms: u64, look_interval_ms: u64, now_ns: u64) -> StallTracker {
        StallTracker {
            bound_ns: bound_ms.saturating_mul(1_000_000),
            credit_per_look_ns_max: look_interval_ms.saturating_mul(2_000_000),
            watched_stamp_ns: 0,
            credited_ns: 0,
            last_look_ns: now_ns,
            reported: false,
        }
    }

    /// One look: `started_stamp_ns` is the flush in progress (0: none), `now_ns` the time of the
    /// look on the same scale. Returns how long the flush has stalled, once per stalled flush.
    fn look(&mut self, started_stamp_ns: u64, now_ns: u64) -> Option<u64> {
        let since_last_look_ns = now_ns.saturating_sub(self.last_look_ns).min(self.credit_per_look_ns_max);
        self.last_look_ns = now_ns;
        if started_stamp_ns == 0 {
            self.watched_stamp_ns = 0;
            return None;
        }
        if started_stamp_ns == self.watched_stamp_ns {
            self.credited_ns = self.credited_ns.saturating_add(since_last_look_ns);
        } else {
            // A new flush, started since the last look.
            self.watched_stamp_ns = started_stamp_ns;
            self.credited_ns = now_ns.saturating_sub(started_stamp_ns).min(since_last_look_ns);
            self.reported = false;
        }
        if self.reported || self.credited_ns < self.bound_ns {
            return None;
        }
        self.reported = true;
        Some(self.credited_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;
    use std::sync::Mutex;

    /// A watchdog whose stall action reports the stall on a channel instead of aborting.
    fn reporting_watchdog(stall_abort_ms: u64) -> (FlushWatchdog, Receiver<FlushStall>) {
        let (stalls_tx, stalls_rx) = channel();
        let stalls_tx = Mutex::new(stalls_tx);
        let on_stall: StallAction = Box::new(move |stall: &FlushStall| {
            let _ = stalls_tx.lock().unwrap().send(stall.clone());
        });
        (FlushWatchdog { stall_abort_ms, on_stall }, stalls_rx)
    }

    /// A flush whose first call blocks until the returned sender sends (or is dropped); later
    /// calls return at once, so that a failed assertion cannot hang the test in the final flush
    /// that dropping the flusher waits for.
    fn blocking_flush() -> (FlushFn, Sender<()>) {
        let (release_tx, release_rx) = channel::<()>();
        let mut first_call = true;
        let flush: FlushFn = Box::new(move || {
            if std::mem::take(&mut first_call) {
                let _ = release_rx.recv();
            }
            Ok(())
        });
        (flush, release_tx)
    }

    fn submit_and_wait(flusher: &Flusher) -> Receiver<io::Result<()>> {
        let (done_tx, done_rx) = channel();
        let callback: FlushCallback = Box::new(move |result| {
            let _ = done_tx.send(result);
        });
        assert!(flusher.submit(callback).is_ok(), "the flusher thread is running");
        done_rx
    }

    /// Goal: a flush that does not return within the bound runs the stall action once, naming
    /// the folder and a duration of at least the bound. Method: a stand-in flush blocks until
    /// released; the stall action reports on a channel.
    #[test]
    fn a_flush_blocked_past_the_bound_runs_the_stall_action_once() {
        let (watchdog, stalls) = reporting_watchdog(50);
        let (flush, release_first_flush) = blocking_flush();
        let flusher = Flusher::start(flush, watchdog, "/data/node-7/db".to_string()).unwrap();
        // Declared after `flusher`, so dropped before it if an assertion fails: the blocked flush
        // returns and dropping the flusher does not wait forever.
        let release = release_first_flush;
        let done = submit_and_wait(&flusher);

        let stall = stalls.recv_timeout(Duration::from_secs(20)).expect("the watchdog saw the stall");
        assert!(stall.stalled_ms >= 50, "{stall:?}");
        assert_eq!(stall.data_folder, "/data/node-7/db");
        let stats = flusher.stats();
        assert_eq!(stats.stalls, 1);
        assert!(stats.flush_in_progress_ns >= 50_000_000, "{stats:?}");
        assert!(done.try_recv().is_err(), "the writer is still waiting for the stalled flush");
        // Still stalled for several more bounds: reported once per flush, not once per look.
        assert!(stalls.recv_timeout(Duration::from_millis(300)).is_err());

        release.send(()).unwrap();
        assert!(done.recv_timeout(Duration::from_secs(20)).unwrap().is_ok());
        assert_eq!(flusher.stats().flush_in_progress_ns, 0);
        drop(flusher);
        assert!(stalls.try_recv().is_err());
    }

    /// Goal: flushes that return in time never run the stall action, however many there are and
    /// however long the flusher then sits idle. Method: 1 ms flushes back to back for several
    /// bounds, then an idle flusher for several bounds, with a reporting stall action.
    #[test]
    fn flushes_that_return_in_time_never_run_the_stall_action() {
        let bound_ms = 200;
        let (watchdog, stalls) = reporting_watchdog(bound_ms);
        let flush: FlushFn = Box::new(|| {
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        });
        let flusher = Flusher::start(flush, watchdog, "test".to_string()).unwrap();
        let busy_until = Instant::now() + Duration::from_millis(4 * bound_ms);
        while Instant::now() < busy_until {
            assert!(submit_and_wait(&flusher).recv().unwrap().is_ok());
        }
        std::thread::sleep(Duration::from_millis(4 * bound_ms));

        let stats = flusher.stats();
        assert!(stats.flushes >= 10, "{stats:?}");
        assert_eq!(stats.stalls, 0, "{stats:?}");
        assert_eq!(stats.flush_in_progress_ns, 0);
        drop(flusher);
        assert!(stalls.try_recv().is_err(), "no stall was reported");
    }

    /// Goal: the tracker counts only time the process ran, reports a stall once, and starts
    /// over for the next flush. Method: looks at made-up times (1 ms = 1_000_000).
    #[test]
    fn the_tracker_counts_looks_not_pauses_and_reports_each_stalled_flush_once() {
        let ms = 1_000_000;
        // Bound 100 ms, looks every 10 ms: a look counts for at most 20 ms.
        let mut tracker = StallTracker::new(100, 10, 1);
        assert_eq!(tracker.look(0, 10 * ms), None, "no flush running");
        // A flush starts at 15 ms; the process is then frozen for a minute.
        assert_eq!(tracker.look(15 * ms, 20 * ms), None);
        assert_eq!(tracker.look(15 * ms, 60_020 * ms), None, "the pause counts for 20 ms only");
        let mut now_ms = 60_020;
        let mut reported = Vec::new();
        for _ in 0..20 {
            now_ms += 10;
            reported.extend(tracker.look(15 * ms, now_ms * ms));
        }
        assert_eq!(reported, vec![5 * ms + 20 * ms + 80 * ms], "once, when the running time passed 100 ms");
        // The next flush starts over; one that returns resets the watch.
        now_ms += 10;
        assert_eq!(tracker.look(now_ms * ms - 3 * ms, now_ms * ms), None);
        now_ms += 10;
        assert_eq!(tracker.look(0, now_ms * ms), None);
        for _ in 0..9 {
            now_ms += 10;
            assert_eq!(tracker.look((now_ms - 5) * ms, now_ms * ms), None, "a new flush each look");
        }
    }

    const ABORT_CHILD_ENV: &str = "TALLY_STORE_FLUSH_ABORT_CHILD";
    const ABORT_TEST_NAME: &str = "flusher::tests::the_production_stall_action_aborts_the_process";

    /// Goal: the production watchdog ends the process with SIGABRT when a flush stalls. Method:
    /// the test runs itself again as a child process (marked by an environment variable) whose
    /// flush never returns, and checks how the child ended.
    #[cfg(unix)]
    #[test]
    fn the_production_stall_action_aborts_the_process() {
        use std::os::unix::process::ExitStatusExt;

        if std::env::var_os(ABORT_CHILD_ENV).is_some() {
            let (flush, _release) = blocking_flush();
            let flusher = Flusher::start(flush, FlushWatchdog::aborting(50), "child".to_string()).unwrap();
            let _done = submit_and_wait(&flusher);
            std::thread::sleep(Duration::from_secs(30));
            // Still alive: the parent sees a normal exit and fails.
            std::process::exit(0);
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([ABORT_TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(ABORT_CHILD_ENV, "1")
            .output()
            .unwrap();
        const SIGABRT: i32 = 6;
        assert_eq!(
            output.status.signal(),
            Some(SIGABRT),
            "{:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
