//! [`StateTree`]: a group's state-machine keyspace, one sled tree with atomic batches; values
//! of [`SEPARATED_VALUE_BYTES_MIN`](crate::SEPARATED_VALUE_BYTES_MIN) bytes or more live in the
//! node's value log (`value_log.rs`) with a pointer in sled, and every read resolves them.
//!
//! No openraft types here: the state machine (in `tally-raft`) decides what the keys and values
//! are, and is expected to frame its values with [`encode_value`](crate::encode_value).
//!
//! Nothing here flushes sled, on purpose: the state machine makes its checkpoints durable with a
//! store flush before it relies on them (before the Raft log may be purged behind them). The
//! value log's bytes are synced before the batch that points at them is applied, so sled never
//! holds a pointer whose value could be lost.

use std::collections::HashSet;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use sled::IVec;

use crate::value_log::ValueLog;
use crate::StoreError;

/// The state-machine tree of one group (`"g{id:05}/sm"`). Cheap to clone.
#[derive(Clone)]
pub struct StateTree {
    tree: sled::Tree,
    values: Arc<ValueLog>,
    /// Write batches still to refuse (see [`StateTree::fail_next_write_batches`]).
    #[cfg(feature = "test-faults")]
    failing_write_batches: Arc<std::sync::atomic::AtomicU32>,
}

impl fmt::Debug for StateTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateTree")
            .field("name", &String::from_utf8_lossy(&self.tree.name()))
            .finish_non_exhaustive()
    }
}

impl StateTree {
    pub(crate) fn new(tree: sled::Tree, values: Arc<ValueLog>) -> Self {
        StateTree {
            tree,
            values,
            #[cfg(feature = "test-faults")]
            failing_write_batches: Arc::default(),
        }
    }

    /// Makes the next `count` [`StateTree::write_batch`] calls of this tree (and its clones)
    /// fail with an I/O error and change nothing, as a full disk would.
    #[cfg(feature = "test-faults")]
    pub fn fail_next_write_batches(&self, count: u32) {
        self.failing_write_batches.store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree.get(key)?.map(|value| self.values.resolve(value)).transpose()
    }

    /// Up to `length_bytes` bytes of the value under `key` from byte `start` on (fewer where
    /// the value ends first), without reading the rest: one record out of a large journal.
    /// Unlike [`StateTree::get`], nothing checks these bytes against the value's crc32 (that
    /// covers the whole value); the caller frames what it reads back with its own check.
    pub fn get_range(
        &self,
        key: &[u8],
        start: usize,
        length_bytes: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree.get(key)?.map(|value| self.values.resolve_range(value, start, length_bytes)).transpose()
    }

    /// Applies all puts (`Some`) and deletes (`None`) atomically (one sled `Batch`): readers and
    /// crash recovery see all of them or none. Later changes to the same key win. Large values
    /// are appended to the value log and synced first. No sled flush (see the module docs).
    pub fn write_batch(&self, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        self.write_batch_of_new_keys(changes, |_| false)
    }

    /// [`StateTree::write_batch`] for a batch whose puts under keys that `is_new` accepts are
    /// known to create them: the value each would replace is not read first (a sled lookup per
    /// key, 3 % of a node's CPU in checkpoints of fresh journal and run keys). Were such a key
    /// there after all, the value-log file of its old value would keep it alive until the
    /// store is next opened (which recounts every pointer), never lose a value.
    pub fn write_batch_of_new_keys(
        &self,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        is_new: impl Fn(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        #[cfg(feature = "test-faults")]
        {
            use std::sync::atomic::Ordering;
            let refuse = self
                .failing_write_batches
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
                .is_ok();
            if refuse {
                return Err(StoreError::Io(std::io::Error::other("injected write failure (test-faults)")));
            }
        }
        let mut separated = self.values.separate(&self.tree, changes, is_new)?;
        let mut batch = sled::Batch::default();
        for (key, value) in std::mem::take(&mut separated.changes) {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch)?;
        separated.applied();
        Ok(())
    }

    /// Key-ordered `(key, value)` pairs whose key starts with `prefix`, at most `limit` of them.
    ///
    /// Forward (`reverse == false`): ascending from `start` (inclusive) if given, else from the
    /// first key of the prefix. Reverse: descending from `start` (inclusive) if given, else from
    /// the last key of the prefix. `start` must itself start with `prefix`
    /// ([`StoreError::InvalidArgument`] otherwise).
    #[allow(clippy::type_complexity)] // the plain pair type is the clearest API here
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
        start: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        if let Some(start) = start {
            if !start.starts_with(prefix) {
                return Err(StoreError::InvalidArgument(format!(
                    "scan start {start:02x?} does not begin with prefix {prefix:02x?}"
                )));
            }
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix_end = match prefix_successor(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        if reverse {
            let hi = match start {
                Some(start) => Bound::Included(start.to_vec()),
                None => prefix_end,
            };
            self.collect(self.tree.range((Bound::Included(prefix.to_vec()), hi)).rev(), limit)
        } else {
            let lo = start.unwrap_or(prefix).to_vec();
            self.collect(self.tree.range((Bound::Included(lo), prefix_end)), limit)
        }
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order, read lazily (loading
    /// reads some kinds of keys and never touches the pages of the others). A live view, as
    /// [`StateTree::iter_all`].
    pub fn iter_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> {
        let values = self.values.clone();
        self.tree.scan_prefix(prefix).map(move |item| resolved(&values, item))
    }

    /// Every `(key, value)` in the tree in key order (used to load state at startup). The
    /// iterator is lazy and sees a live view, not a snapshot: don't write while iterating.
    pub fn iter_all(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> {
        let values = self.values.clone();
        self.tree.iter().map(move |item| resolved(&values, item))
    }

    /// Replaces the whole content of the tree with `entries` in one atomic `Batch` (removes every
    /// existing key not in `entries`). Used by snapshot install. The caller must be the tree's
    /// only writer while this runs (the state-machine worker is).
    pub fn replace_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let mut removed = Vec::new();
        {
            let keep: HashSet<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
            for key in self.tree.iter().keys() {
                let key = key?;
                if !keep.contains(&*key) {
                    removed.push(key.to_vec());
                }
            }
        }
        let changes =
            removed.into_iter().map(|key| (key, None)).chain(entries.into_iter().map(|(k, v)| (k, Some(v))));
        // No flush, as for apply. A snapshot holds only committed entries (a quorum has them), so
        // losing the install in a crash just leaves this replica behind, with its old
        // `last_applied`, and the leader sends the snapshot or the entries again.
        self.write_batch(changes.collect())
    }

    #[allow(clippy::type_complexity)]
    fn collect(
        &self,
        iter: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in iter.take(limit) {
            out.push(resolved(&self.values, item)?);
        }
        Ok(out)
    }
}

fn resolved(values: &ValueLog, item: sled::Result<(IVec, IVec)>) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let (key, value) = item?;
    Ok((key.to_vec(), values.resolve(value)?))
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` if there
/// is none (empty prefix or all `0xff`).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    #[test]
    fn prefix_successor_edges() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(&[]), None);
    }
}
