//! [`DecodeError`]: why bytes from a peer are not a Forward message.
//!
//! One error type for every decoder of this protocol (requests, entries, handshake messages,
//! acks), so a connection handler matches on one enum and labels metrics with one set of
//! [`DecodeError::code`]s. It sits in its own module so that those decoders depend on it and not
//! on each other. Every variant is fatal for the connection.

use crate::msgpack::MsgpackError;

/// Why a request could not be decoded. Every variant means "close the connection": either the
/// stream can no longer be framed or the peer broke the protocol or a limit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The request is (or is declared to be) larger than `limit` bytes.
    #[error("request larger than {limit} bytes")]
    RequestTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A compressed payload inflates to more than `limit` bytes (a gzip bomb, or a limit set
    /// too low). Decompression stopped at the limit.
    #[error("compressed payload inflates to more than {limit} bytes")]
    DecompressedTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Valid msgpack, but not a Forward request: wrong arity, non-string tag, wrong element
    /// types, options that are not a map...
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Not valid msgpack (or nested too deeply).
    #[error("invalid msgpack: {0}")]
    Msgpack(#[from] MsgpackError),
    /// The tag is not valid UTF-8.
    #[error("tag is not valid UTF-8")]
    InvalidUtf8Tag,
    /// The tag of an event request is longer than `limit` bytes ([`Limits::max_tag_bytes`](super::Limits::max_tag_bytes)).
    #[error("tag longer than {limit} bytes")]
    TagTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The gzip payload is corrupt or truncated.
    #[error("invalid gzip payload: {0}")]
    Gzip(#[source] std::io::Error),
    /// The stream ended inside a request (only produced by `tokio_util::codec::Decoder::decode_eof`):
    /// the peer went away mid-request; nothing of it was accepted.
    #[error("stream ended inside a request ({buffered} bytes buffered)")]
    UnexpectedEof {
        /// Bytes of the unfinished request.
        buffered: usize,
    },
    /// Reading the connection failed (only produced through `tokio_util::codec`).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl DecodeError {
    /// A short, stable label for metrics (`logferry_forward_decode_errors_total`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::RequestTooLarge { .. } => "request_too_large",
            Self::DecompressedTooLarge { .. } => "decompressed_too_large",
            Self::Malformed(_) => "malformed",
            Self::Msgpack(MsgpackError::TooDeep { .. }) => "too_deep",
            Self::Msgpack(_) => "invalid_msgpack",
            Self::InvalidUtf8Tag => "invalid_utf8_tag",
            Self::TagTooLong { .. } => "tag_too_long",
            Self::Gzip(_) => "gzip",
            Self::UnexpectedEof { .. } => "unexpected_eof",
            Self::Io(_) => "io",
        }
    }
}
