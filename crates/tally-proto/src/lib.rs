//! Generated tonic/prost code for Tally's gRPC services. `proto/` at the repository root is the
//! source of truth; this crate only compiles it (with protox, so no protoc is needed), with
//! [`codec::ProtoCodec`] as the codec of every client and server.

pub mod codec;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("tally.v1");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod internal {
    tonic::include_proto!("tally.internal");
}

/// Encoded `FileDescriptorSet` of every Tally proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tally_descriptor.bin"));
