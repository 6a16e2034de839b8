//! Arbitrary bytes through every decoder of untrusted or stored bytes. The property is only
//! "no panic, no abort, no unbounded allocation"; where a value decodes, it must also survive
//! an encode/decode round trip unchanged (a value that re-encodes differently would make two
//! replicas disagree about the same log entry).
//!
//! The decoded ledger batches are then applied to a fresh ledger, as a replica applies a log
//! entry written by a faulty or hostile leader: amounts, durations and terms inside such a batch
//! were never validated by a gateway, so this is where the ledger's defensive checks meet them
//! (ids deserialize through `parse`, so an invalid id fails the decode instead).

use std::fmt::Debug;

use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tally_ledger::meta::MetaState;
use tally_ledger::state::{ChangeSet, StateItem, StatementLine};
use tally_ledger::{Ledger, ShardBatch};
use tally_node::api::{NodeRequest, NodeResult};
use tally_raft::network::{decode_wire, encode_wire, WIRE_FORMAT_VERSION};
use tally_raft::{Entry, GroupRequest, LogId, NodeId, RaftError, StoredMembership, TallyRaft};
use tally_store::{decode_value, encode_value, VALUE_FORMAT_VERSION};

/// Runs `data` through every decoder; panics only on a broken property.
pub fn decode_all(data: &[u8]) {
    raft_wire(data);
    node_api(data);
    stored_values(data);
    protobuf(data);
}

/// The Raft transport: the server decodes requests from peers, the client decodes replies.
/// The payload is tried both as sent (first byte = format version) and behind the current
/// version byte, so that most inputs reach bincode.
fn raft_wire(data: &[u8]) {
    for bytes in [data.to_vec(), with_wire_version(data)] {
        let _ = decode_wire::<AppendEntriesRequest<TallyRaft>>(&bytes);
        let _ = decode_wire::<VoteRequest<NodeId>>(&bytes);
        let _ = decode_wire::<InstallSnapshotRequest<TallyRaft>>(&bytes);
        let _ = decode_wire::<Result<AppendEntriesResponse<NodeId>, RaftError>>(&bytes);
        let _ = decode_wire::<Result<VoteResponse<NodeId>, RaftError>>(&bytes);
        let _ =
            decode_wire::<Result<InstallSnapshotResponse<NodeId>, RaftError<InstallSnapshotError>>>(&bytes);
        let _ = decode_wire::<Entry>(&bytes);
        if let Some(GroupRequest::Shard(batch)) = round_trip_wire::<GroupRequest>(&bytes) {
            apply_decoded(&batch);
        }
    }
}

fn node_api(data: &[u8]) {
    for bytes in [data.to_vec(), with_wire_version(data)] {
        round_trip_wire::<NodeRequest>(&bytes);
        round_trip_wire::<NodeResult>(&bytes);
    }
}

/// The store's framing, both as read (mostly refused by the crc) and with a valid header
/// around the input, so that the payload decoders are reached.
fn stored_values(data: &[u8]) {
    let framed = with_value_header(data);
    for bytes in [data, framed.as_slice()] {
        let _ = decode_value::<Entry>(bytes, "entry");
        let _ = decode_value::<openraft::Vote<NodeId>>(bytes, "vote");
        let _ = decode_value::<Option<LogId>>(bytes, "log id");
        let _ = decode_value::<StoredMembership>(bytes, "membership");
        let _ = decode_value::<StatementLine>(bytes, "statement line");
        let _ = decode_value::<MetaState>(bytes, "meta state");
        if let Ok(item) = decode_value::<StateItem>(bytes, "state item") {
            let again = encode_value(&item).expect("a decoded item encodes");
            let back: StateItem = decode_value(&again, "state item").expect("a re-encoded item decodes");
            assert_eq!(back, item, "state item changed in a round trip");
        }
        if let Ok(journal) = decode_value::<Vec<StateItem>>(bytes, "journal") {
            // A replica restores its state from stored items: that must not panic either.
            let _ = Ledger::from_items(journal);
        }
    }
}

/// The protobuf bodies of the partner API and the internal services (prost).
fn protobuf(data: &[u8]) {
    use tally_proto::{internal, v1};
    let _ = internal::RaftRequest::decode(data);
    let _ = internal::NodeCall::decode(data);
    let _ = v1::EarnRequest::decode(data);
    let _ = v1::AuthorizeHoldRequest::decode(data);
    let _ = v1::ExchangeRequest::decode(data);
    let _ = v1::ListStatementRequest::decode(data);
    let _ = v1::SubmitBatchRequest::decode(data);
    let _ = v1::CreatePartnerRequest::decode(data);
    let _ = v1::SetAgreementRequest::decode(data);
}

fn with_wire_version(data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(WIRE_FORMAT_VERSION);
    bytes.extend_from_slice(data);
    bytes
}

fn with_value_header(data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(data.len() + 5);
    bytes.push(VALUE_FORMAT_VERSION);
    bytes.extend_from_slice(&crc32(data).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// CRC-32 (IEEE), bit by bit: the fuzz crate needs it only to frame inputs, not fast.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Decodes `bytes` as `T`; a decoded value must come back equal after encode + decode.
fn round_trip_wire<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value = decode_wire::<T>(bytes).ok()?;
    let again: T = decode_wire(&encode_wire(&value)).expect("a re-encoded value decodes");
    assert_eq!(again, value, "value changed in a wire round trip");
    Some(value)
}

/// Applies a decoded batch as a replica would, then audits the ledger.
fn apply_decoded(batch: &ShardBatch) {
    let mut ledger = Ledger::new();
    let mut changes = ChangeSet::default();
    let outcomes = ledger.apply_batch(1, batch, &mut changes);
    assert_eq!(outcomes.len(), batch.commands.len());
    if let Err(broken) = ledger.check_invariants() {
        panic!("a decoded batch broke the ledger: {broken}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
