//! [`StateTree`]: a group's state-machine keyspace, one sled tree with atomic batches.
//!
//! No openraft types here: the state machine (in `tally-raft`) decides what the keys and values
//! are, and is expected to frame its values with [`encode_value`](crate::encode_value).
//!
//! Nothing here flushes, on purpose. The Raft log is the write-ahead log: an entry is written to
//! it before it can be applied, it lives in the same sled `Db`, and sled's crash recovery keeps a
//! prefix of all writes to that `Db`. So after a crash the tree holds the effects of some prefix
//! of applies whose entries are all still in the log, the `last_applied` id written in the same
//! batch says which, and openraft re-applies the rest from the log. (That argument breaks if the state machine ever moves to another Db or engine: then
//! apply would have to flush before reporting.)

use std::collections::HashSet;
use std::fmt;
use std::ops::Bound;

use sled::IVec;

use crate::StoreError;

/// The state-machine tree of one group (`"g{id:05}/sm"`). Cheap to clone.
#[derive(Clone)]
pub struct StateTree {
    tree: sled::Tree,
}

impl fmt::Debug for StateTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateTree")
            .field("name", &String::from_utf8_lossy(&self.tree.name()))
            .finish_non_exhaustive()
    }
}

impl StateTree {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        StateTree { tree }
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Applies all puts (`Some`) and deletes (`None`) atomically (one sled `Batch`): readers and
    /// crash recovery see all of them or none. Later changes to the same key win. No flush (see
    /// the module docs).
    pub fn write_batch(&self, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch)?;
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
            collect(self.tree.range((Bound::Included(prefix.to_vec()), hi)).rev(), limit)
        } else {
            let lo = start.unwrap_or(prefix).to_vec();
            collect(self.tree.range((Bound::Included(lo), prefix_end)), limit)
        }
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order, read lazily (loading
    /// reads some kinds of keys and never touches the pages of the others). A live view, as
    /// [`StateTree::iter_all`].
    pub fn iter_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> {
        self.tree.scan_prefix(prefix).map(|item| match item {
            Ok((k, v)) => Ok((k.to_vec(), v.to_vec())),
            Err(e) => Err(StoreError::from(e)),
        })
    }

    /// Every `(key, value)` in the tree in key order (used to load state at startup). The
    /// iterator is lazy and sees a live view, not a snapshot: don't write while iterating.
    pub fn iter_all(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> {
        self.tree.iter().map(|item| match item {
            Ok((k, v)) => Ok((k.to_vec(), v.to_vec())),
            Err(e) => Err(StoreError::from(e)),
        })
    }

    /// Replaces the whole content of the tree with `entries` in one atomic `Batch` (removes every
    /// existing key not in `entries`). Used by snapshot install. The caller must be the tree's
    /// only writer while this runs (the state-machine worker is).
    pub fn replace_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        {
            let keep: HashSet<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
            for key in self.tree.iter().keys() {
                let key = key?;
                if !keep.contains(&*key) {
                    batch.remove(key);
                }
            }
        }
        for (key, value) in entries {
            batch.insert(key, value);
        }
        // No flush, as for apply. A snapshot holds only committed entries (a quorum has them), so
        // losing the install in a crash just leaves this replica behind, with its old
        // `last_applied`, and the leader sends the snapshot or the entries again. Any later write
        // that openraft makes durable (the purge of the log the snapshot covers, a vote, an
        // append) can only reach disk together with this batch: sled recovers a prefix.
        self.tree.apply_batch(batch)?;
        Ok(())
    }
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

#[allow(clippy::type_complexity)]
fn collect(
    iter: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let mut out = Vec::with_capacity(limit.min(1024));
    for item in iter.take(limit) {
        let (k, v) = item?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
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
