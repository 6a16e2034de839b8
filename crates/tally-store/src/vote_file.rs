//! A copy of each group's vote in its own small file beside the sled database.
//!
//! Why: sled recovers a *prefix* of the writes made to a `Db`. If its files lose their tail or
//! a byte in the middle of its log (a damaged disk, a bad copy), sled opens without complaint
//! and without the last writes, and one of them may be the vote this node promised a
//! candidate. A node that forgets its vote can vote again in the same term, and two leaders
//! can be elected in one term. The vote file is written (temporary file, fsync, rename, fsync
//! of the folder) after the vote is durable in sled; at start the newer of the two is used,
//! and votes that no crash can explain (neither newer than the other) refuse the start. (With
//! openraft's default leader ids, ordered by term then node id, two votes always compare; the
//! refusal matters for a partial order such as the `single-term-leader` feature's.)
//!
//! Log entries get no such copy: one more fsync per append would halve the write path. A
//! database that lost flushed log entries is refused at open by the flush mark instead
//! (`flush_mark`), which needs no fsync of its own per flush. The vote file still matters
//! where the mark cannot see a loss (its last records lost with a power loss).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{files, StoreError};

/// The vote file of one group.
#[derive(Clone, Debug)]
pub(crate) struct VoteFile {
    path: PathBuf,
}

impl VoteFile {
    pub(crate) fn new(folder: &Path, group_id: u32) -> VoteFile {
        VoteFile { path: folder.join(format!("g{group_id:05}.vote")) }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `bytes` so that a crash leaves the old or the new
    /// content, never a mix.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let io_error = |error| StoreError::Io(files::error_at(&self.path, error));
        let temporary = self.path.with_extension("vote.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(io_error)?;
        file.write_all(bytes).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        std::fs::rename(&temporary, &self.path).map_err(io_error)?;
        let folder = self.path.parent().expect("a vote file lives in a folder");
        files::sync_folder(folder).map_err(io_error)
    }

    /// The file's bytes, `None` if there is no file.
    pub(crate) fn read(&self) -> Result<Option<Vec<u8>>, StoreError> {
        files::read_if_exists(&self.path)
    }

    /// Deletes the file (the group's replica was dropped); a missing file is fine.
    pub(crate) fn remove(&self) -> Result<(), StoreError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StoreError::Io(error)),
        }
    }
}

/// Which vote to start from, given the one in sled and the one in the vote file.
///
/// The file is written after sled's copy is durable, so after a crash sled's vote is at least
/// the file's. A file vote newer than sled's means sled lost writes it had flushed: the file's
/// vote is the promise this node made, so it wins. Two votes neither of which is newer cannot
/// come from a crash: the start is refused.
pub(crate) fn reconcile_vote<V: PartialOrd + std::fmt::Debug>(
    group_id: u32,
    in_db: Option<V>,
    in_file: Option<V>,
    file: &Path,
) -> Result<Option<V>, StoreError> {
    match (in_db, in_file) {
        (in_db, None) => Ok(in_db),
        (None, Some(in_file)) => {
            tracing::warn!(
                group = group_id,
                vote = ?in_file,
                file = %file.display(),
                "the database has no vote but the vote file has one: the database lost its tail; using the vote file"
            );
            Ok(Some(in_file))
        }
        (Some(in_db), Some(in_file)) if in_db >= in_file => Ok(Some(in_db)),
        (Some(in_db), Some(in_file)) if in_file > in_db => {
            tracing::warn!(
                group = group_id,
                database_vote = ?in_db,
                file_vote = ?in_file,
                file = %file.display(),
                "the database holds an older vote than the vote file: it lost its tail; using the vote file"
            );
            Ok(Some(in_file))
        }
        (Some(in_db), Some(in_file)) => Err(StoreError::Damaged {
            path: file.display().to_string(),
            detail: format!(
                "group {group_id}'s vote in the database ({in_db:?}) and in the vote file ({in_file:?}) \
                 disagree and neither is newer"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_vote_wins_and_conflicting_votes_refuse() {
        let file = Path::new("votes/g00001.vote");
        // (term, candidate) as a partial order like openraft's Vote: equal terms with different
        // candidates are incomparable.
        #[derive(Debug, PartialEq)]
        struct V(u64, u64);
        impl PartialOrd for V {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                match self.0.cmp(&other.0) {
                    std::cmp::Ordering::Equal if self.1 != other.1 => None,
                    ordering => Some(ordering),
                }
            }
        }
        assert_eq!(reconcile_vote::<V>(1, None, None, file).unwrap(), None);
        assert_eq!(reconcile_vote(1, Some(V(3, 1)), None, file).unwrap(), Some(V(3, 1)));
        assert_eq!(reconcile_vote(1, None, Some(V(3, 1)), file).unwrap(), Some(V(3, 1)));
        assert_eq!(reconcile_vote(1, Some(V(4, 2)), Some(V(3, 1)), file).unwrap(), Some(V(4, 2)));
        assert_eq!(reconcile_vote(1, Some(V(2, 2)), Some(V(3, 1)), file).unwrap(), Some(V(3, 1)));
        let refused = reconcile_vote(1, Some(V(3, 2)), Some(V(3, 1)), file).unwrap_err();
        assert!(refused.to_string().contains("votes/g00001.vote"), "{refused}");
    }
}
