//! The codec of every generated client and server (build.rs passes it to `tonic_prost_build`
//! as `codec_path`). Encoding is tonic-prost's. Decoding is prost's too, but a message that
//! does not decode answers by which end received it:
//! - a server decoding a request answers INVALID_ARGUMENT: the caller sent a malformed
//!   request (the design's code for one), not the server failing;
//! - a client decoding a reply keeps gRPC's INTERNAL: the bytes came from the server, so
//!   blaming the request would send the caller looking in the wrong place.
//!
//! Which end decodes a type is known from the protos: build.rs implements [`RpcMessage`] for
//! every method's input (a request) and output (a reply), and refuses a type used as both.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// Which end of a call decodes a message: servers decode requests, clients decode replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageRole {
    Request,
    Reply,
}

/// A message some RPC takes or returns; implemented by build.rs from the proto descriptors.
pub trait RpcMessage {
    /// The protobuf full name, such as `tally.v1.EarnRequest`.
    const FULL_NAME: &'static str;
    const ROLE: MessageRole;
}

include!(concat!(env!("OUT_DIR"), "/rpc_messages.rs"));

/// tonic-prost's codec with decode failures answered as described in the module docs.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self { _messages: PhantomData }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + RpcMessage + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder { _message: PhantomData }
    }
}

/// Decodes one `U` with prost; see the module docs for the status of a failure.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default + RpcMessage> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| decode_failure::<U>(&error))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// prost's own prefix, dropped because the status message already says the body did not decode.
const PROST_ERROR_PREFIX: &str = "failed to decode Protobuf message: ";

/// The status for a `U` that did not decode.
pub fn decode_failure<U: RpcMessage>(error: &prost::DecodeError) -> Status {
    let text = error.to_string();
    let detail = text.strip_prefix(PROST_ERROR_PREFIX).unwrap_or(&text);
    match U::ROLE {
        MessageRole::Request => Status::invalid_argument(format!(
            "the request body is not a valid {} message: {detail}; encode requests with a client \
             generated from Tally's .proto files",
            U::FULL_NAME
        )),
        MessageRole::Reply => Status::internal(format!(
            "the reply body is not a valid {} message: {detail}; the server and this client may \
             disagree on the .proto files",
            U::FULL_NAME
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal::{NodeCall, RaftReply};
    use crate::v1::{EarnRequest, OperationReply};

    fn decode_error<U: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> prost::DecodeError {
        U::decode(bytes).expect_err("the bytes are malformed")
    }

    /// Field 2 (member_id), length 1, the byte 0xFF: not UTF-8.
    const NON_UTF8_MEMBER: &[u8] = &[0x12, 0x01, 0xFF];

    #[test]
    fn a_malformed_request_is_an_invalid_argument_naming_the_message_and_field() {
        let status = decode_failure::<EarnRequest>(&decode_error::<EarnRequest>(NON_UTF8_MEMBER));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with(
                "the request body is not a valid tally.v1.EarnRequest message: EarnRequest.member_id: \
                 invalid string value"
            ),
            "{}",
            status.message()
        );
        assert!(!status.message().contains(PROST_ERROR_PREFIX), "{}", status.message());
    }

    #[test]
    fn a_malformed_reply_stays_internal() {
        let status = decode_failure::<OperationReply>(&decode_error::<OperationReply>(&[0x0F]));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status
            .message()
            .starts_with("the reply body is not a valid tally.v1.OperationReply message: "));
    }

    #[test]
    fn build_rs_gave_every_method_message_its_name_and_role() {
        assert_eq!(EarnRequest::FULL_NAME, "tally.v1.EarnRequest");
        assert_eq!(EarnRequest::ROLE, MessageRole::Request);
        assert_eq!(OperationReply::ROLE, MessageRole::Reply);
        assert_eq!(NodeCall::FULL_NAME, "tally.internal.NodeCall");
        assert_eq!(NodeCall::ROLE, MessageRole::Request);
        assert_eq!(RaftReply::ROLE, MessageRole::Reply);
    }
}
