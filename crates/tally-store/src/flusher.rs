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

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a writer hands to the flusher: called once, on the flusher thread, with the result of a
/// `flush()` that started after the writer's data was applied. It must be quick and must not
/// block (it runs inside the group-commit loop).
pub(crate) type FlushCallback = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// How many requests may wait for the flusher before writers block in `submit`. Far above what
/// the node can have in flight (one append or vote per group at a time, plus explicit flushes),
/// so in practice it only bounds memory if the disk stalls.
pub(crate) const FLUSH_QUEUE_CAPACITY: usize = 16_384;

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
}

#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    requests: AtomicU64,
    flush_time_ns: AtomicU64,
}

/// Owns the flusher thread. Dropping it closes the channel, lets the thread finish what is
/// queued (plus one final flush) and joins it.
pub(crate) struct Flusher {
    tx: Option<SyncSender<FlushCallback>>,
    handle: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Flusher {
    pub(crate) fn start(db: sled::Db) -> io::Result<Flusher> {
        let (tx, rx) = sync_channel::<FlushCallback>(FLUSH_QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name("tally-store-flusher".to_string())
            .spawn(move || run(db, rx, &thread_counters))?;
        Ok(Flusher { tx: Some(tx), handle: Some(handle), counters })
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
        FlushStats {
            flushes: self.counters.flushes.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            flush_time_ns: self.counters.flush_time_ns.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the queued requests are served.
        drop(self.tx.take());
        if let Some(handle) = self.handle.take() {
            // Joining makes the flusher's `Db` handle go away before `drop` returns, so the same
            // path can be reopened right after the last `NodeStore` handle is dropped. Never join
            // from the flusher thread itself (a callback could own the last handle).
            if handle.thread().id() != std::thread::current().id() && handle.join().is_err() {
                tracing::error!("the flusher thread panicked");
            }
        }
    }
}

fn run(db: sled::Db, rx: Receiver<FlushCallback>, counters: &Counters) {
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
        let started = std::time::Instant::now();
        let result = db.flush().map(|_| ()).map_err(io::Error::from);
        let elapsed_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.flush_time_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
        counters.flushes.fetch_add(1, Ordering::Relaxed);
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
    // openraft recovers them from the flushed log instead.
    if let Err(e) = db.flush() {
        tracing::error!(error = %e, "final sled flush at shutdown failed");
    }
}
