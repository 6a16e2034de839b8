//! Retained keys: every idempotency key a shard remembers until its retention ends, with the
//! record of its first request, answer and earn.
//!
//! A shard retains every key for days (seven by default), so this is the one part of the state
//! that grows with traffic rather than with members. Memory holds, per key, its 16-byte
//! [`KeyFingerprint`] and either the record encoded as one allocation (its canonical bincode
//! bytes, which the digest hashes as they are) or, once a checkpoint has written the record to
//! its journal, only the [`RecordSlot`] where the storage layer keeps it. A record is decoded
//! only when its key comes back: a replay, a reuse with another request, or a reversal of the
//! earn it names; a stored one is first read back through the shard's [`RecordSource`]. A hit
//! compares the decoded partner and key with the caller's exactly, so a fingerprint collision
//! can never answer for another key.
//!
//! Where a record lives is not state: two ledgers holding the same records are equal, and
//! their digests agree, whichever of them keeps which record in memory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::keyed::KeyedMap;
use crate::state::{KeyFingerprint, RetainedRecord};

use super::stored_index::StoredIndex;

/// Where the storage layer keeps a record that left memory: which journal, and the record's
/// bytes within it. Opaque to the ledger; 8 bytes, because a shard holds millions of them
/// (journals are a few KiB, and a record's fields are bounded far below 64 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSlot {
    /// The storage layer's number for the journal holding the record.
    pub journal: u32,
    pub offset_bytes: u16,
    pub length_bytes: u16,
}

/// Reads records back from where a storage layer wrote them. A read that fails stops the
/// shard (a panic in apply): answering a retried key without its record would apply it twice.
pub trait RecordSource: Send + Sync {
    /// The record's canonical bytes, exactly as they were handed to [`Ledger::evict_retained`]
    /// (see [`crate::Ledger`]).
    fn read_record(&self, slot: RecordSlot) -> Result<Vec<u8>, String>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ResidentRecord {
    expires_at_ms: u64,
    /// `bincode` (default options) of the [`RetainedRecord`]. Shared: a checkpoint takes the
    /// record by reference, not by copy, from apply to its journal.
    bytes: Arc<[u8]>,
}

/// The retained keys of one shard and their expiry index.
#[derive(Clone, Default)]
pub(super) struct RetainedKeys {
    /// Records not written to a journal yet (or changed since): a checkpoint's worth of keys.
    resident: KeyedMap<KeyFingerprint, ResidentRecord>,
    /// Records a checkpoint has written; a key is either here or in `resident`, never both.
    stored: StoredIndex,
    /// Keys by expiry log time, so that expiry reads only what is due. Each time's keys are in
    /// the order they were first stored (a push, not a sorted insert, per command); expiry
    /// sorts them.
    by_expiry: BTreeMap<u64, Vec<KeyFingerprint>>,
    source: Option<Arc<dyn RecordSource>>,
}

impl fmt::Debug for RetainedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedKeys")
            .field("resident", &self.resident.len())
            .field("stored", &self.stored.len())
            .finish()
    }
}

/// Equal when the same keys hold the same records: neither where a record is kept nor the
/// order in which a time's keys were stored is state.
impl PartialEq for RetainedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.sorted_index() == other.sorted_index()
            && self.sorted_encoded().into_iter().eq(other.sorted_encoded())
    }
}

impl Eq for RetainedKeys {}

fn decode(bytes: &[u8]) -> RetainedRecord {
    bincode::deserialize(bytes).expect("a retained record decodes: it is read back as it was encoded")
}

impl RetainedKeys {
    /// Records that left memory are read back through `source` from now on.
    pub fn set_source(&mut self, source: Arc<dyn RecordSource>) {
        self.source = Some(source);
    }

    fn stored_slot(&self, fingerprint: &KeyFingerprint) -> Option<RecordSlot> {
        self.stored.get(fingerprint)
    }

    fn read_stored(&self, fingerprint: &KeyFingerprint, slot: RecordSlot) -> Vec<u8> {
        let source =
            self.source.as_ref().expect("records leave memory only where a source can read them back");
        match source.read_record(slot) {
            Ok(bytes) => bytes,
            Err(error) => panic!("the record of retained key {fingerprint} cannot be read back: {error}"),
        }
    }

