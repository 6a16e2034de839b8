//! [`LogEngine`]: the node's one raft-engine instance, holding the Raft log and vote of every
//! group, and the writer thread that gives it group commit.
//!
//! Every write to the engine (appends, votes, `committed`, truncation marks, purges, dropped
//! groups) goes through one writer thread, in the order it was submitted. The thread takes one
//! request, drains everything else pending, merges it into one raft-engine `LogBatch` and writes
//! it with a single `fdatasync` when any request of the round asked for one. So one sync covers
//! the appends of every group that arrived meanwhile, and a write that asked for durability is
//! reported done only after the sync that covered it returned. raft-engine's log files are
//! written sequentially, so a synced write also makes every earlier write durable (its recovery
//! keeps a prefix and tolerates a torn tail).
//!
//! Why one thread rather than raft-engine's own write queue from many threads: `Engine::write`
//! blocks, and the callers are openraft tasks on the tokio runtime; a thread per waiting group
//! would cost more than merging the batches here.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft_engine::env::FileSystem;
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};

use crate::log_entry_message::LogEntry;
use crate::StoreError;

/// raft-engine's view of an entry message: its index.
pub(crate) struct LogEntries;

impl MessageExt for LogEntries {
    type Entry = LogEntry;

    fn index(entry: &LogEntry) -> u64 {
        entry.index
    }
}

/// What the store uses of a raft-engine `Engine`, object-safe so that the engine's file system
/// is chosen at open (the real one, or [`crate::PowerCutFileSystem`] in power-loss tests).
pub(crate) trait RaftLogFiles: Send + Sync {
    fn write(&self, batch: &mut LogBatch, sync: bool) -> raft_engine::Result<usize>;
    fn sync(&self) -> raft_engine::Result<()>;
    fn get(&self, region: u64, key: &[u8]) -> Option<Vec<u8>>;
    fn first_index(&self, region: u64) -> Option<u64>;
    fn last_index(&self, region: u64) -> Option<u64>;
    /// Entries `[begin, end)` of `region`, appended to `out`.
    fn fetch_entries(
        &self,
        region: u64,
        begin: u64,
        end: u64,
        out: &mut Vec<LogEntry>,
    ) -> raft_engine::Result<usize>;
    fn raft_groups(&self) -> Vec<u64>;
    fn purge_expired_files(&self) -> raft_engine::Result<Vec<u64>>;
    fn used_size_bytes(&self) -> usize;
}

impl<F: FileSystem + 'static> RaftLogFiles for Engine<F> {
    fn write(&self, batch: &mut LogBatch, sync: bool) -> raft_engine::Result<usize> {
        Engine::write(self, batch, sync)
    }

    fn sync(&self) -> raft_engine::Result<()> {
        Engine::sync(self)
    }

    fn get(&self, region: u64, key: &[u8]) -> Option<Vec<u8>> {
        Engine::get(self, region, key)
    }

    fn first_index(&self, region: u64) -> Option<u64> {
        Engine::first_index(self, region)
    }

    fn last_index(&self, region: u64) -> Option<u64> {
        Engine::last_index(self, region)
    }

    fn fetch_entries(
        &self,
        region: u64,
        begin: u64,
        end: u64,
        out: &mut Vec<LogEntry>,
    ) -> raft_engine::Result<usize> {
        self.fetch_entries_to::<LogEntries>(region, begin, end, None, out)
    }

    fn raft_groups(&self) -> Vec<u64> {
        Engine::raft_groups(self)
    }

    fn purge_expired_files(&self) -> raft_engine::Result<Vec<u64>> {
        Engine::purge_expired_files(self)
    }

    fn used_size_bytes(&self) -> usize {
        self.get_used_size()
    }
}

/// What a writer is told once its batch is written (and synced, if it asked): called once, on
/// the writer thread, so it must be quick and must not block.
pub(crate) type WriteDone = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

struct WriteRequest {
    batch: LogBatch,
    sync: bool,
    done: Option<WriteDone>,
}

/// How often an idle writer asks raft-engine to purge log files that hold only compacted
/// entries (the purge is cheap when there is nothing to do).
const PURGE_INTERVAL_MS: u64 = 10_000;

/// raft-engine's file size: small enough that purged logs free space soon on a small node.
const TARGET_FILE_SIZE_BYTES: u64 = 32 * 1024 * 1024;

