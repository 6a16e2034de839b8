//! Member-to-shard routing. The rule is part of the API contract (docs/api.md) because every
//! gateway and every client library that wants to batch per shard must compute it the same way:
//! `shard = u64::from_be_bytes(sha256(member_id)[0..8]) % shard_count`.

use sha2::{Digest, Sha256};

use crate::ids::{IdempotencyKey, MemberId, PartnerId};

pub fn shard_of_member(member_id: &MemberId, shard_count: u32) -> u32 {
    shard_of_digest(&Sha256::digest(member_id.as_str().as_bytes()), shard_count)
}

/// The shard that decides whether a partner's idempotency key is taken (see
/// `Operation::ClaimKey`): `u64::from_be_bytes(sha256(partner_id, 0x00, key)[0..8]) %
/// shard_count`. The zero byte keeps ("ab", "c") and ("a", "bc") apart; ids hold no control
/// characters.
pub fn home_shard_of_key(partner_id: &PartnerId, key: &IdempotencyKey, shard_count: u32) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(partner_id.as_str().as_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_str().as_bytes());
    shard_of_digest(&hasher.finalize(), shard_count)
}

fn shard_of_digest(digest: &[u8], shard_count: u32) -> u32 {
    assert!(shard_count > 0, "a cluster has at least one shard");
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(prefix) % u64::from(shard_count)) as u32
}
