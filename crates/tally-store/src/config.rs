//! [`StoreConfig`]: the settings of a node's store, with documented defaults.

/// Default of [`StoreConfig::flush_stall_abort_ms`]: far above any flush seen on a loaded
/// machine (hundreds of ms at worst), far below what an operator would tolerate as a hang.
pub const FLUSH_STALL_ABORT_MS_DEFAULT: u64 = 30_000;

/// Smallest accepted [`StoreConfig::flush_stall_abort_ms`]: below a second, a slow but working
/// disk could make the node abort and restart over and over.
pub const FLUSH_STALL_ABORT_MS_MIN: u64 = 1_000;

/// Default of [`StoreConfig::sled_cache_bytes`]: sled's own default is 1 GiB, far more than
/// checkpoints need (they write each changed item once a second; reads are statement pages,
/// and values of 512 bytes or more live in the value log, outside sled's pages). 32 MiB rather
/// than 128: 20.4 M SubmitBatch earns into `tally dev` ended at 1,568 MiB resident against
/// 1,881 (high-water mark 2,086 against 2,453), and SubmitBatch ran as fast (1.02x, alternated;
/// docs/benchmarks.md, eighth session).
pub const SLED_CACHE_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;

/// How a node's store runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long one sled `flush()` may go without returning before the process aborts
    /// (default [`FLUSH_STALL_ABORT_MS_DEFAULT`], at least [`FLUSH_STALL_ABORT_MS_MIN`]).
    ///
    /// sled 0.34 can wait forever inside a flush (docs/reliability.md, "a sled flush that never
    /// returned"); a node that hangs keeps its shard leaderships and serves nothing, while a node
    /// that crashes is restarted and recovers from its Raft log. Only time the process was
    /// running counts, so a paused (SIGSTOP) or suspended process is not aborted for the pause.
    pub flush_stall_abort_ms: u64,
    /// The memory sled may use for its page cache (default [`SLED_CACHE_BYTES_DEFAULT`]).
    pub sled_cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_stall_abort_ms: FLUSH_STALL_ABORT_MS_DEFAULT,
            sled_cache_bytes: SLED_CACHE_BYTES_DEFAULT,
        }
    }
}

impl StoreConfig {
    /// Says what is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.flush_stall_abort_ms < FLUSH_STALL_ABORT_MS_MIN {
            return Err(format!(
                "flush_stall_abort_ms must be at least {FLUSH_STALL_ABORT_MS_MIN}, got {}",
                self.flush_stall_abort_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_a_bound_below_the_minimum_is_refused() {
        assert_eq!(StoreConfig::default().validate(), Ok(()));
        let at_minimum =
            StoreConfig { flush_stall_abort_ms: FLUSH_STALL_ABORT_MS_MIN, ..StoreConfig::default() };
        assert_eq!(at_minimum.validate(), Ok(()));
        let error =
            StoreConfig { flush_stall_abort_ms: FLUSH_STALL_ABORT_MS_MIN - 1, ..StoreConfig::default() }
                .validate()
                .unwrap_err();
        assert!(error.contains("flush_stall_abort_ms"), "{error}");
    }
}