/// Counters of the writer thread, for the node's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogWriteStats {
    /// Merged writes made to raft-engine.
    pub writes: u64,
    /// Of those, the writes followed by an fdatasync.
    pub syncs: u64,
    /// Write requests served (`requests / writes` is the group-commit factor).
    pub requests: u64,
    /// Time spent inside raft-engine's write (sync included), summed, in nanoseconds.
    pub write_time_ns: u64,
    /// Bytes written to raft-engine's files, summed.
    pub written_bytes: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    syncs: AtomicU64,
    requests: AtomicU64,
    write_time_ns: AtomicU64,
    written_bytes: AtomicU64,
}

/// The node's raft-engine and its writer thread. The thread stops, after finishing what was
/// submitted, when the engine is dropped.
pub(crate) struct LogEngine {
    engine: Arc<dyn RaftLogFiles>,
    queue: Mutex<Option<Sender<WriteRequest>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl LogEngine {
    /// Opens (or creates) the engine in `folder`. A torn last write (a crash in the middle of
    /// it) is cut off; any other damage refuses the open.
    pub(crate) fn open(folder: &Path) -> Result<LogEngine, StoreError> {
        let engine = Engine::open(Self::config(folder)?).map_err(|error| damaged(folder, error))?;
        Self::start(Arc::new(engine))
    }

    /// [`LogEngine::open`] on another file system (for power-loss tests).
    pub(crate) fn open_on<F: FileSystem + 'static>(
        folder: &Path,
        file_system: Arc<F>,
    ) -> Result<LogEngine, StoreError> {
        let engine = Engine::open_with_file_system(Self::config(folder)?, file_system)
            .map_err(|error| damaged(folder, error))?;
        Self::start(Arc::new(engine))
    }

    fn config(folder: &Path) -> Result<Config, StoreError> {
        std::fs::create_dir_all(folder).map_err(StoreError::Io)?;
        Ok(Config {
            dir: folder.display().to_string(),
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            // Entries are packed batches of small commands; lz4 would cost CPU on every append
            // for little gain on a local disk.
            batch_compression_threshold: ReadableSize(0),
            target_file_size: ReadableSize(TARGET_FILE_SIZE_BYTES),
            ..Config::default()
        })
    }

    fn start(engine: Arc<dyn RaftLogFiles>) -> Result<LogEngine, StoreError> {
        let (queue, receiver) = channel();
        let counters = Arc::new(Counters::default());
        let thread = std::thread::Builder::new()
            .name("tally-log-writer".into())
            .spawn({
                let engine = engine.clone();
                let counters = counters.clone();
                move || write_loop(engine.as_ref(), &receiver, &counters)
            })
            .map_err(StoreError::Io)?;
        Ok(LogEngine { engine, queue: Mutex::new(Some(queue)), thread: Mutex::new(Some(thread)), counters })
    }

    pub(crate) fn engine(&self) -> &dyn RaftLogFiles {
        self.engine.as_ref()
    }

    /// Queues `batch`; `done` runs once it is written (and synced when `sync`). Writes happen in
    /// submission order. Fails when the writer has stopped (then `done` is not called).
    pub(crate) fn submit(
        &self,
        batch: LogBatch,
        sync: bool,
        done: Option<WriteDone>,
    ) -> Result<(), StoreError> {
        let queue = self.queue.lock().expect("log writer queue lock poisoned");
        let Some(queue) = queue.as_ref() else { return Err(StoreError::FlusherStopped) };
        queue.send(WriteRequest { batch, sync, done }).map_err(|_| StoreError::FlusherStopped)
    }

