//! Large state-tree values kept beside sled, in append-only files, with a small pointer in sled
//! (key-value separation, as WiscKey and TiKV's Titan do).
//!
//! Why: sled 0.34 copies a whole leaf (up to ~20 values) on every rewrite of it, cleans its
//! segments by reading cold pages back from disk and writing them again, and its leaf copies
//! and segment cleaning were most of a checkpoint's cost (a checkpoint's journals, deltas and
//! line journals are written once, read rarely and deleted in bulk). Here such a value is one
//! sequential write.
//!
//! Layout: `value-log/{file:016x}-{stream:02x}.values`, where the stream is the first byte of
//! the key (the state machine's key kind). Values of one kind die together (deltas at the next
//! full checkpoint, journals in expiry order, snapshot chunks at the next snapshot), so a file
//! goes as a whole once no pointer refers to it, and no garbage collection ever copies values.
//!
//! Durability: the appended bytes are `fdatasync`ed (and a new file's folder entry synced)
//! before sled's batch holding their pointers is applied, so a pointer never reaches disk
//! before its value. A file with no pointer left is deleted only after a store flush that
//! started after the batch removing its last pointer returned, so a power cut can never bring
//! back a pointer whose file is gone. At open every pointer is checked against its file's size
//! and files no pointer refers to (appended before a crash, or waiting for deletion) go.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::files::{error_at, sync_folder};
use crate::StoreError;

/// The value log's folder inside the store's folder.
pub const VALUE_LOG_FOLDER: &str = "value-log";

/// Values at least this long go to the value log; shorter ones stay in sled's pages.
pub const SEPARATED_VALUE_BYTES_MIN: usize = 512;

/// A file takes no more appends once it is this long: small enough that a file of values that
/// died goes soon, large enough that a busy node makes a few files a minute.
const FILE_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// First byte of a pointer stored in sled. Framed values start with the format version (1).
const POINTER_TAG: u8 = 0xf5;

/// `[tag][stream u8][file u64][offset u64][length u32][crc32 u32]`, big-endian.
const POINTER_BYTES: usize = 1 + 1 + 8 + 8 + 4 + 4;

/// One file of the value log: its number and the stream (key kind) it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileId {
    number: u64,
    stream: u8,
}

impl FileId {
    fn name(self) -> String {
        format!("{:016x}-{:02x}.values", self.number, self.stream)
    }

    fn parse(name: &str) -> Option<FileId> {
        let stem = name.strip_suffix(".values")?;
        let (number, stream) = stem.split_once('-')?;
        Some(FileId {
            number: u64::from_str_radix(number, 16).ok()?,
            stream: u8::from_str_radix(stream, 16).ok()?,
        })
    }
}

/// Where a value lies: what sled holds in its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pointer {
    file: FileId,
    offset_bytes: u64,
    length_bytes: u32,
    crc32: u32,
}

impl Pointer {
    fn encode(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(POINTER_BYTES);
        bytes.push(POINTER_TAG);
        bytes.push(self.file.stream);
        bytes.extend_from_slice(&self.file.number.to_be_bytes());
        bytes.extend_from_slice(&self.offset_bytes.to_be_bytes());
        bytes.extend_from_slice(&self.length_bytes.to_be_bytes());
        bytes.extend_from_slice(&self.crc32.to_be_bytes());
        bytes
    }

