//! Where every stored retained record is: a fingerprint and a [`RecordSlot`] per key, 24 bytes,
//! for tens of millions of keys.
//!
//! A hash map of these entries holds them at hashbrown's load factor (between 7/16 and 7/8
//! full) and rehashes every key as it doubles; at 20 million keys that was about 45 bytes per
//! key, and a restart spent a quarter of its time in its inserts. Here the keys are split by
//! their fingerprint's leading bits into buckets of about a hundred to a few hundred entries,
//! each a vector sorted by fingerprint that grows by an eighth: about 25 bytes per key. A
//! lookup is a binary search in one bucket; an insert moves a few kilobytes at most. When the
//! buckets fill up, each is split in two by the next bit of the fingerprint, which keeps every
//! half in order, so the structure never holds two copies of itself.
//!
//! A restart loads tens of millions of keys in journal order, in random fingerprint order: they
//! are appended to 256 groups by their first byte (256 write streams, not a cache miss per key
//! into the buckets), then each group is sorted on its own and cut into buckets
//! ([`StoredIndex::finish_loading`]); the latest slot of a key loaded twice wins.

use crate::state::KeyFingerprint;

use super::retained::RecordSlot;

/// The bucket count starts at `1 << BUCKET_BITS_MIN` and doubles up to `1 << BUCKET_BITS_MAX`.
/// Past 16.8 M keys the buckets grow instead of doubling again: a doubling at that size
/// reallocates the whole index at once, and in a probe of 20 M inserts under mimalloc the one
/// at 16.8 M keys raised resident memory by 350-600 MB that it never gave back (754 MB resident
/// at 20 M keys with the buckets kept at 65,536, against 832-1,190 MB with a doubling to 131,072).
/// Buckets of 300-400 entries still insert by moving a few KiB.
const BUCKET_BITS_MIN: u32 = 8;
const BUCKET_BITS_MAX: u32 = 16;
/// The buckets double when they hold this many entries each on average.
const BUCKET_ENTRIES_SPLIT_AT: usize = 256;
/// Loading groups keys by their first byte.
const LOADING_GROUPS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StoredEntry {
    fingerprint: KeyFingerprint,
    slot: RecordSlot,
}

/// Fingerprint → slot for the records a checkpoint wrote, iterable in fingerprint order.
#[derive(Clone, Debug, Default)]
pub(super) struct StoredIndex {
    /// Empty until the first key, then `1 << bucket_bits` buckets.
    buckets: Vec<Vec<StoredEntry>>,
    bucket_bits: u32,
    len: usize,
    /// Between [`StoredIndex::load`] and [`StoredIndex::finish_loading`]: the keys loaded so
    /// far, by their first byte, unsorted, a key perhaps more than once.
    loading: Option<Vec<Vec<StoredEntry>>>,
}

/// A fingerprint's first four bytes: what the expiry index keeps of a stored key.
pub(super) fn fingerprint_prefix(fingerprint: &KeyFingerprint) -> u32 {
    let [a, b, c, d, ..] = fingerprint.0;
    u32::from_be_bytes([a, b, c, d])
}

/// The bucket of the keys starting with `prefix` among `1 << bits` (`bits` from 1 to 32).
fn prefix_bucket(prefix: u32, bits: u32) -> usize {
    (u64::from(prefix) >> (32 - bits)) as usize
}

/// The bucket of `fingerprint` among `1 << bits` (`bits` from 1 to 32).
fn leading_bits(fingerprint: &KeyFingerprint, bits: u32) -> usize {
    prefix_bucket(fingerprint_prefix(fingerprint), bits)
}

/// Room for one more entry, growing by an eighth rather than doubling: tens of millions of
/// entries leave little slack.
fn reserve_one(bucket: &mut Vec<StoredEntry>) {
    if bucket.len() == bucket.capacity() {
        bucket.reserve_exact((bucket.len() / 8).max(4));
    }
}

/// Gives back what a bucket that shrank no longer needs.
fn trim(bucket: &mut Vec<StoredEntry>) {
    if bucket.capacity() > bucket.len() + bucket.len() / 4 + 4 {
        bucket.shrink_to(bucket.len() + bucket.len() / 8);
    }
}

