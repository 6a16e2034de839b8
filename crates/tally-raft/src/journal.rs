//! Journals: where a shard's retained keys' records live once a checkpoint has written them.
//!
//! A checkpoint writes the records that changed since the previous one as a few journal values
//! (`j` ‖ log index ‖ chunk, see `keys`), each with an index value beside it (`x` ‖ the same
//! suffix) listing every record's fingerprint, expiry and byte range in the journal. Once the
//! write is done the ledger drops those records from memory and keeps an 8-byte
//! [`RecordSlot`] per key; [`JournalSource`] reads a record back when its key returns. Loading
//! a shard reads the index values only, so a restart does not decode millions of records.
//!
//! A journal is one value of up to [`JOURNAL_BYTES_MAX`] bytes, framed as every value is; its
//! payload is the records one after the other, each as `[length u32][crc32 u32][bytes]`
//! (little-endian), so that one record can be read back alone, with its own check, without
//! reading or checking the rest of its journal. Large journals keep the per-journal cost low
//! (a sled key and an index value each, read at every restart); reading a record alone keeps
//! a replay's read small.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tally_ledger::state::KeyFingerprint;
use tally_ledger::{RecordSlot, RecordSource};
use tally_store::{encode_framed, encode_value, framed_payload, StateTree, StoreError, FRAME_HEADER_BYTES};

use crate::keys;

/// One record a checkpoint writes: copied out of memory under the state lock.
#[derive(Clone, Debug)]
pub struct JournalRecord {
    pub fingerprint: KeyFingerprint,
    pub expires_at_ms: u64,
    /// The record's canonical bytes (shared with the ledger's copy while it is in memory).
    pub bytes: Arc<[u8]>,
}

/// The largest journal a checkpoint writes (a larger record goes alone). Measured at 20 M
/// retained keys with 6 KiB journals: about 850,000 journals, each a sled key, an index value
/// and bookkeeping in memory, and a restart spent most of its load reading their indexes one by
/// one. A journal goes to the value log whole and is read back a record at a time.
pub const JOURNAL_BYTES_MAX: usize = 1024 * 1024;

/// `[length u32][crc32 u32]` before every record in a journal.
const RECORD_HEADER_BYTES: usize = 8;

/// A first read of one record takes its header and this many bytes: most records are a few
/// hundred bytes, so one read usually suffices.
const RECORD_READ_GUESS_BYTES: usize = 1024;

/// Where one record sits in its journal (the index value holds these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalIndexEntry {
    pub fingerprint: KeyFingerprint,
    pub expires_at_ms: u64,
    /// Where the record's header starts, from the start of the journal's payload (after the
    /// value's frame header).
    pub offset_bytes: u32,
}

impl JournalIndexEntry {
    /// The record's slot, in the journal the source numbered `journal`.
    pub fn slot(&self, journal: u32) -> RecordSlot {
        RecordSlot { journal, offset_bytes: self.offset_bytes }
    }
}

/// One journal value and its index, ready to write.
pub struct EncodedJournal {
    pub journal_key: Vec<u8>,
    pub journal_value: Vec<u8>,
    pub index: Vec<JournalIndexEntry>,
}

impl EncodedJournal {
    /// The log time at which every record in the journal has expired.
    pub fn expires_at_ms(&self) -> u64 {
        self.index.iter().map(|entry| entry.expires_at_ms).max().unwrap_or(0)
    }

    /// The index value, framed.
    pub fn index_value(&self) -> Vec<u8> {
        encode_value(&self.index).expect("encoding a journal index into memory cannot fail")
    }
}

/// Lays `records` out as journals of at most [`JOURNAL_BYTES_MAX`] bytes each (a larger
/// record goes alone), under `j` ‖ `log_index` ‖ chunk.
pub fn encode_journals(log_index: u64, records: &[JournalRecord]) -> Vec<EncodedJournal> {
    let mut journals = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut size_bytes = FRAME_HEADER_BYTES;
        while end < records.len() {
            let record_bytes = RECORD_HEADER_BYTES + records[end].bytes.len();
            if end > start && size_bytes + record_bytes > JOURNAL_BYTES_MAX {
                break;
            }
            size_bytes += record_bytes;
            end += 1;
        }
        let chunk = journals.len() as u32;
        journals.push(encode_journal(keys::journal_key(log_index, chunk), &records[start..end], size_bytes));
        start = end;
    }
    journals
}

