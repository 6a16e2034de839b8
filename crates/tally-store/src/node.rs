//! [`NodeStore`]: the node's one sled `Db`, its flusher, and the per-group trees.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::flush_mark::{self, FlushMark, FlushRecords};
use crate::flusher::{FlushCallback, FlushStats, FlushWatchdog, Flusher, SledFiles};
use crate::log_engine::{LogEngine, LogWriteStats};
use crate::value_log::{PointerCensus, ValueLog, VALUE_LOG_FOLDER};
use crate::{LogStore, PowerCutFileSystem, StateTree, StoreConfig, StoreError};

/// The storage of one node: a single sled `Db` shared by every Raft group the node hosts, plus
/// the flusher thread that makes writes durable with group commit.
///
/// One `Db` for everything is deliberate: sled flushes the whole pagecache at once (so one fsync
/// covers every group), and sled recovers a *prefix* of the writes made to one `Db`, so a write
/// that reached disk implies that every earlier write to any tree did too. The Raft log and the
/// state machine rely on that ordering (see `LogStore` and `StateTree`).
///
/// Cheap to clone (an `Arc`). The flusher thread stops, after one last flush, when the last
/// handle is dropped (`LogStore`s hold a handle, `StateTree`s do not); that drop blocks until the
/// thread has finished. The same path can then be reopened right away: sled may keep its file
/// lock a moment longer, and an open waits for it (see [`LOCK_WAIT_MS`]).
#[derive(Clone)]
pub struct NodeStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    flusher: Flusher,
    /// Every group's Raft log and vote.
    log_engine: Arc<LogEngine>,
    /// Large state-tree values, beside sled (see `value_log.rs`).
    values: Arc<ValueLog>,
    /// The folder of a temporary store's raft-engine and value log, removed when the store is
    /// dropped.
    _temporary_folder: Option<tempfile::TempDir>,
}

impl NodeStore {
    /// Opens (or creates) the node's one sled Db at `path` and starts the flusher thread, with
    /// the default [`StoreConfig`].
    pub fn open(path: &Path) -> Result<NodeStore, StoreError> {
        Self::open_with(path, &StoreConfig::default())
    }

    /// Opens (or creates) the node's one sled Db at `path` and starts the flusher thread and its
    /// watchdog as `config` says.
    ///
    /// Every stored value's framing (version byte and crc32) is checked before the store is
    /// returned, so that a damaged database refuses the start ([`StoreError::Damaged`]) instead
    /// of failing a group later, or serving a value that differs from its peers'.
    pub fn open_with(path: &Path, config: &StoreConfig) -> Result<NodeStore, StoreError> {
        config.validate().map_err(StoreError::InvalidArgument)?;
        let damaged = |detail: String| StoreError::Damaged { path: path.display().to_string(), detail };
        // Inside sled's folder (sled only reads its own `conf`, `db`, `snap.*` and `blobs`), so
        // that the checkpoints and the Raft logs are copied, moved and deleted together.
        let log_folder = path.join(RAFT_LOG_FOLDER);
        // sled panics on some damaged files instead of returning an error, in its open and
        // while the checks read every tree ("cannot find pid N in view_for_key" on a flipped
        // byte in `db`, seen in CI); catch it, so that the node still exits with a message that
        // names the folder.
        let sled_config = sled::Config::new().path(path);
        let opened = without_sled_panics(|| {
            let data_folder = path.display().to_string();
            Self::from_config(
                sled_config,
                LogFolder::At(log_folder.clone()),
                Some(path),
                config,
                &data_folder,
            )
        })
        .unwrap_or_else(|reason| Err(damaged(format!("sled could not open it: {reason}"))));
        let store = opened.map_err(|error| match error {
            StoreError::Sled(error) if is_lock_error(&error) => {
                StoreError::Locked { path: path.display().to_string() }
            }
            // A damaged `conf` file reads as an unsupported (older) format.
            StoreError::Sled(error @ (sled::Error::Corruption { .. } | sled::Error::Unsupported(_))) => {
                damaged(format!("sled: {error}"))
            }
            StoreError::Sled(sled::Error::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                damaged(format!("sled: {io}"))
            }
            StoreError::Corrupt { what } => damaged(what),
            other => other,
        })?;
        Ok(store)
    }

