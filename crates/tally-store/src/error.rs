//! The crate's error type.

/// Everything that can go wrong in the storage layer.
///
/// `LogStore` turns these into `openraft::StorageError`, which openraft treats as fatal for the
/// group; callers of `StateTree` decide for themselves.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O, a corrupted page, an unsupported operation).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),

    /// A stored value failed its framing checks (length, version byte, crc32) or did not decode,
    /// or a log entry is stored under a key that does not match its own index. `what` names the
    /// value and says which check failed.
    #[error("corrupt stored value: {what}")]
    Corrupt { what: String },

    /// The database (or a file beside it) failed a check when it was opened: sled reported
    /// corruption, or a stored value or vote file failed its framing. The node must not start
    /// from it (it could serve state that differs from its peers' or forget a vote).
    #[error(
        "the data at {path} is damaged: {detail}; the node cannot start from it: replace the node \
         (new id, empty folder, `tally cluster add-node`, then `tally cluster remove-node` of this id; \
         docs/operations.md 7.2)"
    )]
    Damaged { path: String, detail: String },

    /// Another process holds the database (sled takes an exclusive file lock).
    #[error("the database at {path} is in use by another process; stop it or choose another data folder")]
    Locked { path: String },

    /// A value could not be serialized.
    #[error("cannot encode value: {0}")]
    Encode(String),

    /// The flusher thread is gone, so nothing can be made durable any more.
    #[error("the flusher thread has stopped")]
    FlusherStopped,

    /// `db.flush()` failed: writes since the previous successful flush may not be durable.
    #[error("flush failed: {0}")]
    Flush(#[source] std::io::Error),

    /// An I/O error outside sled (for example the flusher thread could not be spawned).
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),

    /// The caller broke an argument contract (for example a scan `start` outside its `prefix`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
