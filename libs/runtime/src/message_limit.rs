//! The gRPC request-size limit, answered with RESOURCE_EXHAUSTED.
//!
//! Each generated server refuses a request message over
//! `max_decoding_message_size`, but tonic answers OUT_OF_RANGE ("decoded
//! message length too large"), a code meant for a value outside a valid
//! range, not for a limit. [`MessageLimitLayer`] reads the 5-byte header of
//! each gRPC length-prefixed message (a compressed flag and a big-endian
//! `u32` length, per the gRPC over HTTP/2 protocol) as the body streams in, and
//! the first frame that announces more than `server.max_message_bytes`
//! ends the body with RESOURCE_EXHAUSTED and the `MESSAGE_TOO_LARGE`
//! reason, before any of the message is buffered. tonic's decoder turns a
//! body error that is a `Status` into the call's status, so the handler
//! never runs. Every service gets it from [`crate::server::serve`].

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;

use crate::error::{ServiceError, ServiceErrorCode};

/// gRPC length-prefixed message header: 1 flag byte, 4 length bytes.
const HEADER: usize = 5;

/// A request message over the server's limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request message is {len} bytes, the limit is {limit} bytes (`server.max_message_bytes`)")]
pub struct MessageTooLarge {
    pub len: u64,
    pub limit: usize,
}

impl ServiceError for MessageTooLarge {
    fn error_code(&self) -> ServiceErrorCode {
        ServiceErrorCode::ResourceExhausted
    }

    fn reason(&self) -> Option<String> {
        Some("MESSAGE_TOO_LARGE".into())
    }
}

/// Where the reader is in the stream of length-prefixed messages.
#[derive(Debug, Clone, Copy)]
struct FrameReader {
    header: [u8; HEADER],
    /// Header bytes read so far (0 when between messages).
    header_len: usize,
    /// Payload bytes of the current message still to come.
    remaining: u64,
}

impl FrameReader {
    fn new() -> Self {
        Self {
            header: [0; HEADER],
            header_len: 0,
            remaining: 0,
        }
    }

    /// Reads one chunk of the body; the first over-limit message length
    /// found is the error.
    fn read(&mut self, mut chunk: &[u8], limit: usize) -> Result<(), MessageTooLarge> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.remaining -= take as u64;
                chunk = &chunk[take..];
                continue;
            }
            let take = (HEADER - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[..take]);
            self.header_len += take;
            chunk = &chunk[take..];
            if self.header_len == HEADER {
                let [_, a, b, c, d] = self.header;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                if len > limit as u64 {
                    return Err(MessageTooLarge { len, limit });
                }
                self.header_len = 0;
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    limit: usize,
}

impl MessageLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for MessageLimit<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // Plain HTTP endpoints next to gRPC (OAuth forms) have limits of
        // their own and no gRPC framing.
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return self.inner.call(request);
        }
        let limit = self.limit;
        self.inner.call(request.map(|body| {
            tonic::body::Body::new(LimitedBody {
                inner: body,
                reader: FrameReader::new(),
                limit,
                refused: false,
            })
        }))
    }
}

/// A request body that ends with RESOURCE_EXHAUSTED at the first message
/// over the limit.
struct LimitedBody {
    inner: tonic::body::Body,
    reader: FrameReader,
    limit: usize,
    refused: bool,
}

impl http_body::Body for LimitedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.refused {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let limit = self.limit;
            if let Err(too_large) = self.reader.read(data, limit) {
                self.refused = true;
                tracing::info!(
                    len = too_large.len,
                    limit,
                    "request message over the size limit refused"
                );
                return Poll::Ready(Some(Err(crate::error::into_status(too_large))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len as usize));
        out
    }

    #[test]
    fn messages_at_the_limit_pass_in_any_chunking() {
        let stream: Vec<u8> = [message(0), message(10), message(1024), message(3)].concat();
        for chunk_size in [1, 2, 4, 5, 6, 7, 1000, stream.len()] {
            let mut reader = FrameReader::new();
            for chunk in stream.chunks(chunk_size) {
                reader.read(chunk, 1024).unwrap();
            }
            // Between messages, the last one fully read.
            assert_eq!(
                (reader.header_len, reader.remaining),
                (0, 0),
                "chunks of {chunk_size}"
            );
        }
    }

    #[test]
    fn the_first_message_over_the_limit_is_refused_from_its_header() {
        // Only the header of the big message arrives: refused already.
        let stream: Vec<u8> = [message(10), message(1025)[..HEADER].to_vec()].concat();
        for chunk_size in [1, 3, 5, 15, stream.len()] {
            let mut reader = FrameReader::new();
            let refused = stream
                .chunks(chunk_size)
                .find_map(|chunk| reader.read(chunk, 1024).err())
                .expect("refused");
            assert_eq!((refused.len, refused.limit), (1025, 1024));
        }
        let mut reader = FrameReader::new();
        let huge = [1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            reader.read(&huge, 1024).unwrap_err().len,
            u64::from(u32::MAX)
        );
    }

    #[test]
    fn the_refusal_is_resource_exhausted_with_its_reason() {
        let status = crate::error::into_status(MessageTooLarge {
            len: 5000,
            limit: 4096,
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request message is 5000 bytes, the limit is 4096 bytes (`server.max_message_bytes`)"
        );
    }
}