    /// Opens like [`NodeStore::open`] without checking the stored values first: for tools and
    /// tests that look into a damaged database (reads still check each value they decode).
    pub fn open_unverified(path: &Path) -> Result<NodeStore, StoreError> {
        let config = StoreConfig::default();
        // No flush mark: a look into a damaged database must not count its flushes on from a
        // sequence number that sled lost (the next checked open would no longer see the loss).
        Self::from_config(
            sled::Config::new().path(path),
            LogFolder::At(path.join(RAFT_LOG_FOLDER)),
            None,
            &config,
            &path.display().to_string(),
        )
    }

    /// [`NodeStore::open`] with the Raft log on `file_system`, which remembers what each sync
    /// made durable: for power-loss tests (see [`PowerCutFileSystem::cut_power`]).
    pub fn open_on_power_cut(
        path: &Path,
        file_system: Arc<PowerCutFileSystem>,
    ) -> Result<NodeStore, StoreError> {
        let data_folder = path.display().to_string();
        let log_folder = LogFolder::AtOn(path.join(RAFT_LOG_FOLDER), file_system);
        Self::from_config(
            sled::Config::new().path(path),
            log_folder,
            Some(path),
            &StoreConfig::default(),
            &data_folder,
        )
    }

    /// A temporary Db for tests (sled `Config::temporary(true)`): removed when dropped.
    pub fn temporary() -> Result<NodeStore, StoreError> {
        let config = StoreConfig::default();
        Self::from_config(
            sled::Config::new().temporary(true),
            LogFolder::Temporary,
            None,
            &config,
            "(a temporary database)",
        )
    }

    fn from_config(
        sled_config: sled::Config,
        log_folder: LogFolder,
        checked_with_mark: Option<&Path>,
        config: &StoreConfig,
        data_folder: &str,
    ) -> Result<NodeStore, StoreError> {
        // sled's own background flusher is off (`flush_every_ms(None)`; 500 ms by default), so
        // that only our flusher thread flushes: in the one hang seen (docs/reliability.md) it was
        // queued on the lock our stuck flush held, and concurrent flushes are what sled's open
        // hang reports share. Nothing needs its periodic flush: acknowledged appends and votes go
        // through our flusher; every other write is covered by a later flush (sled recovers a
        // prefix) or by the Raft log after a crash; a clean shutdown flushes in our flusher's
        // last round and again when sled drops its last tree handle. Its other duty, cleaning
        // fragmented segments, also runs on every page replace (`PageCache::replace` rewrites
        // one page to clean per write), so space is still reclaimed under writes.
        let sled_config = sled_config.flush_every_ms(None).cache_capacity(config.sled_cache_bytes);
        let db = open_waiting_for_the_lock(&sled_config)?;
        // The checks run before the flusher and the mark start, so that a refused database is
        // not written to (the flusher's last flush would store one more sequence number).
        let mut census = None;
        let mark = match &checked_with_mark {
            None => None,
            Some(folder) => {
                let records = FlushRecords {
                    in_database: flush_mark::sequence_in_database(&db)?,
                    in_mark_file: FlushMark::read(folder)?,
                };
                flush_mark::check(records, &folder.join(flush_mark::MARK_FILE_NAME))
                    .map_err(|detail| StoreError::Damaged { path: data_folder.to_string(), detail })?;
                census = Some(check_values(&db)?);
                if let Some(old) = db.tree_names().iter().find(|name| name.ends_with(b"/raft")) {
                    return Err(StoreError::Damaged {
                        path: data_folder.to_string(),
                        detail: format!(
                            "it holds a Raft log in sled (tree {}), written by an older Tally; this version \
                             keeps Raft logs in raft-engine and cannot read it: start from an empty folder",
                            String::from_utf8_lossy(old)
                        ),
                    });
                }
                let last_sequence = records.in_database.max(records.in_mark_file.unwrap_or(0));
                Some(FlushMark::start(folder, last_sequence)?)
            }
        };
        let watchdog = FlushWatchdog::aborting(config.flush_stall_abort_ms);
        let (log_engine, temporary_folder) = match log_folder {
            LogFolder::At(folder) => (LogEngine::open(&folder)?, None),
            LogFolder::AtOn(folder, file_system) => (LogEngine::open_on(&folder, file_system)?, None),
            LogFolder::Temporary => {
                let folder = tempfile::tempdir().map_err(StoreError::Io)?;
                (LogEngine::open(folder.path())?, Some(folder))
            }
        };
        let log_engine = Arc::new(log_engine);
        let value_folder = match &temporary_folder {
            Some(folder) => folder.path().join(VALUE_LOG_FOLDER),
            None => sled_config.path.join(VALUE_LOG_FOLDER),
        };
        let census = match census {
            Some(census) => census,
            None => PointerCensus::of_db(&db)?,
        };
        let values = Arc::new(ValueLog::open_counted(&value_folder, census)?);
        let sled_files = (!sled_config.temporary).then(|| SledFiles::new(&sled_config.path));
        let flusher = Flusher::start_for_db(
            db.clone(),
            mark,
            sled_files,
            values.clone(),
            watchdog,
            data_folder.to_string(),
        )
        .map_err(StoreError::Io)?;
        Ok(NodeStore {
            inner: Arc::new(Inner { db, flusher, log_engine, values, _temporary_folder: temporary_folder }),
        })
    }