fn encode_journal(journal_key: Vec<u8>, records: &[JournalRecord], size_bytes: usize) -> EncodedJournal {
    let mut payload = Vec::with_capacity(size_bytes - FRAME_HEADER_BYTES);
    let mut index = Vec::with_capacity(records.len());
    for record in records {
        index.push(JournalIndexEntry {
            fingerprint: record.fingerprint,
            expires_at_ms: record.expires_at_ms,
            offset_bytes: u32::try_from(payload.len()).expect("a journal is far below 4 GiB"),
        });
        let length = u32::try_from(record.bytes.len()).expect("a record is far below 4 GiB");
        payload.extend_from_slice(&length.to_le_bytes());
        payload.extend_from_slice(&crc32fast::hash(&record.bytes).to_le_bytes());
        payload.extend_from_slice(&record.bytes);
    }
    EncodedJournal { journal_key, journal_value: encode_framed(&payload), index }
}

/// A record's header: its length and crc32.
fn record_header(bytes: &[u8]) -> Option<(usize, u32)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc32 = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    Some((length, crc32))
}

/// The record whose header starts at `offset` in a journal's `payload`, checked.
fn record_at(payload: &[u8], offset: usize, number: u32) -> Result<Vec<u8>, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        what: format!("the record at byte {offset} of journal number {number}: {detail}"),
    };
    let from = payload.get(offset..).ok_or_else(|| corrupt("past the journal's end"))?;
    let (length, crc32) = record_header(from).ok_or_else(|| corrupt("its header is cut short"))?;
    let bytes = from
        .get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + length)
        .ok_or_else(|| corrupt("its bytes are cut short"))?;
    if crc32fast::hash(bytes) != crc32 {
        return Err(corrupt("crc32 mismatch"));
    }
    Ok(bytes.to_vec())
}

/// What [`JournalSource`] read last.
enum LastRead {
    /// One record of this journal, alone.
    Record(u32),
    /// This whole journal (after two reads in a row from it).
    Journal(u32, Arc<Vec<u8>>),
}

/// Reads records back from the journals of one group's tree. Journals are named in slots by a
/// number this source hands out (a slot stays 8 bytes): the numbers live in memory only and
/// are handed out afresh when a shard loads.
pub struct JournalSource {
    tree: StateTree,
    journals: RwLock<HashMap<u32, Vec<u8>>>,
    next_journal: AtomicU32,
    /// A reader that goes through records in slot order (a state digest or a snapshot reads
    /// every record) reads each journal whole once, not once per record; a lone read (a
    /// replay) reads its record alone. Numbers are never reused and a journal never changes,
    /// so a kept copy is never stale.
    last_read: Mutex<Option<LastRead>>,
}

impl JournalSource {
    pub fn new(tree: StateTree) -> Self {
        Self {
            tree,
            journals: RwLock::new(HashMap::new()),
            next_journal: AtomicU32::new(0),
            last_read: Mutex::new(None),
        }
    }

    /// Numbers a journal (by its key) so that slots can name it.
    pub fn register(&self, journal_key: Vec<u8>) -> u32 {
        let number = self.next_journal.fetch_add(1, Ordering::Relaxed);
        self.journals.write().expect("journal table lock poisoned").insert(number, journal_key);
        number
    }

    /// Forgets journals that were deleted from the tree (no slot names them any more).
    pub fn forget(&self, journal_keys: &[Vec<u8>]) {
        let deleted: HashSet<&[u8]> = journal_keys.iter().map(Vec::as_slice).collect();
        let mut journals = self.journals.write().expect("journal table lock poisoned");
        journals.retain(|_, key| !deleted.contains(key.as_slice()));
    }

