//! Member-to-shard routing. The rule is part of the API contract (docs/api.md) because every
//! gateway and every client library that wants to batch per shard must compute it the same way:
//! `shard = u64::from_be_bytes(sha256(member_id)[0..8]) % shard_count`.

use sha2::{Digest, Sha256};

use crate::ids::MemberId;

pub fn shard_of_member(member_id: &MemberId, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "a cluster has at least one shard");
    let digest = Sha256::digest(member_id.as_str().as_bytes());
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(prefix) % u64::from(shard_count)) as u32
}
