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
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::keyed::KeyedMap;
use crate::state::{KeyFingerprint, RetainedRecord};

use super::stored_index::{fingerprint_prefix, StoredIndex};

/// Where the storage layer keeps a record that left memory: which journal, and where in it
/// the record starts (the storage layer frames each record with its length). Opaque to the
/// ledger; 8 bytes, because a shard holds millions of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSlot {
    /// The storage layer's number for the journal holding the record.
    pub journal: u32,
    pub offset_bytes: u32,
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

/// The keys that expire at one log time.
///
/// Every retained key is listed once, at its expiry: by its whole fingerprint while its record
/// is in memory (and until the next [`RetainedKeys::compact_expiry`] after it left), then by
/// its fingerprint's first four bytes alone. At tens of millions of keys the expiry index was
/// 16 bytes per key, the largest structure after the stored index; it is 4 now. A prefix is
/// enough to find the key among the stored ones (they are sorted by fingerprint); when other
/// stored keys share it, their expiry tells them apart (see [`RetainedKeys::expire_due`]).
#[derive(Clone, Debug, Default)]
struct ExpiryList {
    whole: Vec<KeyFingerprint>,
    prefixes: Vec<u32>,
}

impl ExpiryList {
    /// Drops one listing of `fingerprint` by prefix (which one does not matter: they are equal).
    fn unlist_prefix(&mut self, fingerprint: &KeyFingerprint) {
        let prefix = fingerprint_prefix(fingerprint);
        let position = self
            .prefixes
            .iter()
            .position(|listed| *listed == prefix)
            .expect("a stored key is listed by prefix at its expiry");
        self.prefixes.swap_remove(position);
    }
}