    /// Forgets every journal (the tree was replaced by a snapshot install).
    pub fn forget_all(&self) {
        self.journals.write().expect("journal table lock poisoned").clear();
    }

    /// How many journals are numbered.
    pub fn journal_count(&self) -> usize {
        self.journals.read().expect("journal table lock poisoned").len()
    }

    fn journal_key(&self, number: u32) -> Result<Vec<u8>, StoreError> {
        self.journals
            .read()
            .expect("journal table lock poisoned")
            .get(&number)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt { what: format!("journal number {number} is unknown") })
    }

    fn missing(journal_key: &[u8]) -> StoreError {
        StoreError::Corrupt { what: format!("journal {journal_key:02x?} is missing from the tree") }
    }

    fn read(&self, slot: RecordSlot) -> Result<Vec<u8>, StoreError> {
        let number = slot.journal;
        let offset = slot.offset_bytes as usize;
        let previous = self.last_read.lock().expect("journal cache lock poisoned").take();
        let journal = match previous {
            Some(LastRead::Journal(last, journal)) if last == number => Some(journal),
            Some(LastRead::Record(last)) if last == number => Some(self.read_journal(number)?),
            _ => None,
        };
        if let Some(journal) = journal {
            // Its frame was checked once, when it was read (`read_journal`); checking the whole
            // journal's crc32 again for every record read from the kept copy made a reader in
            // slot order quadratic (a mebibyte hashed per record: minutes for a state digest
            // of a few journals in a debug build). Each record keeps its own crc32.
            let record = record_at(&journal[FRAME_HEADER_BYTES..], offset, number);
            *self.last_read.lock().expect("journal cache lock poisoned") =
                Some(LastRead::Journal(number, journal));
            return record;
        }
        let record = self.read_alone(number, offset)?;
        *self.last_read.lock().expect("journal cache lock poisoned") = Some(LastRead::Record(number));
        Ok(record)
    }

    /// Journal `number` whole, checked.
    fn read_journal(&self, number: u32) -> Result<Arc<Vec<u8>>, StoreError> {
        let journal_key = self.journal_key(number)?;
        let value = self.tree.get(&journal_key)?.ok_or_else(|| Self::missing(&journal_key))?;
        framed_payload(&value, "journal")?;
        Ok(Arc::new(value))
    }

    /// One record, reading its bytes only (in one read when it is not long).
    fn read_alone(&self, number: u32, offset: usize) -> Result<Vec<u8>, StoreError> {
        let journal_key = self.journal_key(number)?;
        let start = FRAME_HEADER_BYTES + offset;
        let first = self
            .tree
            .get_range(&journal_key, start, RECORD_HEADER_BYTES + RECORD_READ_GUESS_BYTES)?
            .ok_or_else(|| Self::missing(&journal_key))?;
        let (length, _) = record_header(&first).ok_or_else(|| StoreError::Corrupt {
            what: format!("the record at byte {offset} of journal number {number}: its header is cut short"),
        })?;
        if first.len() >= RECORD_HEADER_BYTES + length {
            return record_at(&first, 0, number);
        }
        let whole = self
            .tree
            .get_range(&journal_key, start, RECORD_HEADER_BYTES + length)?
            .ok_or_else(|| Self::missing(&journal_key))?;
        record_at(&whole, 0, number)
    }
}

