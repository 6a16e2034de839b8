//! On-disk value framing: `[version u8 = 1][crc32 u32 big-endian of payload][bincode 1 payload]`.
//!
//! Every value this crate persists on behalf of openraft (log entries, vote, committed,
//! last_purged) goes through [`encode_value`] / [`decode_value`], and the state machine is
//! expected to do the same. The version byte lets a later release change the payload format
//! (openraft 0.10 changes `Vote` and `LogId`) and still recognise old records; the crc catches
//! bit rot and torn values, which sled's own page checksums do not cover once a page is in memory.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StoreError;

/// The only framing version this crate writes and reads.
pub const VALUE_FORMAT_VERSION: u8 = 1;

/// Length of the `[version][crc32]` header: a framed value's payload starts this far in.
pub const FRAME_HEADER_BYTES: usize = 5;
const HEADER_LEN: usize = FRAME_HEADER_BYTES;

/// Serializes `value` with bincode 1 and frames it as `[1][crc32 be][payload]`.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let size = bincode::serialized_size(value).map_err(|e| StoreError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + size as usize);
    out.push(VALUE_FORMAT_VERSION);
    out.extend_from_slice(&[0; 4]);
    bincode::serialize_into(&mut out, value).map_err(|e| StoreError::Encode(e.to_string()))?;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Frames bytes that are already a bincode 1 payload (built by hand, for example to know where
/// each record sits in it) as [`encode_value`] frames a value.
pub fn encode_framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(VALUE_FORMAT_VERSION);
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a framed value, once its framing (length, version, crc32) checks out.
pub fn framed_payload<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], StoreError> {
    frame_payload(bytes, what)
}

/// Checks the framing of `bytes` (length, version, crc32) without decoding the payload: a
/// cheap check of every stored value when a database is opened.
pub fn check_frame(bytes: &[u8], what: &str) -> Result<(), StoreError> {
    frame_payload(bytes, what).map(|_| ())
}

fn frame_payload<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { what: format!("{what}: {detail}") };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!("value is {} bytes, shorter than its header", bytes.len())));
    }
    if bytes[0] != VALUE_FORMAT_VERSION {
        return Err(corrupt(format!("unknown value format version {}", bytes[0])));
    }
    let stored = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(corrupt(format!("crc32 mismatch (stored {stored:08x}, computed {computed:08x})")));
    }
    Ok(payload)
}

/// Checks the framing of `bytes` (length, version, crc32) and decodes the payload.
///
/// Any failure is [`StoreError::Corrupt`], whose `what` starts with the caller's `what`.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    let payload = frame_payload(bytes, what)?;
    bincode::deserialize(payload)
        .map_err(|e| StoreError::Corrupt { what: format!("{what}: payload does not decode: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_built_payload_frames_like_an_encoded_value() {
        let value = (7u64, "x".to_string());
        let payload = bincode::serialize(&value).unwrap();
        assert_eq!(encode_framed(&payload), encode_value(&value).unwrap());
        assert_eq!(framed_payload(&encode_framed(&payload), "pair").unwrap(), &payload[..]);
    }

    #[test]
    fn round_trip_and_layout() {
        let bytes = encode_value(&(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], VALUE_FORMAT_VERSION);
        let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
        assert_eq!(&bytes[1..HEADER_LEN], &crc.to_be_bytes());
        let back: (u64, String) = decode_value(&bytes, "pair").unwrap();
        assert_eq!(back, (7, "x".to_string()));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = encode_value(&vec![1u32, 2, 3]).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = decode_value::<Vec<u32>>(&bad, "list").unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { ref what } if what.starts_with("list: ")));
        }
        assert!(decode_value::<Vec<u32>>(&bytes[..3], "list").is_err());
    }
}
