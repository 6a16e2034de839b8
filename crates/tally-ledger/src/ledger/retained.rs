//! Retained keys: every idempotency key a shard remembers until its retention ends, with the
//! record of its first request, answer and earn.
//!
//! A shard retains every key for days (seven by default), so this is the one part of the state
//! that grows with traffic rather than with members. Memory holds, per key, its 16-byte
//! [`KeyFingerprint`], its expiry and the record encoded as one allocation (its canonical
//! bincode bytes, which the digest hashes as they are). A record is decoded only when its key
//! comes back: a replay, a reuse with another request, or a reversal of the earn it names. A
//! hit compares the decoded partner and key with the caller's exactly, so a fingerprint
//! collision can never answer for another key.

use std::collections::BTreeMap;

use crate::keyed::KeyedMap;
use crate::state::{KeyFingerprint, RetainedRecord};

#[derive(Clone, Debug, PartialEq, Eq)]
struct RetainedEntry {
    expires_at_ms: u64,
    /// `bincode` (default options) of the [`RetainedRecord`].
    record: Box<[u8]>,
}

/// The retained keys of one shard and their expiry index.
#[derive(Clone, Debug, Default)]
pub(super) struct RetainedKeys {
    entries: KeyedMap<KeyFingerprint, RetainedEntry>,
    /// Keys by expiry log time, so that expiry reads only what is due. Each time's keys are in
    /// the order they were first stored (a push, not a sorted insert, per command); expiry
    /// sorts them.
    by_expiry: BTreeMap<u64, Vec<KeyFingerprint>>,
}

/// Equal when the same keys hold the same records: the order in which a time's keys were
/// stored is not state.
impl PartialEq for RetainedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.sorted_index() == other.sorted_index()
    }
}

impl Eq for RetainedKeys {}

fn decode(bytes: &[u8]) -> RetainedRecord {
    bincode::deserialize(bytes).expect("a retained record decodes: memory holds only what it encoded")
}

impl RetainedKeys {
    /// The record under `fingerprint`, decoded.
    pub fn get(&self, fingerprint: &KeyFingerprint) -> Option<RetainedRecord> {
        self.entries.get(fingerprint).map(|entry| decode(&entry.record))
    }

    pub fn contains(&self, fingerprint: &KeyFingerprint) -> bool {
        self.entries.contains_key(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Stores `record` under its fingerprint (replacing the one there) and returns the
    /// fingerprint.
    pub fn put(&mut self, record: &RetainedRecord) -> KeyFingerprint {
        let fingerprint = record.fingerprint();
        let expires_at_ms = record.expires_at_ms();
        let bytes = bincode::serialize(record).expect("a retained record always encodes");
        let entry = RetainedEntry { expires_at_ms, record: bytes.into_boxed_slice() };
        match self.entries.insert(fingerprint, entry) {
            Some(old) if old.expires_at_ms == expires_at_ms => {}
            Some(old) => {
                self.unschedule(old.expires_at_ms, &fingerprint);
                self.by_expiry.entry(expires_at_ms).or_default().push(fingerprint);
            }
            None => self.by_expiry.entry(expires_at_ms).or_default().push(fingerprint),
        }
        fingerprint
    }

    fn unschedule(&mut self, expires_at_ms: u64, fingerprint: &KeyFingerprint) {
        if let Some(due) = self.by_expiry.get_mut(&expires_at_ms) {
            due.retain(|other| other != fingerprint);
            if due.is_empty() {
                self.by_expiry.remove(&expires_at_ms);
            }
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
                let removed = self.entries.remove(&fingerprint);
                assert!(removed.is_some(), "the expiry index names only retained keys");
                forgotten(fingerprint);
            }
        }
    }

    /// Every key's encoded record, in fingerprint order.
    pub fn sorted_encoded(&self) -> Vec<(&KeyFingerprint, &[u8])> {
        self.entries.sorted().into_iter().map(|(fingerprint, entry)| (fingerprint, &*entry.record)).collect()
    }

    /// Every record, decoded, in fingerprint order.
    pub fn sorted_records(&self) -> Vec<RetainedRecord> {
        self.entries.sorted().into_iter().map(|(_, entry)| decode(&entry.record)).collect()
    }

    fn sorted_index(&self) -> BTreeMap<u64, Vec<KeyFingerprint>> {
        let mut indexed = self.by_expiry.clone();
        indexed.values_mut().for_each(|due| due.sort_unstable());
        indexed
    }

    /// The audit: each record is stored under its own fingerprint with its own expiry, and the
    /// expiry index names exactly the stored keys, each once, at their expiry.
    pub fn check(&self) -> Result<(), String> {
        let mut expected: BTreeMap<u64, Vec<KeyFingerprint>> = BTreeMap::new();
        for (fingerprint, entry) in self.entries.sorted() {
            let record = decode(&entry.record);
            if record.fingerprint() != *fingerprint {
                return Err(format!(
                    "the record of {}/{} is stored under another fingerprint",
                    record.partner_id, record.key
                ));
            }
            if record.expires_at_ms() != entry.expires_at_ms {
                return Err(format!(
                    "the expiry of {}/{} differs from its record's",
                    record.partner_id, record.key
                ));
            }
            expected.entry(entry.expires_at_ms).or_default().push(*fingerprint);
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
        self.entries.insert(fingerprint, RetainedEntry { expires_at_ms, record: bytes.into_boxed_slice() });
        self.by_expiry.entry(expires_at_ms).or_default().push(fingerprint);
    }
}