impl RecordSource for JournalSource {
    fn read_record(&self, slot: RecordSlot) -> Result<Vec<u8>, String> {
        self.read(slot).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use tally_store::NodeStore;

    use super::*;

    fn record(seed: u32, length: usize) -> JournalRecord {
        let mut fingerprint = [0; 16];
        fingerprint[..4].copy_from_slice(&seed.to_be_bytes());
        JournalRecord {
            fingerprint: KeyFingerprint(fingerprint),
            expires_at_ms: u64::from(seed),
            bytes: (0..length).map(|at| (seed as usize + at) as u8).collect::<Vec<u8>>().into(),
        }
    }

    #[test]
    fn records_sit_where_the_index_says_and_journals_stay_below_the_limit() {
        let records: Vec<JournalRecord> = (0..3_000).map(|seed| record(seed, 700)).collect();
        let journals = encode_journals(42, &records);
        assert_eq!(journals.len(), 3, "3,000 records of 708 bytes framed take three journals of 1 MiB");
        let mut seen = 0;
        for (chunk, journal) in journals.iter().enumerate() {
            assert!(journal.journal_value.len() <= JOURNAL_BYTES_MAX);
            assert_eq!(journal.journal_key, keys::journal_key(42, chunk as u32));
            let payload = framed_payload(&journal.journal_value, "journal").unwrap();
            for entry in &journal.index {
                let expected = &records[seen];
                assert_eq!(record_at(payload, entry.offset_bytes as usize, 0).unwrap(), &expected.bytes[..]);
                assert_eq!(
                    (entry.fingerprint, entry.expires_at_ms),
                    (expected.fingerprint, expected.expires_at_ms)
                );
                seen += 1;
            }
        }
        assert_eq!(seen, records.len());
        // A record larger than the limit goes alone.
        let large = encode_journals(1, &[record(1, 10), record(2, JOURNAL_BYTES_MAX + 1), record(3, 10)]);
        assert_eq!(large.iter().map(|journal| journal.index.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
    }

    /// Writes `journal` (with `payload` in place of its own when given) and numbers it.
    fn store_journal(tree: &StateTree, source: &JournalSource, key: Vec<u8>, value: Vec<u8>) -> u32 {
        tree.write_batch(vec![(key.clone(), Some(value))]).unwrap();
        source.register(key)
    }

    #[test]
    fn a_record_is_read_alone_or_from_its_whole_journal_and_a_damaged_one_is_refused() {
        let store = NodeStore::temporary().unwrap();
        let tree = store.state_tree(1).unwrap();
        let source = JournalSource::new(tree.clone());
        // Beside sled (a value log file), with one record longer than a first read takes.
        let records = [record(1, 100), record(2, 3_000), record(3, 10)];
        let [journal] = &encode_journals(5, &records)[..] else { panic!("one journal") };
        let number =
            store_journal(&tree, &source, journal.journal_key.clone(), journal.journal_value.clone());
        // In order: alone (two reads for the long one), then the whole journal once two reads
        // in a row named it, then from the kept copy.
        for position in [1, 0, 2, 1] {
            let slot = journal.index[position].slot(number);
            assert_eq!(source.read(slot).unwrap(), &records[position].bytes[..]);
        }
        // Inside sled: a journal shorter than the value log's threshold.
        let small = &encode_journals(6, &[record(4, 10)])[0];
        let small_number =
            store_journal(&tree, &source, small.journal_key.clone(), small.journal_value.clone());
        assert_eq!(source.read(small.index[0].slot(small_number)).unwrap(), &record(4, 10).bytes[..]);

        // One byte of the long record flipped, the journal's own frame made whole again: the
        // record's check catches it whether it is read alone or with its journal.
        let mut payload = framed_payload(&journal.journal_value, "journal").unwrap().to_vec();
        let damaged_at = journal.index[1].offset_bytes as usize + RECORD_HEADER_BYTES + 2_000;
        payload[damaged_at] ^= 0x40;
        let damaged_key = keys::journal_key(7, 0);
        let damaged = store_journal(&tree, &source, damaged_key, encode_framed(&payload));
        // (Record 2 first, so that the next read takes the whole journal; then alone again.)
        assert_eq!(source.read(journal.index[2].slot(damaged)).unwrap(), &records[2].bytes[..]);
        for _ in 0..2 {
            let error = source.read(journal.index[1].slot(damaged)).unwrap_err().to_string();
            assert!(error.contains("crc32 mismatch"), "{error}");
        }
        // A number no journal has is an error, not a panic.
        assert!(source.read(RecordSlot { journal: 99, offset_bytes: 0 }).is_err());
    }
}
