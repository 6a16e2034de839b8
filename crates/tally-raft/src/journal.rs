//! Journals: where a shard's retained keys' records live once a checkpoint has written them.
//!
//! A checkpoint writes the records that changed since the previous one as a few journal values
//! (`j` ‖ log index ‖ chunk, see `keys`), each with an index value beside it (`x` ‖ the same
//! suffix) listing every record's fingerprint, expiry and byte range in the journal. Once the
//! write is done the ledger drops those records from memory and keeps an 8-byte
//! [`RecordSlot`] per key; [`JournalSource`] reads a record back when its key returns. Loading
//! a shard reads the index values only, so a restart does not decode millions of records.
//!
//! A journal value decodes as a `Vec<StateItem>` (bincode's length, then each record as the
//! `Retained` tag followed by its canonical bytes): it is laid out by hand only to know where
//! each record sits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tally_ledger::state::{KeyFingerprint, RETAINED_ITEM_TAG};
use tally_ledger::{RecordSlot, RecordSource};
use tally_store::{encode_framed, encode_value, framed_payload, StateTree, StoreError};

use crate::keys;

/// One record a checkpoint writes: copied out of memory under the state lock.
#[derive(Clone, Debug)]
pub struct JournalRecord {
    pub fingerprint: KeyFingerprint,
    pub expires_at_ms: u64,
    /// The record's canonical bytes (shared with the ledger's copy while it is in memory).
    pub bytes: Arc<[u8]>,
}

/// Where one record sits in its journal (the index value holds these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalIndexEntry {
    pub fingerprint: KeyFingerprint,
    pub expires_at_ms: u64,
    /// From the start of the journal's payload (after the value's frame header).
    pub offset_bytes: u32,
    pub length_bytes: u32,
}

