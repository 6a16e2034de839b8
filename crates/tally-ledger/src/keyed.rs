//! Hash-indexed collections whose only iteration is in key order.
//!
//! Apply looks records and accounts up by key many times per command; a hash lookup hashes the
//! key once, where a B-tree compared it with ~15 others (string compares were a tenth of a
//! node's CPU). A hash map's iteration order differs between processes, and the ledger must be
//! deterministic, so these wrappers offer lookups and writes but iterate only in key order
//! (sorted on each call: for snapshots, digests and audits, never per command). The crate's
//! tidy test allows hash collections in this file alone.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};

/// foldhash, seeded per process (keys are partner-chosen ids, so the seed keeps collisions
/// from being planned); iteration order never matters, the maps iterate in key order.
type Seeded = foldhash::fast::RandomState;
use std::hash::Hash;

/// A map with hash lookups and key-ordered iteration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedMap<K: Eq + Hash, V> {
    entries: HashMap<K, V, Seeded>,
}

impl<K: Eq + Hash, V> Default for KeyedMap<K, V> {
    fn default() -> Self {
        Self { entries: HashMap::default() }
    }
}

impl<K: Eq + Hash + Ord, V> KeyedMap<K, V> {
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key)
    }

    pub fn get_mut<Q: Eq + Hash + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.entries.get_mut(key)
    }

    pub fn contains_key<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.entries.contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.entries.insert(key, value)
    }

    pub fn remove<Q: Eq + Hash + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.entries.remove(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in key order.
    pub fn sorted(&self) -> Vec<(&K, &V)> {
        self.sorted_where(|_, _| true)
    }

    /// The entries `keep` accepts, in key order (only those are sorted).
    pub fn sorted_where(&self, keep: impl Fn(&K, &V) -> bool) -> Vec<(&K, &V)> {
        let mut entries: Vec<(&K, &V)> =
            self.entries.iter().filter(|(key, value)| keep(key, value)).collect();
        entries.sort_unstable_by(|left, right| left.0.cmp(right.0));
        entries
    }
}

/// A set with hash membership and key-ordered iteration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedSet<K: Eq + Hash> {
    items: HashSet<K, Seeded>,
}

impl<K: Eq + Hash> Default for KeyedSet<K> {
    fn default() -> Self {
        Self { items: HashSet::default() }
    }
}

impl<K: Eq + Hash + Ord> KeyedSet<K> {
    pub fn insert(&mut self, item: K) -> bool {
        self.items.insert(item)
    }

    pub fn remove(&mut self, item: &K) -> bool {
        self.items.remove(item)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every item, in key order.
    pub fn into_sorted(self) -> Vec<K> {
        let mut items: Vec<K> = self.items.into_iter().collect();
        items.sort_unstable();
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_is_in_key_order_whatever_the_insertion_order() {
        let mut map = KeyedMap::default();
        let mut set = KeyedSet::default();
        for key in [7u32, 3, 9, 1, 5] {
            map.insert(key, key * 10);
            set.insert(key);
        }
        assert_eq!(map.sorted(), vec![(&1, &10), (&3, &30), (&5, &50), (&7, &70), (&9, &90)]);
        assert_eq!(set.into_sorted(), vec![1, 3, 5, 7, 9]);
        assert_eq!(map.remove(&3), Some(30));
        assert_eq!((map.len(), map.get(&3), map.get(&9)), (4, None, Some(&90)));
    }
}
