//! Shared by the integration tests: the test Raft type config and entry helpers.
#![allow(dead_code)]

use openraft::{Entry, EntryPayload};

openraft::declare_raft_types!(
    /// A minimal type config: string requests and responses, u64 node ids.
    pub TestConfig:
        D = String,
        R = String,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// A normal entry at `index` (term 1, leader 0) whose payload is `"op-{index}"`.
pub fn normal_entry(index: u64) -> Entry<TestConfig> {
    Entry {
        log_id: openraft::testing::log_id(1, 0, index),
        payload: EntryPayload::Normal(format!("op-{index}")),
    }
}

/// Normal entries for every index in `range`.
pub fn normal_entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TestConfig>> {
    range.map(normal_entry).collect()
}