/// The retained keys of one shard and their expiry index.
#[derive(Clone, Default)]
pub(super) struct RetainedKeys {
    /// Records not written to a journal yet (or changed since): a checkpoint's worth of keys.
    resident: KeyedMap<KeyFingerprint, ResidentRecord>,
    /// Records a checkpoint has written; a key is either here or in `resident`, never both.
    stored: StoredIndex,
    /// Keys by expiry log time, so that expiry reads only what is due. Each time's keys are in
    /// the order they were listed (a push, not a sorted insert, per command).
    by_expiry: BTreeMap<u64, ExpiryList>,
    /// The times whose lists name keys by whole fingerprint that may have left memory.
    uncompacted: BTreeSet<u64>,
    /// The times the compaction under way has yet to look at, latest first (see
    /// [`RetainedKeys::compact_expiry`]).
    compacting: Vec<u64>,
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

/// Equal when the same keys hold the same records: neither where a record is kept nor how
/// the expiry index names it is state (a record holds its expiry; `check` audits the index).
impl PartialEq for RetainedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.sorted_encoded().into_iter().eq(other.sorted_encoded())
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
            None if was_stored => self.relist_whole(expires_at_ms, fingerprint),
            None => self.index_expiry(expires_at_ms, fingerprint),
        }
        fingerprint
    }

    /// Lists a new key at its expiry.
    fn index_expiry(&mut self, expires_at_ms: u64, fingerprint: KeyFingerprint) {
        self.by_expiry.entry(expires_at_ms).or_default().whole.push(fingerprint);
        self.uncompacted.insert(expires_at_ms);
    }

    /// A stored key came back into memory (its record changed): it is listed by its whole
    /// fingerprint again, since expiry finds only stored keys by prefix. Rare (a reversal of
    /// an earn written before), so a scan of one time's list is fine.
    fn relist_whole(&mut self, expires_at_ms: u64, fingerprint: KeyFingerprint) {
        let list = self.by_expiry.get_mut(&expires_at_ms).expect("a retained key is listed at its expiry");
        if list.whole.contains(&fingerprint) {
            // Not compacted yet: still listed whole.
            return;
        }
        list.unlist_prefix(&fingerprint);
        list.whole.push(fingerprint);
        self.uncompacted.insert(expires_at_ms);
    }

    /// Lists by prefix the keys listed whole whose records left memory. One pass looks at
    /// every time listed whole when it started, `entries_max` listed keys per call; returns
    /// whether the pass is over. A checkpoint calls it after its records left memory, in
    /// slices under the state lock, until it returns true.
    pub fn compact_expiry(&mut self, entries_max: usize) -> bool {
        if self.compacting.is_empty() {
            self.compacting = std::mem::take(&mut self.uncompacted).into_iter().rev().collect();
        }
        let mut visited = 0;
        while visited < entries_max {
            let Some(expires_at_ms) = self.compacting.pop() else { break };
            let Some(list) = self.by_expiry.get_mut(&expires_at_ms) else { continue };
            visited += list.whole.len();
            let resident = &self.resident;
            let before = list.prefixes.len();
            list.whole.retain(|fingerprint| {
                let in_memory = resident.contains_key(fingerprint);
                if !in_memory {
                    list.prefixes.push(fingerprint_prefix(fingerprint));
                }
                in_memory
            });
            if list.whole.is_empty() {
                list.whole = Vec::new();
            } else {
                // Not written yet, or changed since: looked at again by the next pass.
                self.uncompacted.insert(expires_at_ms);
            }
            if list.prefixes.len() != before {
                list.prefixes.shrink_to_fit();
            }
        }
        self.compacting.is_empty()
    }

    fn remove_stored(&mut self, fingerprint: &KeyFingerprint) -> Option<RecordSlot> {
        self.stored.remove(fingerprint)
    }

    /// Lets records leave memory once they are written: each `(fingerprint, slot, bytes)` names
    /// what a checkpoint wrote where. A record still in memory with exactly those bytes is
    /// dropped from memory and read back from its slot from now on; one changed since the
    /// copy (its new bytes go in a later journal) or already gone stays as it is. Returns how
    /// many records left memory.
    pub fn evict<Bytes: AsRef<[u8]>>(
        &mut self,
        written: impl IntoIterator<Item = (KeyFingerprint, RecordSlot, Bytes)>,
    ) -> usize {
        assert!(self.source.is_some(), "records leave memory only where a source can read them back");
        let mut evicted = 0;
        for (fingerprint, slot, bytes) in written {
            let bytes = bytes.as_ref();
            // The checkpoint's copy shares the record's allocation while the record is
            // unchanged: the same address is the common case, and spares comparing hundreds of
            // bytes (a cache miss each) per record.
            let unchanged = |record: &ResidentRecord| {
                std::ptr::eq(record.bytes.as_ptr(), bytes.as_ptr()) && record.bytes.len() == bytes.len()
                    || *record.bytes == *bytes
            };
            if self.resident.get(&fingerprint).is_some_and(unchanged) {
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
        // Keys come in runs of one expiry (a journal holds whole batches): one map lookup per
        // run, not per key.
        let mut run: Option<(u64, Vec<u32>)> = None;
        for (fingerprint, expires_at_ms, slot) in keys {
            self.stored.load(fingerprint, slot);
            // A key loaded twice is listed twice here until `finish_loading`: it keeps its
            // expiry, so both are at the same time.
            let prefix = fingerprint_prefix(&fingerprint);
            match &mut run {
                Some((time, prefixes)) if *time == expires_at_ms => prefixes.push(prefix),
                _ => {
                    if let Some((time, prefixes)) = run.replace((expires_at_ms, vec![prefix])) {
                        self.by_expiry.entry(time).or_default().prefixes.extend(prefixes);
                    }
                }
            }
        }
        if let Some((time, prefixes)) = run {
            self.by_expiry.entry(time).or_default().prefixes.extend(prefixes);
        }
    }

    /// Ends loading: sorts the stored index and lists each key once in the expiry index (a
    /// key loaded twice, rare, is read back for the time it is listed at).
    pub fn finish_loading(&mut self) {
        for fingerprint in self.stored.finish_loading() {
            let slot = self.stored_slot(&fingerprint).expect("a key loaded twice is stored");
            let expires_at_ms = decode(&self.read_stored(&fingerprint, slot)).expires_at_ms();
            let list = self.by_expiry.get_mut(&expires_at_ms).expect("a loaded key is listed at its expiry");
            list.unlist_prefix(&fingerprint);
        }
        for list in self.by_expiry.values_mut() {
            list.prefixes.shrink_to_fit();
        }
    }

    /// Drops every key whose expiry is at or before `now_ms` and hands each to `forgotten`, in
    /// fingerprint order.
    ///
    /// A key listed by prefix is a stored one with that prefix. When the stored keys with a
    /// due prefix are exactly as many as the due listings of it, they are the due keys; when
    /// more share it (about one prefix in 200 at 20 million keys), each one's record is read
    /// for its expiry. Either way the outcome follows from the state alone.
    pub fn expire_due(&mut self, now_ms: u64, mut forgotten: impl FnMut(KeyFingerprint)) {
        let mut due_whole = Vec::new();
        let mut due_prefixes = Vec::new();
        while self.by_expiry.first_key_value().is_some_and(|(expires_at_ms, _)| *expires_at_ms <= now_ms) {
            let Some((expires_at_ms, list)) = self.by_expiry.pop_first() else {
                break;
            };
            self.uncompacted.remove(&expires_at_ms);
            // A time still in `compacting` is skipped there once its list is gone.
            due_whole.extend(list.whole);
            due_prefixes.extend(list.prefixes);
        }
        if due_whole.is_empty() && due_prefixes.is_empty() {
            return;
        }
        let mut expired = Vec::with_capacity(due_whole.len() + due_prefixes.len());
        // Keys listed whole first: a stored one among them is not a prefix candidate after.
        for fingerprint in due_whole {
            let removed =
                self.resident.remove(&fingerprint).is_some() || self.remove_stored(&fingerprint).is_some();
            assert!(removed, "the expiry index names only retained keys");
            expired.push(fingerprint);
        }
        due_prefixes.sort_unstable();
        for run in due_prefixes.chunk_by(|a, b| a == b) {
            let (prefix, due) = (run[0], run.len());
            let candidates = self.stored.with_prefix(prefix);
            let due_keys: Vec<KeyFingerprint> = if candidates.len() == due {
                candidates.into_iter().map(|(fingerprint, _)| fingerprint).collect()
            } else {
                candidates
                    .into_iter()
                    .filter(|(fingerprint, slot)| {
                        decode(&self.read_stored(fingerprint, *slot)).expires_at_ms() <= now_ms
                    })
                    .map(|(fingerprint, _)| fingerprint)
                    .collect()
            };
            assert_eq!(due_keys.len(), due, "the expiry index lists each retained key once, at its expiry");
            for fingerprint in due_keys {
                self.remove_stored(&fingerprint);
                expired.push(fingerprint);
            }
        }
        expired.sort_unstable();
        for fingerprint in expired {
            forgotten(fingerprint);
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
        let mut copy = RetainedKeys::default();
        for (fingerprint, bytes) in self.sorted_encoded() {
            let expires_at_ms = decode(&bytes).expires_at_ms();
            copy.resident.insert(fingerprint, ResidentRecord { expires_at_ms, bytes: Arc::from(&*bytes) });
            copy.by_expiry.entry(expires_at_ms).or_default().whole.push(fingerprint);
        }
        copy
    }

    /// Every record, decoded, in fingerprint order.
    pub fn sorted_records(&self) -> Vec<RetainedRecord> {
        self.sorted_encoded().into_iter().map(|(_, bytes)| decode(&bytes)).collect()
    }

    /// The expiry index as `(time, prefix)` listings, sorted, checking on the way that every
    /// key listed whole is retained with that expiry, once, and every record in memory is
    /// listed whole.
    fn checked_listings(&self) -> Result<Vec<(u64, u32)>, String> {
        let mut listings = Vec::with_capacity(self.len());
        let mut listed_whole = BTreeSet::new();
        for (expires_at_ms, list) in &self.by_expiry {
            for fingerprint in &list.whole {
                if !listed_whole.insert(*fingerprint) {
                    return Err(format!("retained key {fingerprint} is listed twice"));
                }
                match self.get(fingerprint) {
                    Some(record) if record.expires_at_ms() == *expires_at_ms => {}
                    Some(_) => return Err(format!("retained key {fingerprint} is listed at another time")),
                    None => {
                        return Err(format!("the expiry index lists {fingerprint}, which is not retained"))
                    }
                }
                listings.push((*expires_at_ms, fingerprint_prefix(fingerprint)));
            }
            listings.extend(list.prefixes.iter().map(|prefix| (*expires_at_ms, *prefix)));
        }
        if let Some((fingerprint, _)) =
            self.resident.sorted().into_iter().find(|(key, _)| !listed_whole.contains(*key))
        {
            return Err(format!("retained key {fingerprint} is in memory but not listed whole"));
        }
        listings.sort_unstable();
        Ok(listings)
    }

    /// The audit: each record is stored under its own fingerprint with its own expiry, a key is
    /// kept in one place only, and the expiry index names exactly the retained keys, each once,
    /// at their expiry.
    pub fn check(&self) -> Result<(), String> {
        self.stored.check()?;
        let mut expected = Vec::with_capacity(self.len());
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
            expected.push((record.expires_at_ms(), fingerprint_prefix(&fingerprint)));
        }
        expected.sort_unstable();
        if self.checked_listings()? != expected {
            return Err("the retained keys' expiry index does not match the keys".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
impl RetainedKeys {
    /// How many keys the expiry index lists by prefix only.
    pub fn listed_by_prefix(&self) -> usize {
        self.by_expiry.values().map(|list| list.prefixes.len()).sum()
    }

    /// Stores `record` under a fingerprint of the test's choosing: a collision on demand.
    pub fn put_under(&mut self, fingerprint: KeyFingerprint, record: &RetainedRecord) {
        let bytes = bincode::serialize(record).expect("a retained record always encodes");
        let expires_at_ms = record.expires_at_ms();
        self.resident.insert(fingerprint, ResidentRecord { expires_at_ms, bytes: bytes.into() });
        self.by_expiry.entry(expires_at_ms).or_default().whole.push(fingerprint);
    }
}
