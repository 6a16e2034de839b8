//! The flush mark: a record, outside sled, of the last flush that sled completed.
//!
//! Why: sled recovers a *prefix* of the writes made to a `Db`, and it cannot tell a torn tail
//! (a crash in the middle of a write that nobody was told about) from damage to data it had
//! made durable: a truncated file, a flipped byte in the middle of its log, a folder restored
//! from an old copy. In every case it opens without complaint, holding fewer writes. For a Raft
//! node that is dangerous: entries it acknowledged (so that the leader counted it toward a
//! majority) are gone, and if it then helps elect a leader that lacks them, committed writes
//! are lost. The flusher's `db.flush()` is the moment writes become durable, so that is where
//! the mark counts.
//!
//! How: before each flush the flusher inserts the flush's sequence number into sled (key
//! [`FLUSH_SEQUENCE_KEY`] of the default tree) and, once the flush has returned, writes the
//! same number to the mark file. sled recovers a prefix, so if it comes back holding sequence
//! `s` it holds every write applied before flush `s` began. The mark file says `m` flushes
//! completed; `s < m` means sled lost writes it had made durable, and the open is refused.
//!
//! What it costs: one small sled insert and one `pwrite` of 16 bytes per flush, on the flusher
//! thread, with no fsync of its own in the common case: the file is synced at most every
//! [`MARK_SYNC_INTERVAL_MS`] (and when the store closes). A `kill -9` loses nothing written
//! with `pwrite` (the page cache survives the process). A power loss can lose the marks of the
//! last interval, so damage that hits exactly those flushes' writes goes unnoticed; see
//! docs/reliability.md. Writes applied between the insert of the sequence number and the start
//! of the flush are durable but only covered by the next mark.
//!
//! Layout: two 16-byte slots, `[sequence u64 big-endian][crc32 of those 8 bytes, big-endian]
//! [4 zero bytes]`; sequence `n` goes to slot `n % 2`, so that a write torn by a power loss
//! leaves the other slot's (older, still true) mark readable. The larger valid slot is the mark.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{files, StoreError};

/// The key of the flush sequence number in sled's default tree.
pub(crate) const FLUSH_SEQUENCE_KEY: &[u8] = b"tally/flush-sequence";

/// The name of the mark file in the database folder.
pub(crate) const MARK_FILE_NAME: &str = "tally-flush-mark";

/// The longest time a written mark waits for its fsync (see the module docs).
pub const MARK_SYNC_INTERVAL_MS: u64 = 200;

const SLOT_SIZE_BYTES: u64 = 16;

/// The mark file of one database, open for writing.
pub(crate) struct FlushMark {
    file: File,
    path: PathBuf,
    /// The last sequence number recorded (or found at open); the next flush stores one more.
    last_sequence: u64,
    last_synced: Instant,
    unsynced: bool,
}

/// What the database folder says about flushes, read at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushRecords {
    /// The sequence number sled recovered (0 when it holds none: a new or pre-mark database).
    pub(crate) in_database: u64,
    /// The mark file's sequence number; `None` when there is no file.
    pub(crate) in_mark_file: Option<u64>,
}

