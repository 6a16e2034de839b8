//! Raw gRPC calls: the client sends exactly the bytes and path given, so tests can put
//! malformed protobuf, oversized messages and unknown methods on the wire.

use bytes::{Buf, BufMut, Bytes};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::http::Uri;
use tonic::codegen::{Body as HttpBody, StdError};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Bytes in, bytes out.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, destination: &mut EncodeBuf<'_>) -> Result<(), Status> {
        destination.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, source: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(source.copy_to_bytes(source.remaining()).to_vec()))
    }
}

/// One unary call of `path` with the request's bytes as the body; the reply's bytes.
pub async fn unary(
    channel: &Channel,
    path: &'static str,
    request: Request<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    unary_over(tonic::client::Grpc::new(channel.clone()), path, request).await
}

/// A plain HTTP/2 client, for what a tonic `Channel` cannot send: the channel enforces a
/// request's `grpc-timeout` itself and answers CANCELLED "Timeout expired" without waiting for
/// the server, so only a client that leaves deadlines to the server shows the server's answer.
pub type PlainClient = hyper_util::client::legacy::Client<HttpConnector, Body>;

pub fn plain_client() -> PlainClient {
    let mut connector = HttpConnector::new();
    // As tonic's channel does: with Nagle's algorithm each small call waits out a delayed ACK.
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build(connector)
}

/// [`unary`] through a [`PlainClient`] to `origin` (`http://host:port`).
pub async fn unary_plain(
    client: &PlainClient,
    origin: Uri,
    path: &'static str,
    request: Request<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    unary_over(tonic::client::Grpc::with_origin(client.clone(), origin), path, request).await
}

async fn unary_over<T>(
    mut grpc: tonic::client::Grpc<T>,
    path: &'static str,
    request: Request<Vec<u8>>,
) -> Result<Vec<u8>, Status>
where
    T: GrpcService<Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<StdError> + Send,
{
    grpc.ready().await.map_err(|error| Status::unknown(format!("channel not ready: {}", error.into())))?;
    grpc.unary(request, PathAndQuery::from_static(path), RawCodec).await.map(|reply| reply.into_inner())
}