    /// The pointer a stored value is, if it is one.
    fn decode(bytes: &[u8]) -> Option<Pointer> {
        if bytes.len() != POINTER_BYTES || bytes[0] != POINTER_TAG {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Some(Pointer {
            file: FileId { number: u64_at(2), stream: bytes[1] },
            offset_bytes: u64_at(10),
            length_bytes: u32_at(18),
            crc32: u32_at(22),
        })
    }
}

/// The value-log pointers that a pass over every tree of a store found, per file: how many
/// there are and the furthest byte one of them reaches. Opening the log checks those against
/// the files; the store's opening pass over every tree counts them as it goes, so that a
/// restart reads the trees once for both, not twice.
#[derive(Default)]
pub(crate) struct PointerCensus {
    files: HashMap<FileId, FileCensus>,
}

struct FileCensus {
    pointers: u64,
    end_bytes: u64,
    /// The pointer reaching furthest, for the message if the file is too short.
    furthest_offset_bytes: u64,
    furthest_tree: String,
    furthest_key: Vec<u8>,
}

impl PointerCensus {
    /// Counts `value` if it is a pointer.
    pub(crate) fn note(&mut self, tree_name: &[u8], key: &[u8], value: &[u8]) {
        let Some(pointer) = Pointer::decode(value) else { return };
        let end_bytes = pointer.offset_bytes + u64::from(pointer.length_bytes);
        let found = self.files.entry(pointer.file).or_insert_with(|| FileCensus {
            pointers: 0,
            end_bytes: 0,
            furthest_offset_bytes: 0,
            furthest_tree: String::new(),
            furthest_key: Vec::new(),
        });
        found.pointers += 1;
        if end_bytes > found.end_bytes {
            found.end_bytes = end_bytes;
            found.furthest_offset_bytes = pointer.offset_bytes;
            if found.furthest_tree.as_bytes() != tree_name {
                found.furthest_tree = String::from_utf8_lossy(tree_name).into_owned();
            }
            found.furthest_key.clear();
            found.furthest_key.extend_from_slice(key);
        }
    }

    /// Counts the pointers of every tree of `db`.
    pub(crate) fn of_db(db: &sled::Db) -> Result<PointerCensus, StoreError> {
        let mut census = PointerCensus::default();
        for name in db.tree_names() {
            for item in db.open_tree(&name)?.iter() {
                let (key, value) = item?;
                census.note(&name, &key, &value);
            }
        }
        Ok(census)
    }
}

/// The file a stream appends to.
struct Appender {
    file: FileId,
    handle: File,
    size_bytes: u64,
}

#[derive(Default)]
struct State {
    appenders: HashMap<u8, Appender>,
    next_file_number: u64,
    /// Pointers per file, for every file some key refers to.
    live: HashMap<FileId, u64>,
    /// Files no pointer refers to any more, to delete after the next durable flush.
    unreferenced: Vec<FileId>,
    /// Open handles for reads.
    readers: HashMap<FileId, Arc<File>>,
}

/// The node's value log (one for every group's tree, like sled's `Db`).
pub(crate) struct ValueLog {
    folder: PathBuf,
    /// [`FILE_BYTES_MAX`] (smaller in tests).
    file_bytes_max: u64,
    state: Mutex<State>,
}

/// A tree write with its large values replaced by pointers, ready for sled; hold it (and with
/// it the value log's lock) until sled has applied the batch, then [`Separated::applied`].
pub(crate) struct Separated<'a> {
    state: MutexGuard<'a, State>,
    /// The changes to apply to sled, large values replaced by their pointers.
    pub(crate) changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The files of the pointers this write stores, and of those it replaces or deletes.
    added: Vec<FileId>,
    released: Vec<FileId>,
}

impl ValueLog {
    /// Opens the value log in `folder` (created when missing) for a sled `Db` whose trees are
    /// `trees`: counts every pointer, checks that it lies within its file, and deletes the files
    /// no pointer refers to.
    #[cfg(test)]
    pub(crate) fn open(folder: &Path, db: &sled::Db) -> Result<ValueLog, StoreError> {
        Self::open_counted(folder, PointerCensus::of_db(db)?)
    }

    /// Opens the log with the pointers a pass over every tree already counted.
    pub(crate) fn open_counted(folder: &Path, census: PointerCensus) -> Result<ValueLog, StoreError> {
        Self::open_with(folder, census, FILE_BYTES_MAX)
    }