    /// The Raft log + vote storage of group `group_id` (region `group_id` of the node's
    /// raft-engine). It purges whenever openraft asks; see [`LogStore::with_purge_floor`].
    pub fn log_store<C: openraft::RaftTypeConfig>(&self, group_id: u32) -> Result<LogStore<C>, StoreError>
    where
        C::Entry: Clone,
    {
        LogStore::open(group_id, self.inner.log_engine.clone())
    }

    /// The state-machine tree of group `group_id` (tree `"g{group_id:05}/sm"`).
    pub fn state_tree(&self, group_id: u32) -> Result<StateTree, StoreError> {
        let tree = self.inner.db.open_tree(sm_tree_name(group_id))?;
        Ok(StateTree::new(tree, self.inner.values.clone()))
    }

    /// Deletes both trees of group `group_id` (after the replica was removed from the group and
    /// its Raft instance has shut down; handles still open on those trees must not be used).
    /// Returns whether anything existed. Not flushed: a crash may bring the trees back, which is
    /// harmless for a replica that no longer belongs to the group.
    pub fn drop_group(&self, group_id: u32) -> Result<bool, StoreError> {
        let raft = self.inner.log_engine.drop_group(group_id)?;
        let name = sm_tree_name(group_id);
        let pointed_files = match self.inner.db.tree_names().iter().any(|stored| stored == name.as_bytes()) {
            true => self.inner.values.pointed_files(&self.inner.db.open_tree(&name)?)?,
            false => Vec::new(),
        };
        let sm = self.inner.db.drop_tree(name)?;
        self.inner.values.release_all(pointed_files);
        Ok(raft || sm)
    }

    /// Groups that have trees in this Db (their replicas were hosted here and not dropped).
    pub fn stored_groups(&self) -> Vec<u32> {
        let mut groups: Vec<u32> = self
            .inner
            .db
            .tree_names()
            .iter()
            .filter_map(|name| std::str::from_utf8(name).ok())
            .filter_map(|name| name.strip_prefix('g')?.split_once('/')?.0.parse().ok())
            .chain(
                self.inner
                    .log_engine
                    .engine()
                    .raft_groups()
                    .into_iter()
                    .filter_map(|id| u32::try_from(id).ok()),
            )
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// Waits until everything written so far is durable (goes through the flusher).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_flush(Box::new(move |result| {
            // The waiter may have been cancelled; nothing to do then.
            let _ = tx.send(result);
        }))
        .map_err(|_| StoreError::FlusherStopped)?;
        rx.await.map_err(|_| StoreError::FlusherStopped)?.map_err(StoreError::Flush)
    }

    /// Total size on disk: sled's as it reports it, plus raft-engine's files.
    pub fn size_on_disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?
            + self.inner.log_engine.size_on_disk_bytes()
            + self.inner.values.size_on_disk_bytes())
    }

    /// Counters of the Raft log writer (group-commit factor = requests / syncs).
    pub fn log_write_stats(&self) -> LogWriteStats {
        self.inner.log_engine.stats()
    }

    /// Flush and request counters of the flusher (group-commit factor = requests / flushes).
    pub fn flush_stats(&self) -> FlushStats {
        self.inner.flusher.stats()
    }

    /// Hands `callback` to the flusher; gives it back if the flusher is gone.
    pub(crate) fn submit_flush(&self, callback: FlushCallback) -> Result<(), FlushCallback> {
        self.inner.flusher.submit(callback)
    }
}

impl fmt::Debug for NodeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeStore").field("flush_stats", &self.flush_stats()).finish_non_exhaustive()
    }
}

/// sled's data file in its folder, the one it locks (`flock`, exclusive) while open.
const SLED_DB_FILE: &str = "db";

/// How long an open waits for sled's file lock before it answers [`StoreError::Locked`]. The
/// lock can outlive a store closed in this process by a moment (see
/// [`wait_until_sled_unlocked`]); another process that has the folder open keeps it for good,
/// and is reported after this wait.
pub const LOCK_WAIT_MS: u64 = 2_000;