    /// Writes `batch` and waits until it is durable (for votes: rare, and the caller must not
    /// go on before the sync).
    pub(crate) async fn write_durably(&self, batch: LogBatch) -> Result<(), StoreError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.submit_synced(batch, move |result| {
            let _ = sender.send(result);
        })?;
        receiver.await.map_err(|_| StoreError::FlusherStopped)?.map_err(StoreError::Flush)
    }

    /// Writes `batch` durably from a plain thread (for tests and tools).
    pub(crate) fn write_durably_blocking(&self, batch: LogBatch) -> Result<(), StoreError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        self.submit_synced(batch, move |result| {
            let _ = sender.send(result);
        })?;
        receiver.recv().map_err(|_| StoreError::FlusherStopped)?.map_err(StoreError::Flush)
    }

    fn submit_synced(
        &self,
        batch: LogBatch,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(batch, true, Some(Box::new(done)))
    }

    /// Forgets every entry and value of `group_id` (not synced: a crash may bring the group
    /// back, which is harmless for a replica that no longer belongs to it).
    pub(crate) fn drop_group(&self, group_id: u32) -> Result<bool, StoreError> {
        let existed = self.engine.raft_groups().contains(&u64::from(group_id));
        let mut batch = LogBatch::default();
        batch.add_command(u64::from(group_id), Command::Clean);
        self.write_durably_blocking(batch)?;
        Ok(existed)
    }

    pub(crate) fn stats(&self) -> LogWriteStats {
        let counters = &self.counters;
        LogWriteStats {
            writes: counters.writes.load(Ordering::Relaxed),
            syncs: counters.syncs.load(Ordering::Relaxed),
            requests: counters.requests.load(Ordering::Relaxed),
            write_time_ns: counters.write_time_ns.load(Ordering::Relaxed),
            written_bytes: counters.written_bytes.load(Ordering::Relaxed),
        }
    }

    /// Bytes of raft-engine's files.
    pub(crate) fn size_on_disk_bytes(&self) -> u64 {
        self.engine.used_size_bytes() as u64
    }
}

impl Drop for LogEngine {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what was submitted.
        self.queue.lock().expect("log writer queue lock poisoned").take();
        if let Some(thread) = self.thread.lock().expect("log writer thread lock poisoned").take() {
            let _ = thread.join();
        }
    }
}

fn damaged(folder: &Path, error: raft_engine::Error) -> StoreError {
    StoreError::Damaged {
        path: folder.display().to_string(),
        detail: format!("raft-engine could not open the Raft log: {error}"),
    }
}

fn write_loop(engine: &dyn RaftLogFiles, receiver: &Receiver<WriteRequest>, counters: &Counters) {
    let mut last_purge = Instant::now();
    loop {
        let first = match receiver.recv_timeout(Duration::from_millis(PURGE_INTERVAL_MS)) {
            Ok(request) => request,
            Err(RecvTimeoutError::Timeout) => {
                purge_files(engine);
                last_purge = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut round = vec![first];
        while let Ok(request) = receiver.try_recv() {
            round.push(request);
        }
        write_round(engine, round, counters);
        if last_purge.elapsed() >= Duration::from_millis(PURGE_INTERVAL_MS) {
            purge_files(engine);
            last_purge = Instant::now();
        }
    }
}

/// Writes one round of requests as few merged batches as raft-engine accepts (a batch holds
/// up to 2 GiB), with one sync if any asked for it, then tells every writer.
fn write_round(engine: &dyn RaftLogFiles, round: Vec<WriteRequest>, counters: &Counters) {
    let sync = round.iter().any(|request| request.sync);
    let mut merged = LogBatch::default();
    let mut dones = Vec::with_capacity(round.len());
    let mut result: io::Result<()> = Ok(());
    counters.requests.fetch_add(round.len() as u64, Ordering::Relaxed);
    for mut request in round {
        if result.is_ok() && merged.merge(&mut request.batch).is_err() {
            // Full: write what was merged so far, then start again with this batch.
            result = write_counted(engine, &mut merged, false, counters);
            if result.is_ok() {
                result =
                    merged.merge(&mut request.batch).map_err(|error| io::Error::other(error.to_string()));
            }
        }
        dones.extend(request.done);
    }
    if result.is_ok() {
        result = write_counted(engine, &mut merged, sync, counters);
    }
    for done in dones {
        done(match &result {
            Ok(()) => Ok(()),
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
        });
    }
}

fn write_counted(
    engine: &dyn RaftLogFiles,
    batch: &mut LogBatch,
    sync: bool,
    counters: &Counters,
) -> io::Result<()> {
    if batch.is_empty() && !sync {
        return Ok(());
    }
    let started = Instant::now();
    let written = if batch.is_empty() { engine.sync().map(|()| 0) } else { engine.write(batch, sync) };
    counters.write_time_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    counters.writes.fetch_add(1, Ordering::Relaxed);
    if sync {
        counters.syncs.fetch_add(1, Ordering::Relaxed);
    }
    match written {
        Ok(bytes) => {
            counters.written_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "raft-engine write failed");
            Err(io::Error::other(format!("raft-engine write: {error}")))
        }
    }
}

fn purge_files(engine: &dyn RaftLogFiles) {
    if let Err(error) = engine.purge_expired_files() {
        tracing::warn!(%error, "raft-engine could not purge old log files");
    }
}