    fn open_with(folder: &Path, census: PointerCensus, file_bytes_max: u64) -> Result<ValueLog, StoreError> {
        std::fs::create_dir_all(folder).map_err(|error| StoreError::Io(error_at(folder, error)))?;
        let mut sizes = HashMap::new();
        let mut next_file_number = 0;
        for entry in std::fs::read_dir(folder).map_err(|error| StoreError::Io(error_at(folder, error)))? {
            let entry = entry.map_err(StoreError::Io)?;
            let Some(file) = entry.file_name().to_str().and_then(FileId::parse) else { continue };
            let size_bytes =
                entry.metadata().map_err(|error| StoreError::Io(error_at(&entry.path(), error)))?.len();
            next_file_number = next_file_number.max(file.number + 1);
            sizes.insert(file, size_bytes);
        }
        let mut state = State { next_file_number, ..State::default() };
        let mut counted: Vec<(FileId, FileCensus)> = census.files.into_iter().collect();
        counted.sort_by_key(|(file, _)| *file);
        for (file, found) in counted {
            match sizes.get(&file) {
                Some(size_bytes) if found.end_bytes <= *size_bytes => {}
                size => {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "tree {}: key {:02x?} points at bytes {}..{} of {} in {}, which {}",
                            found.furthest_tree,
                            &found.furthest_key[..found.furthest_key.len().min(16)],
                            found.furthest_offset_bytes,
                            found.end_bytes,
                            file.name(),
                            folder.display(),
                            match size {
                                Some(size_bytes) => format!("is {size_bytes} bytes long"),
                                None => "does not exist".to_string(),
                            }
                        ),
                    })
                }
            }
            state.live.insert(file, found.pointers);
        }
        let unreferenced: Vec<FileId> =
            sizes.into_keys().filter(|file| !state.live.contains_key(file)).collect();
        let log = ValueLog { folder: folder.to_path_buf(), file_bytes_max, state: Mutex::new(state) };
        log.delete(unreferenced)?;
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("value log lock poisoned")
    }

    fn path(&self, file: FileId) -> PathBuf {
        self.folder.join(file.name())
    }

    /// Appends the large values of `changes` to their streams' files and makes them durable;
    /// the returned write holds the value log's lock until sled has applied it to `tree`. The
    /// pointers the write replaces or deletes are read from `tree` under that lock (sled keeps
    /// no old value in a batch), so no other write can change them meanwhile.
    pub(crate) fn separate(
        &self,
        tree: &sled::Tree,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        is_new: impl Fn(&[u8]) -> bool,
    ) -> Result<Separated<'_>, StoreError> {
        let mut state = self.lock();
        // sled applies the last change to a key; an earlier one would store nothing.
        let mut last_change: HashMap<&[u8], usize> = HashMap::with_capacity(changes.len());
        for (position, (key, _)) in changes.iter().enumerate() {
            last_change.insert(key, position);
        }
        let superseded: Vec<bool> = changes
            .iter()
            .enumerate()
            .map(|(position, (key, _))| last_change[key.as_slice()] != position)
            .collect();
        drop(last_change);
        let mut released = Vec::new();
        // Per stream, its values in order and their total length: written as they are, one
        // vectored write per stream, not copied into one buffer first (a fresh buffer of a
        // checkpoint's size every time, its pages faulted in and zeroed, and grown by
        // doubling: 7 % of a follower's CPU under SubmitBatch).
        let mut pending: HashMap<u8, (Vec<Vec<u8>>, usize)> = HashMap::new();
        let mut placed = Vec::with_capacity(changes.len());
        for ((key, value), superseded) in changes.into_iter().zip(superseded) {
            if superseded {
                continue;
            }
            let created = value.is_some() && is_new(&key);
            if !created {
                if let Some(old) = tree.get(&key)?.as_deref().and_then(Pointer::decode) {
                    released.push(old.file);
                }
            }
            match value {
                Some(value) if value.len() >= SEPARATED_VALUE_BYTES_MIN => {
                    let stream = key.first().copied().unwrap_or(0);
                    let (values, length_bytes) = pending.entry(stream).or_default();
                    let at = *length_bytes;
                    *length_bytes += value.len();
                    placed.push((key, Err((stream, at, value.len() as u32, crc32fast::hash(&value)))));
                    values.push(value);
                }
                value => placed.push((key, Ok(value))),
            }
        }
        // Each stream's values go in one write to its file, then one sync of that file.
        let mut starts: HashMap<u8, (FileId, u64)> = HashMap::new();
        for (stream, (values, length_bytes)) in pending {
            let appender = self.appender(&mut state, stream, length_bytes as u64)?;
            let path = self.folder.join(appender.file.name());
            let start = appender.size_bytes;
            write_all_vectored(&mut appender.handle, &values)
                .map_err(|error| StoreError::Io(error_at(&path, error)))?;
            appender.size_bytes += length_bytes as u64;
            appender.handle.sync_data().map_err(|error| StoreError::Io(error_at(&path, error)))?;
            starts.insert(stream, (appender.file, start));
        }
        let mut separated =
            Separated { state, changes: Vec::with_capacity(placed.len()), added: Vec::new(), released };
        for (key, value) in placed {
            match value {
                Ok(value) => separated.changes.push((key, value)),
                Err((stream, at, length_bytes, crc32)) => {
                    let (file, start) = starts[&stream];
                    let pointer = Pointer { file, offset_bytes: start + at as u64, length_bytes, crc32 };
                    separated.added.push(file);
                    separated.changes.push((key, Some(pointer.encode())));
                }
            }
        }
        Ok(separated)
    }

    /// The stream's current file, rolled to a new one when `adding_bytes` would take it past
    /// [`FILE_BYTES_MAX`].
    fn appender<'s>(
        &self,
        state: &'s mut State,
        stream: u8,
        adding_bytes: u64,
    ) -> Result<&'s mut Appender, StoreError> {
        let full = state.appenders.get(&stream).is_some_and(|appender| {
            appender.size_bytes > 0 && appender.size_bytes + adding_bytes > self.file_bytes_max
        });
        if full {
            let closed = state.appenders.remove(&stream).expect("checked above").file;
            if !state.live.contains_key(&closed) {
                state.unreferenced.push(closed);
            }
        }
        if !state.appenders.contains_key(&stream) {
            let file = FileId { number: state.next_file_number, stream };
            state.next_file_number += 1;
            let path = self.path(file);
            let handle = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|error| StoreError::Io(error_at(&path, error)))?;
            // The file's entry in the folder is durable before any pointer into it can be.
            sync_folder(&self.folder).map_err(|error| StoreError::Io(error_at(&self.folder, error)))?;
            state.appenders.insert(stream, Appender { file, handle, size_bytes: 0 });
        }
        Ok(state.appenders.get_mut(&stream).expect("inserted above"))
    }

    /// The open file a pointer points into.
    fn reader(&self, pointer: &Pointer) -> Result<Arc<File>, StoreError> {
        let mut state = self.lock();
        match state.readers.get(&pointer.file) {
            Some(reader) => Ok(reader.clone()),
            None => {
                let path = self.path(pointer.file);
                let file = File::open(&path).map_err(|error| StoreError::Corrupt {
                    what: format!("a value in {}: {}", path.display(), error),
                })?;
                let reader = Arc::new(file);
                state.readers.insert(pointer.file, reader.clone());
                Ok(reader)
            }
        }
    }

    /// Bytes `start..start + length_bytes` (cut at the value's end) of the value `stored`
    /// stands for, reading only those. No crc check: the pointer's crc covers the whole value.
    pub(crate) fn resolve_range(
        &self,
        stored: sled::IVec,
        start: usize,
        length_bytes: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let Some(pointer) = Pointer::decode(&stored) else {
            let end = start.saturating_add(length_bytes).min(stored.len());
            return Ok(stored.get(start..end).unwrap_or_default().to_vec());
        };
        let value_bytes = pointer.length_bytes as usize;
        let end = start.saturating_add(length_bytes).min(value_bytes);
        let mut bytes = vec![0; end.saturating_sub(start)];
        if bytes.is_empty() {
            return Ok(bytes);
        }
        self.reader(&pointer)?.read_exact_at(&mut bytes, pointer.offset_bytes + start as u64).map_err(
            |error| StoreError::Corrupt {
                what: format!(
                    "bytes {} (+{}) of {}: {error}",
                    pointer.offset_bytes + start as u64,
                    bytes.len(),
                    pointer.file.name()
                ),
            },
        )?;
        Ok(bytes)
    }

    /// The value `stored` in sled stands for: itself, or the bytes its pointer points at.
    pub(crate) fn resolve(&self, stored: sled::IVec) -> Result<Vec<u8>, StoreError> {
        let Some(pointer) = Pointer::decode(&stored) else { return Ok(stored.to_vec()) };
        let reader = self.reader(&pointer)?;
        let mut value = vec![0; pointer.length_bytes as usize];
        reader.read_exact_at(&mut value, pointer.offset_bytes).map_err(|error| StoreError::Corrupt {
            what: format!(
                "bytes {} (+{}) of {}: {error}",
                pointer.offset_bytes,
                pointer.length_bytes,
                pointer.file.name()
            ),
        })?;
        if crc32fast::hash(&value) != pointer.crc32 {
            return Err(StoreError::Corrupt {
                what: format!(
                    "bytes {} (+{}) of {} in {}: crc32 mismatch",
                    pointer.offset_bytes,
                    pointer.length_bytes,
                    pointer.file.name(),
                    self.folder.display()
                ),
            });
        }
        Ok(value)
    }

    /// The files of every pointer in `tree`, to [`ValueLog::release_all`] once it is dropped.
    pub(crate) fn pointed_files(&self, tree: &sled::Tree) -> Result<Vec<FileId>, StoreError> {
        let _writes = self.lock();
        let mut files = Vec::new();
        for item in tree.iter().values() {
            files.extend(Pointer::decode(&item?).map(|pointer| pointer.file));
        }
        Ok(files)
    }

    /// Releases pointers of a dropped tree: their files go after the next flush, which also
    /// makes the drop durable (a crash before it brings the tree back with its files).
    pub(crate) fn release_all(&self, files: Vec<FileId>) {
        let mut state = self.lock();
        for file in files {
            release(&mut state, file);
        }
    }

    /// The files to delete once a flush that starts now has made sled durable.
    pub(crate) fn take_unreferenced(&self) -> Vec<FileId> {
        std::mem::take(&mut self.lock().unreferenced)
    }

    /// Gives back files a failed flush could not delete.
    pub(crate) fn restore_unreferenced(&self, files: Vec<FileId>) {
        self.lock().unreferenced.extend(files);
    }

    /// Deletes files no pointer refers to (checked again: none can have gained one, no stream
    /// appends to them any more).
    pub(crate) fn delete(&self, files: Vec<FileId>) -> Result<(), StoreError> {
        if files.is_empty() {
            return Ok(());
        }
        for file in files {
            let path = self.path(file);
            {
                let mut state = self.lock();
                debug_assert!(!state.live.contains_key(&file), "{} still has pointers", file.name());
                state.readers.remove(&file);
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(StoreError::Io(error_at(&path, error))),
            }
        }
        sync_folder(&self.folder).map_err(|error| StoreError::Io(error_at(&self.folder, error)))
    }

    /// Bytes in the value log's files.
    pub(crate) fn size_on_disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.folder)
            .map(|entries| entries.flatten().filter_map(|entry| entry.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

/// One pointer into `file` is gone.
fn release(state: &mut State, file: FileId) {
    let count = state.live.get_mut(&file).expect("a released pointer was counted");
    *count -= 1;
    if *count == 0 {
        state.live.remove(&file);
        let appending = state.appenders.values().any(|appender| appender.file == file);
        if !appending {
            state.unreferenced.push(file);
        }
    }
}

impl Separated<'_> {
    /// sled applied the batch: counts its new pointers and releases those it replaced.
    pub(crate) fn applied(self) {
        let Separated { mut state, changes: _, added, released } = self;
        let state = &mut *state;
        for file in added {
            *state.live.entry(file).or_default() += 1;
        }
        for file in released {
            release(state, file);
        }
    }
}

/// Writes every value, in order, with as few `writev` calls as the kernel allows.
fn write_all_vectored(file: &mut File, values: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = values.iter().map(|value| IoSlice::new(value)).collect();
    let mut remaining = slices.as_mut_slice();
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written_bytes) => IoSlice::advance_slices(&mut remaining, written_bytes),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_framed_values_are_not_pointers() {
        let pointer = Pointer {
            file: FileId { number: 7, stream: b'j' },
            offset_bytes: 1 << 40,
            length_bytes: 6144,
            crc32: 0xdead_beef,
        };
        assert_eq!(Pointer::decode(&pointer.encode()), Some(pointer));
        let framed = crate::encode_value(&vec![0u8; POINTER_BYTES - 13]).unwrap();
        assert_eq!(framed.len(), POINTER_BYTES);
        assert_eq!(Pointer::decode(&framed), None, "a framed value starts with its version");
        assert_eq!(FileId::parse(&pointer.file.name()), Some(pointer.file));
    }

    /// A sled tree with the value log in `folder`, files rolled every 8 KiB.
    fn open(folder: &Path, db: &sled::Db) -> (ValueLog, sled::Tree) {
        (
            ValueLog::open_with(&folder.join(VALUE_LOG_FOLDER), PointerCensus::of_db(db).unwrap(), 8 * 1024)
                .unwrap(),
            db.open_tree("t").unwrap(),
        )
    }

    fn write(log: &ValueLog, tree: &sled::Tree, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let mut separated = log.separate(tree, changes, |_| false).unwrap();
        let mut batch = sled::Batch::default();
        for (key, value) in std::mem::take(&mut separated.changes) {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        tree.apply_batch(batch).unwrap();
        separated.applied();
    }

    fn files(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder.join(VALUE_LOG_FOLDER))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn value(seed: u8) -> Vec<u8> {
        (0..3000u32).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    fn read(log: &ValueLog, tree: &sled::Tree, key: &[u8]) -> Option<Vec<u8>> {
        tree.get(key).unwrap().map(|stored| log.resolve(stored).unwrap())
    }

    #[test]
    fn large_values_go_to_files_and_files_go_once_nothing_points_at_them() {
        let folder = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(folder.path().join("db")).open().unwrap();
        let (log, tree) = open(folder.path(), &db);
        // Small values stay in sled; large ones become pointers, one stream per first key byte.
        write(&log, &tree, vec![(b"small".to_vec(), Some(b"tiny".to_vec()))]);
        assert!(files(folder.path()).is_empty());
        for round in 0..6u8 {
            write(
                &log,
                &tree,
                vec![(vec![b'd', round], Some(value(round))), (vec![b'j', round], Some(value(round)))],
            );
        }
        assert_eq!(tree.get(vec![b'd', 0]).unwrap().unwrap().len(), POINTER_BYTES);
        for round in 0..6u8 {
            assert_eq!(read(&log, &tree, &[b'd', round]), Some(value(round)));
            assert_eq!(read(&log, &tree, &[b'j', round]), Some(value(round)));
        }
        assert_eq!(read(&log, &tree, b"small"), Some(b"tiny".to_vec()));
        // 3,000-byte values, files of 8 KiB: each stream rolled to a third file.
        let before = files(folder.path());
        assert_eq!(before.iter().filter(|name| name.ends_with("-64.values")).count(), 3, "{before:?}");
        assert_eq!(before.iter().filter(|name| name.ends_with("-6a.values")).count(), 3, "{before:?}");
        // Delete every delta and overwrite a journal with a small value: the closed delta files
        // wait for a durable flush, the current one stays (it still takes appends).
        let mut changes: Vec<_> = (0..6u8).map(|round| (vec![b'd', round], None)).collect();
        changes.push((vec![b'j', 0], Some(b"small now".to_vec())));
        write(&log, &tree, changes);
        assert_eq!(files(folder.path()), before, "nothing is deleted before a flush");
        let unreferenced = log.take_unreferenced();
        assert_eq!(unreferenced.len(), 2, "{unreferenced:?}");
        assert!(unreferenced.iter().all(|file| file.stream == b'd'));
        db.flush().unwrap();
        log.delete(unreferenced).unwrap();
        let after = files(folder.path());
        assert_eq!(after.iter().filter(|name| name.ends_with("-64.values")).count(), 1, "{after:?}");
        assert_eq!(read(&log, &tree, &[b'j', 0]), Some(b"small now".to_vec()));
        for round in 1..6u8 {
            assert_eq!(read(&log, &tree, &[b'j', round]), Some(value(round)));
        }
        // A reopen counts the pointers again and deletes the files nothing points at (the
        // current delta file, now closed); every remaining value still reads back.
        drop(log);
        let (log, tree) = open(folder.path(), &db);
        let reopened = files(folder.path());
        assert_eq!(reopened.iter().filter(|name| name.ends_with("-64.values")).count(), 0, "{reopened:?}");
        for round in 1..6u8 {
            assert_eq!(read(&log, &tree, &[b'j', round]), Some(value(round)));
        }
        // New appends go to a new file, numbered after every existing one.
        write(&log, &tree, vec![(vec![b'j', 9], Some(value(9)))]);
        let newest = files(folder.path()).into_iter().max().unwrap();
        assert!(reopened.iter().all(|name| *name < newest), "{newest} after {reopened:?}");
    }

    #[test]
    fn a_write_of_more_values_than_one_writev_takes_lands_every_value_where_its_pointer_says() {
        let folder = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(folder.path().join("db")).open().unwrap();
        let log = ValueLog::open_with(
            &folder.path().join(VALUE_LOG_FOLDER),
            PointerCensus::of_db(&db).unwrap(),
            FILE_BYTES_MAX,
        )
        .unwrap();
        let tree = db.open_tree("t").unwrap();
        // Linux takes at most 1,024 slices per writev; values of varied lengths, two streams,
        // and a key written twice (the later value wins, the earlier is not written).
        let value_of = |index: u32| -> Vec<u8> {
            let length_bytes = SEPARATED_VALUE_BYTES_MIN + (index as usize * 7) % 900;
            (0..length_bytes).map(|at| (index as usize + at) as u8).collect()
        };
        let key_of = |index: u32| -> Vec<u8> {
            let stream = if index.is_multiple_of(3) { b'r' } else { b'j' };
            [&[stream][..], &index.to_be_bytes()].concat()
        };
        let mut changes: Vec<_> = (0..2_500u32).map(|index| (key_of(index), Some(value_of(index)))).collect();
        changes.push((changes[10].0.clone(), Some(value_of(99_999))));
        write(&log, &tree, changes);
        for index in 0..2_500u32 {
            let expected = if index == 10 { value_of(99_999) } else { value_of(index) };
            assert_eq!(read(&log, &tree, &key_of(index)), Some(expected), "value {index}");
        }
    }

    #[test]
    fn a_pointer_into_a_missing_or_short_file_refuses_the_open_and_a_flipped_byte_the_read() {
        let folder = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(folder.path().join("db")).open().unwrap();
        let (log, tree) = open(folder.path(), &db);
        write(&log, &tree, vec![(b"j1".to_vec(), Some(value(1)))]);
        drop(log);
        let name = files(folder.path()).remove(0);
        let path = folder.path().join(VALUE_LOG_FOLDER).join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (log, tree) = open(folder.path(), &db);
        let error = log.resolve(tree.get(b"j1").unwrap().unwrap()).unwrap_err();
        assert!(error.to_string().contains("crc32 mismatch"), "{error}");
        drop(log);
        std::fs::write(&path, &bytes[..2000]).unwrap();
        let refused = ValueLog::open(&folder.path().join(VALUE_LOG_FOLDER), &db).err().expect("short file");
        assert!(refused.to_string().contains("is 2000 bytes long"), "{refused}");
        std::fs::remove_file(&path).unwrap();
        let refused = ValueLog::open(&folder.path().join(VALUE_LOG_FOLDER), &db).err().expect("no file");
        assert!(refused.to_string().contains("does not exist"), "{refused}");
    }
}