impl StoredIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    fn bucket(&self, fingerprint: &KeyFingerprint) -> Option<&Vec<StoredEntry>> {
        debug_assert!(self.loading.is_none(), "lookups wait until loading is finished");
        if self.buckets.is_empty() {
            return None;
        }
        self.buckets.get(leading_bits(fingerprint, self.bucket_bits))
    }

    pub fn get(&self, fingerprint: &KeyFingerprint) -> Option<RecordSlot> {
        let bucket = self.bucket(fingerprint)?;
        let position = bucket.binary_search_by(|entry| entry.fingerprint.cmp(fingerprint)).ok()?;
        Some(bucket[position].slot)
    }

    /// The keys whose fingerprint starts with `prefix` (see [`fingerprint_prefix`]), in
    /// fingerprint order: all in one bucket, since buckets split by at most 32 leading bits.
    pub fn with_prefix(&self, prefix: u32) -> Vec<(KeyFingerprint, RecordSlot)> {
        debug_assert!(self.loading.is_none(), "lookups wait until loading is finished");
        let Some(bucket) = self.buckets.get(prefix_bucket(prefix, self.bucket_bits)) else {
            return Vec::new();
        };
        let first = bucket.partition_point(|entry| fingerprint_prefix(&entry.fingerprint) < prefix);
        bucket[first..]
            .iter()
            .take_while(|entry| fingerprint_prefix(&entry.fingerprint) == prefix)
            .map(|entry| (entry.fingerprint, entry.slot))
            .collect()
    }

    fn ensure_buckets(&mut self) {
        if self.buckets.is_empty() {
            self.bucket_bits = BUCKET_BITS_MIN;
            self.buckets = vec![Vec::new(); 1 << BUCKET_BITS_MIN];
        }
    }

    /// Stores `slot` under `fingerprint`, returning the slot it replaced.
    pub fn insert(&mut self, fingerprint: KeyFingerprint, slot: RecordSlot) -> Option<RecordSlot> {
        assert!(self.loading.is_none(), "inserts wait until loading is finished");
        self.ensure_buckets();
        let bits = self.bucket_bits;
        let bucket = &mut self.buckets[leading_bits(&fingerprint, bits)];
        match bucket.binary_search_by(|entry| entry.fingerprint.cmp(&fingerprint)) {
            Ok(position) => Some(std::mem::replace(&mut bucket[position].slot, slot)),
            Err(position) => {
                reserve_one(bucket);
                bucket.insert(position, StoredEntry { fingerprint, slot });
                self.len += 1;
                self.split_if_full();
                None
            }
        }
    }

    pub fn remove(&mut self, fingerprint: &KeyFingerprint) -> Option<RecordSlot> {
        assert!(self.loading.is_none(), "removals wait until loading is finished");
        if self.buckets.is_empty() {
            return None;
        }
        let bits = self.bucket_bits;
        let bucket = self.buckets.get_mut(leading_bits(fingerprint, bits))?;
        let position = bucket.binary_search_by(|entry| entry.fingerprint.cmp(fingerprint)).ok()?;
        let removed = bucket.remove(position);
        trim(bucket);
        self.len -= 1;
        Some(removed.slot)
    }

    /// Adds a key while loading (into an empty index): unsorted, duplicates allowed, until
    /// [`StoredIndex::finish_loading`].
    pub fn load(&mut self, fingerprint: KeyFingerprint, slot: RecordSlot) {
        if self.loading.is_none() {
            assert!(self.buckets.is_empty(), "keys are loaded into an empty index only");
        }
        let groups = self.loading.get_or_insert_with(|| vec![Vec::new(); LOADING_GROUPS]);
        let group = &mut groups[usize::from(fingerprint.0[0])];
        if group.len() == group.capacity() {
            // By half: a group holds a few MiB at most, and doubling would leave up to half of
            // the whole load spare at the end.
            group.reserve_exact((group.len() / 2).max(64));
        }
        group.push(StoredEntry { fingerprint, slot });
    }

    /// Sorts what was loaded into buckets, group by group, keeping of a key loaded more than
    /// once the slot loaded last. Returns each key loaded more than once, once per extra load.
    pub fn finish_loading(&mut self) -> Vec<KeyFingerprint> {
        let mut loaded_again = Vec::new();
        let Some(groups) = self.loading.take() else { return loaded_again };
        let loaded: usize = groups.iter().map(Vec::len).sum();
        if loaded == 0 {
            return loaded_again;
        }
        let mut bits = BUCKET_BITS_MIN;
        while loaded > (1 << bits) * BUCKET_ENTRIES_SPLIT_AT && bits < BUCKET_BITS_MAX {
            bits += 1;
        }
        self.bucket_bits = bits;
        self.buckets = Vec::with_capacity(1 << bits);
        self.len = 0;
        for mut group in groups {
            // Stable: a key's slots stay in the order they were loaded.
            group.sort_by_key(|entry| entry.fingerprint);
            group.dedup_by(|later, kept| {
                let same = later.fingerprint == kept.fingerprint;
                if same {
                    kept.slot = later.slot;
                    loaded_again.push(kept.fingerprint);
                }
                same
            });
            self.len += group.len();
            // The group's buckets, in order; the group is sorted, so each is one run of it.
            let first_bucket = self.buckets.len();
            let mut rest = &group[..];
            for bucket in first_bucket..first_bucket + (1 << (bits - 8)) {
                let run = rest.partition_point(|entry| leading_bits(&entry.fingerprint, bits) == bucket);
                self.buckets.push(rest[..run].to_vec());
                rest = &rest[run..];
            }
            assert!(rest.is_empty(), "a group's keys fall in its own buckets");
        }
        loaded_again
    }

    /// Doubles the buckets when they are full on average: each bucket splits in two by the
    /// next bit of its keys, in order, so the halves stay sorted.
    fn split_if_full(&mut self) {
        if self.len <= self.buckets.len() * BUCKET_ENTRIES_SPLIT_AT || self.bucket_bits >= BUCKET_BITS_MAX {
            return;
        }
        let bits = self.bucket_bits + 1;
        let mut split = Vec::with_capacity(self.buckets.len() * 2);
        for mut low in std::mem::take(&mut self.buckets) {
            // Sorted, so the keys whose next bit is 0 come first: the high half is split off
            // at exactly its length, and the low half keeps the allocation, trimmed.
            let first_high =
                low.partition_point(|entry| leading_bits(&entry.fingerprint, bits).is_multiple_of(2));
            let high = low.split_off(first_high);
            trim(&mut low);
            split.push(low);
            split.push(high);
        }
        self.buckets = split;
        self.bucket_bits = bits;
    }

    /// Every key and slot, in fingerprint order.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyFingerprint, RecordSlot)> + '_ {
        debug_assert!(self.loading.is_none(), "iteration waits until loading is finished");
        self.buckets.iter().flatten().map(|entry| (&entry.fingerprint, entry.slot))
    }

    /// The audit: each bucket is sorted, without duplicates, and holds only its own keys.
    pub fn check(&self) -> Result<(), String> {
        if self.loading.is_some() {
            return Err("the stored index is still loading".to_string());
        }
        let mut counted = 0;
        for (position, bucket) in self.buckets.iter().enumerate() {
            if bucket.windows(2).any(|pair| pair[0].fingerprint >= pair[1].fingerprint) {
                return Err(format!("stored bucket {position} is not strictly sorted"));
            }
            if bucket.iter().any(|entry| leading_bits(&entry.fingerprint, self.bucket_bits) != position) {
                return Err(format!("stored bucket {position} holds another bucket's key"));
            }
            counted += bucket.len();
        }
        if counted != self.len {
            return Err(format!("{counted} records are stored but {} are counted", self.len));
        }
        Ok(())
    }
}