impl JournalIndexEntry {
    /// The record's slot, in the journal the source numbered `journal`. A slot has 16 bits for
    /// each: a journal holds at most [`keys::VALUE_BYTES_MAX`] bytes beside its one larger
    /// record, and a record's fields are bounded far below 64 KiB (see `tally_ledger::limits`).
    pub fn slot(&self, journal: u32) -> RecordSlot {
        RecordSlot {
            journal,
            offset_bytes: u16::try_from(self.offset_bytes)
                .expect("a record starts within a journal's first 64 KiB"),
            length_bytes: u16::try_from(self.length_bytes).expect("a retained record is below 64 KiB"),
        }
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

/// bincode's `Vec` length prefix (a little-endian u64) and a record's `StateItem` tag.
const LENGTH_PREFIX_BYTES: usize = 8;
const TAG_BYTES: usize = RETAINED_ITEM_TAG.len();

/// Lays `records` out as journals of at most [`keys::VALUE_BYTES_MAX`] bytes each (a larger
/// record goes alone), under `j` ‖ `log_index` ‖ chunk.
pub fn encode_journals(log_index: u64, records: &[JournalRecord]) -> Vec<EncodedJournal> {
    // The frame header (5 bytes) and the length prefix.
    const OVERHEAD_BYTES: usize = 5 + LENGTH_PREFIX_BYTES;
    let mut journals = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut size_bytes = OVERHEAD_BYTES;
        while end < records.len() {
            let record_bytes = TAG_BYTES + records[end].bytes.len();
            if end > start && size_bytes + record_bytes > keys::VALUE_BYTES_MAX {
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
    let mut payload = Vec::with_capacity(size_bytes);
    payload.extend_from_slice(&(records.len() as u64).to_le_bytes());
    let mut index = Vec::with_capacity(records.len());
    for record in records {
        payload.extend_from_slice(&RETAINED_ITEM_TAG);
        index.push(JournalIndexEntry {
            fingerprint: record.fingerprint,
            expires_at_ms: record.expires_at_ms,
            offset_bytes: u32::try_from(payload.len()).expect("a journal is far below 4 GiB"),
            length_bytes: u32::try_from(record.bytes.len()).expect("a record is far below 4 GiB"),
        });
        payload.extend_from_slice(&record.bytes);
    }
    EncodedJournal { journal_key, journal_value: encode_framed(&payload), index }
}

/// Reads records back from the journals of one group's tree. Journals are named in slots by a
/// number this source hands out (a slot stays 8 bytes): the numbers live in memory only and
/// are handed out afresh when a shard loads.
pub struct JournalSource {
    tree: StateTree,
    journals: RwLock<HashMap<u32, Vec<u8>>>,
    next_journal: AtomicU32,
    /// The journal read last, by number: a reader that goes through records in slot order (a
    /// state digest reads every record) reads each journal once, not once per record. Numbers
    /// are never reused and a journal never changes, so a kept copy is never stale.
    last_read: Mutex<Option<(u32, Arc<Vec<u8>>)>>,
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
        let mut journals = self.journals.write().expect("journal table lock poisoned");
        journals.retain(|_, key| !journal_keys.contains(key));
    }

    /// Forgets every journal (the tree was replaced by a snapshot install).
    pub fn forget_all(&self) {
        self.journals.write().expect("journal table lock poisoned").clear();
    }

    /// How many journals are numbered.
    pub fn journal_count(&self) -> usize {
        self.journals.read().expect("journal table lock poisoned").len()
    }

    fn read(&self, slot: RecordSlot) -> Result<Vec<u8>, StoreError> {
        let value = self.journal_value(slot.journal)?;
        let payload = framed_payload(&value, "journal")?;
        let start = slot.offset_bytes as usize;
        let end = start + slot.length_bytes as usize;
        let bytes = payload.get(start..end).ok_or_else(|| StoreError::Corrupt {
            what: format!("journal number {} has no bytes {start}..{end}", slot.journal),
        })?;
        Ok(bytes.to_vec())
    }

    /// The stored value of journal `number`, from the last read if it was that journal's.
    fn journal_value(&self, number: u32) -> Result<Arc<Vec<u8>>, StoreError> {
        if let Some((last, value)) = &*self.last_read.lock().expect("journal cache lock poisoned") {
            if *last == number {
                return Ok(value.clone());
            }
        }
        let journal_key = self
            .journals
            .read()
            .expect("journal table lock poisoned")
            .get(&number)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt { what: format!("journal number {number} is unknown") })?;
        let value = self.tree.get(&journal_key)?.ok_or_else(|| StoreError::Corrupt {
            what: format!("journal {journal_key:02x?} is missing from the tree"),
        })?;
        let value = Arc::new(value);
        *self.last_read.lock().expect("journal cache lock poisoned") = Some((number, value.clone()));
        Ok(value)
    }
}

impl RecordSource for JournalSource {
    fn read_record(&self, slot: RecordSlot) -> Result<Vec<u8>, String> {
        self.read(slot).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use tally_ledger::state::StateItem;
    use tally_store::decode_value;

    use super::*;

    fn record(seed: u8, length: usize) -> JournalRecord {
        JournalRecord {
            fingerprint: KeyFingerprint([seed; 16]),
            expires_at_ms: u64::from(seed),
            bytes: vec![seed; length].into(),
        }
    }

    #[test]
    fn records_sit_where_the_index_says_and_chunks_stay_below_the_limit() {
        let records: Vec<JournalRecord> = (0..200u8).map(|seed| record(seed, 700)).collect();
        let journals = encode_journals(42, &records);
        assert!(journals.len() > 1, "200 records of 700 bytes take several chunks");
        let mut seen = 0;
        for (chunk, journal) in journals.iter().enumerate() {
            assert!(journal.journal_value.len() <= keys::VALUE_BYTES_MAX);
            assert_eq!(journal.journal_key, keys::journal_key(42, chunk as u32));
            let payload = framed_payload(&journal.journal_value, "journal").unwrap();
            for entry in &journal.index {
                let expected = &records[seen];
                let start = entry.offset_bytes as usize;
                assert_eq!(&payload[start..start + entry.length_bytes as usize], &expected.bytes[..]);
                assert_eq!(
                    (entry.fingerprint, entry.expires_at_ms),
                    (expected.fingerprint, expected.expires_at_ms)
                );
                seen += 1;
            }
        }
        assert_eq!(seen, records.len());
        // A record larger than the limit goes alone.
        let large = encode_journals(1, &[record(1, 10), record(2, keys::VALUE_BYTES_MAX + 1), record(3, 10)]);
        assert_eq!(large.iter().map(|journal| journal.index.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
    }

    #[test]
    fn a_journal_decodes_as_the_state_items_it_holds() {
        let retained = tally_ledger::state::RetainedRecord {
            partner_id: tally_ledger::PartnerId::parse("sky").unwrap(),
            key: tally_ledger::IdempotencyKey::parse("k").unwrap(),
            answer: tally_ledger::state::IdempotencyRecord {
                operation: tally_ledger::Operation::Enrol {
                    member_id: tally_ledger::MemberId::parse("alice").unwrap(),
                    currency: tally_ledger::CurrencyCode::parse("SKY").unwrap(),
                },
                outcome: tally_ledger::CommandOutcome {
                    result: Ok(tally_ledger::OperationResult::KeyClaimed),
                    replay: false,
                    log_index: 3,
                    log_time_ms: 4,
                },
                expires_at_ms: 9,
            },
            earn: None,
        };
        let journal = JournalRecord {
            fingerprint: retained.fingerprint(),
            expires_at_ms: 9,
            bytes: bincode::serialize(&retained).unwrap().into(),
        };
        let journals = encode_journals(7, &[journal.clone(), journal]);
        let items: Vec<StateItem> = decode_value(&journals[0].journal_value, "journal").unwrap();
        assert_eq!(items, vec![StateItem::Retained(retained.clone()), StateItem::Retained(retained)]);
    }
}