    /// The encoded record under `fingerprint`, from memory or read back.
    fn encoded(&self, fingerprint: &KeyFingerprint) -> Option<Cow<'_, [u8]>> {
        if let Some(resident) = self.resident.get(fingerprint) {
            return Some(Cow::Borrowed(&resident.bytes));
        }
        let slot = self.stored_slot(fingerprint)?;
        Some(Cow::Owned(self.read_stored(fingerprint, slot)))
    }

    /// The record under `fingerprint`, decoded.
    pub fn get(&self, fingerprint: &KeyFingerprint) -> Option<RetainedRecord> {
        self.encoded(fingerprint).map(|bytes| decode(&bytes))
    }

    /// The record under `fingerprint` as its expiry and encoded bytes, while it is in memory.
    pub fn resident(&self, fingerprint: &KeyFingerprint) -> Option<(u64, &Arc<[u8]>)> {
        self.resident.get(fingerprint).map(|record| (record.expires_at_ms, &record.bytes))
    }

    pub fn contains(&self, fingerprint: &KeyFingerprint) -> bool {
        self.resident.contains_key(fingerprint) || self.stored_slot(fingerprint).is_some()
    }

    pub fn len(&self) -> usize {
        self.resident.len() + self.stored.len()
    }

    /// How many records are held in memory (the others are in journals).
    pub fn resident_len(&self) -> usize {
        self.resident.len()
    }

    /// Stores `record` under its fingerprint (replacing the one there, which has the same
    /// expiry: a key's retention is fixed when it is first stored) and returns the fingerprint.
    pub fn put(&mut self, record: &RetainedRecord) -> KeyFingerprint {
        let fingerprint = record.fingerprint();
        let expires_at_ms = record.expires_at_ms();
        let bytes = bincode::serialize(record).expect("a retained record always encodes");
        let resident = ResidentRecord { expires_at_ms, bytes: bytes.into() };
        let was_stored = self.remove_stored(&fingerprint).is_some();
        match self.resident.insert(fingerprint, resident) {
            Some(old) => assert_eq!(old.expires_at_ms, expires_at_ms, "a retained key keeps its expiry"),
            None if was_stored => {}
            None => self.index_expiry(expires_at_ms, fingerprint),
        }
        fingerprint
    }

    /// Lists a new key at its expiry. Keys arrive in log time, so a time later than every
    /// listed one starts a new list: the previous last list is complete and gives back its
    /// spare capacity (up to half of a vector that doubles; millions of keys).
    fn index_expiry(&mut self, expires_at_ms: u64, fingerprint: KeyFingerprint) {
        if let Some(mut last) = self.by_expiry.last_entry() {
            if *last.key() < expires_at_ms {
                last.get_mut().shrink_to_fit();
            }
        }
        self.by_expiry.entry(expires_at_ms).or_default().push(fingerprint);
    }

    fn remove_stored(&mut self, fingerprint: &KeyFingerprint) -> Option<RecordSlot> {
        self.stored.remove(fingerprint)
    }

    /// Lets records leave memory once they are written: each `(fingerprint, slot, bytes)` names
    /// what a checkpoint wrote where. A record still in memory with exactly those bytes is
    /// dropped from memory and read back from its slot from now on; one changed since the
    /// copy (its new bytes go in a later journal) or already gone stays as it is. Returns how
    /// many records left memory.
    pub fn evict<'a>(
        &mut self,
        written: impl IntoIterator<Item = (KeyFingerprint, RecordSlot, &'a [u8])>,
    ) -> usize {
        assert!(self.source.is_some(), "records leave memory only where a source can read them back");
        let mut evicted = 0;
        for (fingerprint, slot, bytes) in written {
            if self.resident.get(&fingerprint).is_some_and(|record| *record.bytes == *bytes) {
                self.resident.remove(&fingerprint);
                self.stored.insert(fingerprint, slot);
                evicted += 1;
            }
        }
        evicted
    }

    /// Adds keys whose records are in storage already (a shard loading its checkpoint), in
    /// journal order: of a key loaded more than once (its record changed and went in a later
    /// journal), the slot loaded last wins. Call [`RetainedKeys::finish_loading`] after the
    /// last key; nothing else may touch the keys in between.
    pub fn load_stored(&mut self, keys: impl IntoIterator<Item = (KeyFingerprint, u64, RecordSlot)>) {
        assert!(self.resident.is_empty(), "keys are loaded before any record is in memory");
        for (fingerprint, expires_at_ms, slot) in keys {
            self.stored.load(fingerprint, slot);
            // A key loaded twice is listed twice here until `finish_loading`: it keeps its
            // expiry, so both are at the same time.
            self.by_expiry.entry(expires_at_ms).or_default().push(fingerprint);
        }
    }

    /// Ends loading: sorts the stored index and lists each key once in the expiry index.
    pub fn finish_loading(&mut self) {
        self.stored.finish_loading();
        for due in self.by_expiry.values_mut() {
            due.sort_unstable();
            due.dedup();
            due.shrink_to_fit();
        }
    }

    /// Drops every key whose expiry is at or before `now_ms`, in expiry then fingerprint order,
    /// and hands each to `forgotten`.
    pub fn expire_due(&mut self, now_ms: u64, mut forgotten: impl FnMut(KeyFingerprint)) {
        while self.by_expiry.first_key_value().is_some_and(|(expires_at_ms, _)| *expires_at_ms <= now_ms) {
            let Some((_, mut due)) = self.by_expiry.pop_first() else {
                break;
            };
            due.sort_unstable();
            for fingerprint in due {
                let removed = self.resident.remove(&fingerprint).is_some()
                    || self.remove_stored(&fingerprint).is_some();
                assert!(removed, "the expiry index names only retained keys");
                forgotten(fingerprint);
            }
        }
    }

    /// Every key's encoded record, in fingerprint order (stored ones are read back).
    pub fn sorted_encoded(&self) -> Vec<(KeyFingerprint, Cow<'_, [u8]>)> {
        let mut fingerprints: Vec<KeyFingerprint> =
            self.resident.sorted().into_iter().map(|(key, _)| *key).collect();
        fingerprints.extend(self.stored.iter().map(|(key, _)| *key));
        fingerprints.sort_unstable();
        // Stored records are read in slot order, journal after journal, so that a source that
        // keeps the journal it read last reads each journal once (in fingerprint order every
        // record was a read of its whole journal).
        let mut stored: Vec<(RecordSlot, usize)> = fingerprints
            .iter()
            .enumerate()
            .filter(|(_, fingerprint)| !self.resident.contains_key(*fingerprint))
            .filter_map(|(position, fingerprint)| self.stored_slot(fingerprint).map(|slot| (slot, position)))
            .collect();
        stored.sort_unstable_by_key(|(slot, _)| (slot.journal, slot.offset_bytes));
        let mut read: Vec<Option<Vec<u8>>> = vec![None; fingerprints.len()];
        for (slot, position) in stored {
            read[position] = Some(self.read_stored(&fingerprints[position], slot));
        }
        fingerprints
            .into_iter()
            .zip(read)
            .map(|(fingerprint, read)| {
                let bytes = match read {
                    Some(bytes) => Cow::Owned(bytes),
                    None => self.encoded(&fingerprint).expect("listed keys are retained"),
                };
                (fingerprint, bytes)
            })
            .collect()
    }

    /// A copy holding every record in memory (stored ones read back), with no source: it stays
    /// readable whatever happens to the storage afterwards.
    pub fn in_memory_copy(&self) -> RetainedKeys {
        let mut copy = RetainedKeys { by_expiry: self.by_expiry.clone(), ..RetainedKeys::default() };
        for (fingerprint, bytes) in self.sorted_encoded() {
            let expires_at_ms = decode(&bytes).expires_at_ms();
            copy.resident.insert(fingerprint, ResidentRecord { expires_at_ms, bytes: Arc::from(&*bytes) });
        }
        copy
    }

    /// Every record, decoded, in fingerprint order.
    pub fn sorted_records(&self) -> Vec<RetainedRecord> {
        self.sorted_encoded().into_iter().map(|(_, bytes)| decode(&bytes)).collect()
    }

    fn sorted_index(&self) -> BTreeMap<u64, Vec<KeyFingerprint>> {
        let mut indexed = self.by_expiry.clone();
        indexed.values_mut().for_each(|due| due.sort_unstable());
        indexed
    }

    /// The audit: each record is stored under its own fingerprint with its own expiry, a key is
    /// kept in one place only, and the expiry index names exactly the retained keys, each once,
    /// at their expiry.
    pub fn check(&self) -> Result<(), String> {
        self.stored.check()?;
        let mut expected: BTreeMap<u64, Vec<KeyFingerprint>> = BTreeMap::new();
        for (fingerprint, bytes) in self.sorted_encoded() {
            let record = decode(&bytes);
            if record.fingerprint() != fingerprint {
                return Err(format!(
                    "the record of {}/{} is stored under another fingerprint",
                    record.partner_id, record.key
                ));
            }
            if self.resident.contains_key(&fingerprint) && self.stored_slot(&fingerprint).is_some() {
                return Err(format!("{}/{} is both in memory and stored", record.partner_id, record.key));
            }
            if let Some(resident) = self.resident.get(&fingerprint) {
                if resident.expires_at_ms != record.expires_at_ms() {
                    return Err(format!(
                        "the expiry of {}/{} differs from its record's",
                        record.partner_id, record.key
                    ));
                }
            }
            expected.entry(record.expires_at_ms()).or_default().push(fingerprint);
        }
        if self.sorted_index() != expected {
            return Err("the retained keys' expiry index does not match the keys".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
impl RetainedKeys {
    /// Stores `record` under a fingerprint of the test's choosing: a collision on demand.
    pub fn put_under(&mut self, fingerprint: KeyFingerprint, record: &RetainedRecord) {
        let bytes = bincode::serialize(record).expect("a retained record always encodes");
        let expires_at_ms = record.expires_at_ms();
        self.resident.insert(fingerprint, ResidentRecord { expires_at_ms, bytes: bytes.into() });
        self.by_expiry.entry(expires_at_ms).or_default().push(fingerprint);
    }
}