/// Reads the sequence number stored in sled.
pub(crate) fn sequence_in_database(db: &sled::Db) -> Result<u64, StoreError> {
    match db.get(FLUSH_SEQUENCE_KEY)? {
        None => Ok(0),
        Some(bytes) => {
            let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: format!("the flush sequence number in the database has {} bytes, not 8", bytes.len()),
            })?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

/// Stores `sequence` in sled, to be made durable by the flush that follows.
pub(crate) fn store_sequence(db: &sled::Db, sequence: u64) -> Result<(), sled::Error> {
    db.insert(FLUSH_SEQUENCE_KEY, &sequence.to_be_bytes()).map(|_| ())
}

/// Refuses a database that holds fewer flushes than the mark file says completed.
pub(crate) fn check(records: FlushRecords, mark_file: &Path) -> Result<(), String> {
    match records.in_mark_file {
        Some(marked) if records.in_database < marked => Err(format!(
            "sled holds the writes of {} flushes, but {marked} had completed before it was closed \
             ({}): it lost writes it had made durable (state-machine checkpoints, behind which the \
             Raft log may already be purged), so this node could serve or apply a state that differs \
             from its peers'",
            records.in_database,
            mark_file.display()
        )),
        _ => Ok(()),
    }
}

fn encode_slot(sequence: u64) -> [u8; SLOT_SIZE_BYTES as usize] {
    let mut slot = [0u8; SLOT_SIZE_BYTES as usize];
    slot[..8].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32fast::hash(&sequence.to_be_bytes());
    slot[8..12].copy_from_slice(&crc.to_be_bytes());
    slot
}

fn decode_slot(slot: &[u8]) -> Option<u64> {
    let sequence: [u8; 8] = slot.get(..8)?.try_into().ok()?;
    let crc: [u8; 4] = slot.get(8..12)?.try_into().ok()?;
    (crc32fast::hash(&sequence) == u32::from_be_bytes(crc)).then(|| u64::from_be_bytes(sequence))
}

impl FlushMark {
    /// The mark file's sequence number, `None` if there is no file. A file in which neither
    /// slot is valid is damage (a torn write spoils at most one slot) and refuses the open.
    pub(crate) fn read(folder: &Path) -> Result<Option<u64>, StoreError> {
        let path = folder.join(MARK_FILE_NAME);
        let Some(bytes) = files::read_if_exists(&path)? else { return Ok(None) };
        let slots = bytes.chunks(SLOT_SIZE_BYTES as usize).take(2).filter_map(decode_slot);
        match slots.max() {
            Some(sequence) => Ok(Some(sequence)),
            None => Err(StoreError::Damaged {
                path: path.display().to_string(),
                detail: format!("the flush mark file ({} bytes) has no valid record", bytes.len()),
            }),
        }
    }

    /// Opens (creating it if needed) the mark file of `folder` and records `sequence` in both
    /// slots, durably, so that the file exists from now on and says no more than sled holds.
    pub(crate) fn start(folder: &Path, sequence: u64) -> Result<FlushMark, StoreError> {
        let path = folder.join(MARK_FILE_NAME);
        let io_error = |error| StoreError::Io(files::error_at(&path, error));
        let existed = path.exists();
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
        let file = file.map_err(io_error)?;
        let slot = encode_slot(sequence);
        file.write_all_at(&slot, 0).map_err(io_error)?;
        file.write_all_at(&slot, SLOT_SIZE_BYTES).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        if !existed {
            files::sync_folder(folder).map_err(io_error)?;
        }
        Ok(FlushMark { file, path, last_sequence: sequence, last_synced: Instant::now(), unsynced: false })
    }

    /// The sequence number of the next flush.
    pub(crate) fn next_sequence(&self) -> u64 {
        self.last_sequence + 1
    }

    /// Records that flush `sequence` completed; syncs the file when the last sync is older
    /// than [`MARK_SYNC_INTERVAL_MS`].
    pub(crate) fn record(&mut self, sequence: u64) -> io::Result<()> {
        let slot = encode_slot(sequence);
        self.file
            .write_all_at(&slot, (sequence % 2) * SLOT_SIZE_BYTES)
            .map_err(|error| files::error_at(&self.path, error))?;
        self.last_sequence = sequence;
        self.unsynced = true;
        if self.last_synced.elapsed() >= Duration::from_millis(MARK_SYNC_INTERVAL_MS) {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data().map_err(|error| files::error_at(&self.path, error))?;
        self.last_synced = Instant::now();
        self.unsynced = false;
        Ok(())
    }
}

impl Drop for FlushMark {
    fn drop(&mut self) {
        if self.unsynced {
            if let Err(error) = self.sync() {
                tracing::warn!(%error, "the last flush mark could not be synced");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_larger_valid_slot_is_the_mark_and_a_torn_slot_falls_back_to_the_other() {
        let folder = tempfile::tempdir().unwrap();
        assert_eq!(FlushMark::read(folder.path()).unwrap(), None);
        let mut mark = FlushMark::start(folder.path(), 5).unwrap();
        assert_eq!(FlushMark::read(folder.path()).unwrap(), Some(5));
        mark.record(6).unwrap();
        mark.record(7).unwrap();
        drop(mark);
        assert_eq!(FlushMark::read(folder.path()).unwrap(), Some(7));
        // A power loss tore the write of 7 (slot 1): the mark is 6, which is still true.
        let path = folder.path().join(MARK_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_SIZE_BYTES as usize + 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(FlushMark::read(folder.path()).unwrap(), Some(6));
        // Both slots spoiled: damage, not a crash.
        bytes[2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let refused = FlushMark::read(folder.path()).unwrap_err().to_string();
        assert!(refused.contains(MARK_FILE_NAME) && refused.contains("no valid record"), "{refused}");
        std::fs::write(&path, b"").unwrap();
        assert!(FlushMark::read(folder.path()).is_err(), "an emptied mark file is damage");
    }

    #[test]
    fn a_database_behind_its_mark_is_refused() {
        let file = Path::new("db/tally-flush-mark");
        let records = |in_database, in_mark_file| FlushRecords { in_database, in_mark_file };
        assert!(check(records(0, None), file).is_ok(), "a new database");
        assert!(check(records(12, None), file).is_ok(), "a database from before the mark file");
        assert!(check(records(12, Some(12)), file).is_ok());
        assert!(check(records(13, Some(12)), file).is_ok(), "killed between a flush and its mark");
        let refused = check(records(11, Some(12)), file).unwrap_err();
        assert!(refused.contains("11 flushes") && refused.contains("12 had completed"), "{refused}");
        assert!(refused.contains("db/tally-flush-mark"), "{refused}");
        assert!(check(records(0, Some(12)), file).is_err(), "a database that came back empty");
    }
}