/// Equal when the same keys have the same slots.
impl PartialEq for StoredIndex {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for StoredIndex {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn fingerprint(seed: u64) -> KeyFingerprint {
        // Spread over the leading bits as SHA-256 does.
        let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ seed;
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&mixed.to_be_bytes());
        bytes[8..].copy_from_slice(&seed.to_be_bytes());
        KeyFingerprint(bytes)
    }

    fn slot(value: u32) -> RecordSlot {
        RecordSlot { journal: value, offset_bytes: value.wrapping_mul(2_654_435_761) }
    }

    #[test]
    fn inserts_removals_and_splits_agree_with_a_btree_map() {
        let mut index = StoredIndex::default();
        let mut model = BTreeMap::new();
        // Enough keys to split the buckets several times over.
        let keys = 3 * BUCKET_ENTRIES_SPLIT_AT * (1 << (BUCKET_BITS_MIN + 1));
        for seed in 0..keys as u64 {
            assert_eq!(
                index.insert(fingerprint(seed), slot(seed as u32)),
                model.insert(fingerprint(seed), slot(seed as u32))
            );
            if seed % 3 == 0 {
                let replaced = seed / 2;
                assert_eq!(
                    index.insert(fingerprint(replaced), slot(7)),
                    model.insert(fingerprint(replaced), slot(7))
                );
            }
            if seed % 5 == 0 {
                let gone = seed / 3;
                assert_eq!(index.remove(&fingerprint(gone)), model.remove(&fingerprint(gone)));
            }
        }
        assert!(index.bucket_bits > BUCKET_BITS_MIN + 1, "the buckets split");
        assert_eq!(index.check(), Ok(()));
        assert_eq!(index.len(), model.len());
        assert!(index
            .iter()
            .map(|(key, slot)| (*key, slot))
            .eq(model.iter().map(|(key, slot)| (*key, *slot))));
        for seed in 0..keys as u64 + 10 {
            assert_eq!(index.get(&fingerprint(seed)), model.get(&fingerprint(seed)).copied());
        }
        // Keys sharing their first four bytes: found together, and only they.
        let twins: Vec<KeyFingerprint> = (0..3u8)
            .map(|last| {
                let mut twin = fingerprint(5);
                twin.0[15] = twin.0[15].wrapping_add(last);
                twin
            })
            .collect();
        for twin in &twins {
            index.insert(*twin, slot(9));
            model.insert(*twin, slot(9));
        }
        for seed in (0..keys as u64).step_by(97).chain([5]) {
            let prefix = fingerprint_prefix(&fingerprint(seed));
            let mut lowest = [0; 16];
            lowest[..4].copy_from_slice(&prefix.to_be_bytes());
            let mut highest = [0xff; 16];
            highest[..4].copy_from_slice(&prefix.to_be_bytes());
            let expected: Vec<(KeyFingerprint, RecordSlot)> = model
                .range(KeyFingerprint(lowest)..=KeyFingerprint(highest))
                .map(|(key, slot)| (*key, *slot))
                .collect();
            assert_eq!(index.with_prefix(prefix), expected);
        }
        assert_eq!(index.with_prefix(fingerprint_prefix(&fingerprint(5))).len(), 3);
    }

    #[test]
    fn a_load_keeps_the_last_slot_of_a_key_and_matches_inserts() {
        let mut loaded = StoredIndex::default();
        let mut inserted = StoredIndex::default();
        let keys = 2 * BUCKET_ENTRIES_SPLIT_AT * (1 << BUCKET_BITS_MIN) + 17;
        let mut loaded_again = Vec::new();
        for seed in 0..keys as u64 {
            loaded.load(fingerprint(seed), slot(1));
            inserted.insert(fingerprint(seed), slot(1));
            if seed % 4 == 0 {
                // The same key written again by a later journal: its later slot wins.
                loaded.load(fingerprint(seed / 2), slot(seed as u32 + 100));
                inserted.insert(fingerprint(seed / 2), slot(seed as u32 + 100));
                loaded_again.push(fingerprint(seed / 2));
            }
        }
        assert_eq!(loaded.check(), Err("the stored index is still loading".to_string()));
        let mut reported = loaded.finish_loading();
        reported.sort_unstable();
        loaded_again.sort_unstable();
        assert_eq!(reported, loaded_again, "every extra load of a key is reported once");
        assert_eq!(loaded.check(), Ok(()));
        assert_eq!(loaded, inserted);
        assert_eq!(loaded.len(), keys);
    }
}
