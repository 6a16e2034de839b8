//! Member-to-shard routing. The rule is part of the API contract (docs/api.md) because every
//! gateway and every client library that wants to batch per shard must compute it the same way:
//! `shard = u64::from_be_bytes(sha256(member_id)[0..8]) % shard_count`.

use sha2::{Digest, Sha256};

use crate::ids::{IdempotencyKey, MemberId, PartnerId};

pub fn shard_of_member(member_id: &MemberId, shard_count: u32) -> u32 {
    // One shard (`tally dev`'s default): every member is on it, and the hash would be the
    // gateway's largest cost per command after the call itself.
    assert!(shard_count > 0, "a cluster has at least one shard");
    if shard_count == 1 {
        return 0;
    }
    shard_of_digest(&Sha256::digest(member_id.as_str().as_bytes()), shard_count)
}

/// The shard that decides whether a partner's idempotency key is taken (see
/// `Operation::ClaimKey`): `u64::from_be_bytes(sha256(partner_id, 0x00, key)[0..8]) %
/// shard_count`. The zero byte keeps ("ab", "c") and ("a", "bc") apart; ids hold no control
/// characters.
pub fn home_shard_of_key(partner_id: &PartnerId, key: &IdempotencyKey, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "a cluster has at least one shard");
    if shard_count == 1 {
        return 0;
    }
    let mut hasher = Sha256::new();
    hasher.update(partner_id.as_str().as_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_str().as_bytes());
    shard_of_digest(&hasher.finalize(), shard_count)
}

fn shard_of_digest(digest: &[u8], shard_count: u32) -> u32 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(prefix) % u64::from(shard_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented rule, computed here by hand: with one shard the shortcut gives what the
    /// hash would (any number modulo 1 is 0), and with more the hash decides.
    #[test]
    fn the_rule_holds_with_one_shard_and_with_several() {
        let member = MemberId::parse("bob").unwrap();
        let digest = Sha256::digest(b"bob");
        let prefix = u64::from_be_bytes(digest[..8].try_into().unwrap());
        for shard_count in [1u32, 2, 3, 8, 16] {
            assert_eq!(shard_of_member(&member, shard_count), (prefix % u64::from(shard_count)) as u32);
        }
        let partner = PartnerId::parse("skyair").unwrap();
        let key = IdempotencyKey::parse("order-1").unwrap();
        let key_digest = Sha256::digest(b"skyair\0order-1");
        let key_prefix = u64::from_be_bytes(key_digest[..8].try_into().unwrap());
        for shard_count in [1u32, 3, 8] {
            assert_eq!(
                home_shard_of_key(&partner, &key, shard_count),
                (key_prefix % u64::from(shard_count)) as u32
            );
        }
    }

    #[test]
    #[should_panic(expected = "at least one shard")]
    fn no_shard_is_a_wiring_bug() {
        shard_of_member(&MemberId::parse("bob").unwrap(), 0);
    }
}