/// sled 0.34 reports its file lock as an `Other` error wrapping the WouldBlock.
fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock"))
}

/// Reads every tree of `db` whole (so that sled meets every page now, not later while
/// serving), checks the framing of every value of every group's Raft tree (the log decodes what
/// it reads; the state-machine trees are decoded whole when their group starts, statement lines
/// excepted, which are checked when read), and checks that each log has no hole. Every failure,
/// sled's errors included, is `Corrupt`. Counts the value log's pointers on the way (the value
/// log checks them against its files), so that opening reads every tree once, not twice.
fn check_values(db: &sled::Db) -> Result<PointerCensus, StoreError> {
    let sled_error = |error: sled::Error| StoreError::Corrupt { what: format!("sled: {error}") };
    let mut census = PointerCensus::default();
    for name in db.tree_names() {
        let tree_name = String::from_utf8_lossy(&name).to_string();
        for item in db.open_tree(&name).map_err(sled_error)?.iter() {
            let (key, value) = item
                .map_err(|error| StoreError::Corrupt { what: format!("tree {tree_name}: sled: {error}") })?;
            census.note(&name, &key, &value);
        }
    }
    Ok(census)
}

/// Runs `work`, turning a panic inside it into the panic's message. sled 0.34 panics on some
/// damaged files instead of returning an error; the node must exit with a message that names its
/// folder instead. The default panic hook still prints the panic (with its location) first.
fn without_sled_panics<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_else(|| "sled panicked".to_string())
    })
}

/// Opens `sled_config`, waiting up to [`LOCK_WAIT_MS`] while its folder is locked.
fn open_waiting_for_the_lock(sled_config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOCK_WAIT_MS);
    loop {
        match sled_config.open() {
            Err(error) if is_lock_error(&error) && std::time::Instant::now() < deadline => {
                let remaining = deadline.saturating_duration_since(std::time::Instant::now());
                // Another open may take the lock between the probe and ours: then loop again.
                wait_until_sled_unlocked(&sled_config.path, remaining.as_millis() as u64);
            }
            result => return result,
        }
    }
}

/// Waits until nothing holds sled's file lock on the database in `folder`, for at most
/// `timeout_ms`; returns whether the lock is free (also when there is no database file).
///
/// Why it is needed: dropping the last `Db` handle does not release the lock at once. sled's
/// file (and its lock) is shared with its thread pool's background jobs (writes of sealed
/// buffers, segment truncations), which hold it until they end, after the handle is gone. A
/// reopen in that window would be refused as `StoreError::Locked` although the database was
/// closed cleanly. [`NodeStore`]'s opens wait with this; a tool that opens the folder with sled
/// directly, right after a store was closed, calls it first. Probing with our own lock, taken and let
/// go, is the one way to see the release: `flock` locks conflict between two opens of a file
/// within one process as between processes.
pub fn wait_until_sled_unlocked(folder: &Path, timeout_ms: u64) -> bool {
    use fs2::FileExt;
    let db_file = folder.join(SLED_DB_FILE);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    loop {
        // No file (the folder was deleted first): there is no lock to wait for.
        let Ok(file) = std::fs::File::open(&db_file) else { return true };
        if file.try_lock_exclusive().is_ok() {
            // Closing the file (at the end of this scope) releases the probe's lock.
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The folder of the node's raft-engine (every group's Raft log and vote), inside sled's folder.
pub const RAFT_LOG_FOLDER: &str = "raft-log";

/// Where a store keeps its raft-engine.
enum LogFolder {
    At(PathBuf),
    /// On a power-cut simulation (see [`PowerCutFileSystem`]).
    AtOn(PathBuf, Arc<PowerCutFileSystem>),
    /// A temporary folder removed with the store.
    Temporary,
}

fn sm_tree_name(group_id: u32) -> String {
    format!("g{group_id:05}/sm")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The names of this process's threads (Linux truncates them to 15 bytes).
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    /// Goal: an open store runs our flusher and its watchdog and not sled's background flusher
    /// (named "log flusher" by sled 0.34), so that only one thread flushes. Method: list the
    /// process's threads while a store is open (no test in this binary opens sled directly).
    #[test]
    fn only_our_flusher_flushes() {
        let store = NodeStore::temporary().unwrap();
        let names = thread_names();
        assert!(!names.iter().any(|name| name == "log flusher"), "{names:?}");
        let ours = names.iter().filter(|name| name.starts_with("tally-store-flu")).count();
        assert!(ours >= 2, "the flusher and its watchdog run: {names:?}");
        drop(store);
    }
}
