//! The Fluentd Forward protocol v1 (with the v1.5 time extension): codec only, no IO.
//!
//! Forward is what Fluentd, Fluent Bit and Vector speak between collectors, so it is what our
//! forwarder sends and our aggregator accepts. Everything here is pure (bytes in, values out),
//! so it can be property-tested and fuzzed on its own, with one exception: the async helper of
//! [`client_session`], which drives the client handshake over any stream so the forwarder and
//! the load generator share it. Sockets, TLS and timeouts otherwise live in the binaries.
//!
//! | module | holds |
//! | --- | --- |
//! | [`error`] | [`DecodeError`], shared by every decoder here |
//! | [`codec`] | the streaming [`Decoder`] (all carrier modes, limits, canonicalisation) |
//! | [`entries`] | [`Entries`]: zero-allocation iteration over canonical entries |
//! | [`encode`] | what our senders write: entries, (Compressed)PackedForward, gzip |
//! | [`ack`] | `{"ack": chunk}` both ways |
//! | [`handshake`] | HELO / PING / PONG and their SHA-512 digests |
//! | [`session`] | the server's handshake: source ACL, PING checks, PONG (pure state machine) |
//! | [`client_session`] | the client's handshake: a state machine and an async helper over any stream |
//!
//! ## Wire format
//!
//! A TCP connection carries concatenated msgpack values, no length prefix. Each top-level value
//! is one request: an array (events or a handshake message) or `nil` (a heartbeat). Servers
//! ignore other top-level values. The event carrier mode is told by element 2:
//!
//! ```text
//! Message                 [ tag, time, record, options? ]          element 2: int | ext | (float, nil)
//! Forward                 [ tag, [ entry, ... ], options? ]        element 2: array
//! PackedForward           [ tag, <<entry>>*, options? ]            element 2: bin | str (Fluentd: str32)
//! CompressedPackedForward [ tag, gzip(<<entry>>*), options ]       options.compressed == "gzip"
//!
//! entry   := [ time, record ]          record := map
//! time    := uint seconds | EventTime (ext 0: fixext8 d7 00 or ext8 c7 08 00, BE secs, BE nanos)
//!          | [ EventTime, metadata-map* ]                           (v1.5, Fluent Bit >= 5.0.5)
//! options := { "size": n, "chunk": id, "compressed": "gzip" | "text", ...unknown keys ignored }
//! ack     := { "ack": id }             sent iff options.chunk is present, id echoed byte for byte
//! ```
//!
//! Example (2021-01-01T00:00:00.123456789Z, one record, ack requested):
//!
//! ```text
//! 94 a7 61 70 70 2e 77 65 62 d7 00 5f ee 66 00 07 5b cd 15 81 a3 6c 6f 67 a2 68 69
//! 82 a5 63 68 75 6e 6b b8 <24 bytes> a4 73 69 7a 65 01
//! ["app.web", EventTime, {"log": "hi"}, {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==", "size": 1}]
//! ```
//!
//! ## What the decoder guarantees downstream
//!
//! [`EventBatch::entries`] is always canonical (`[EventTime fixext8, map]` entries, see
//! [`entries`]), whatever mode and time encoding arrived. Entries that Fluentd would drop (record
//! not a map or nil, time not a time) are skipped and counted in [`EventBatch::skipped`]; the
//! request is still acked. A time of 0 or nil becomes "now", as in Fluentd. Anything that is not
//! a Forward request at all is a [`DecodeError`], and the connection is closed.

pub mod ack;
pub mod client_session;
pub mod codec;
pub mod encode;
pub mod entries;
pub mod error;
pub mod handshake;
pub mod session;

pub use ack::{decode_ack, encode_ack};
pub use codec::{Decoder, EventBatch, Frame, Limits, Request};
pub use encode::{encode_compressed_packed_forward, encode_entry, encode_packed_forward, gzip};
pub use entries::{Entries, Entry};
pub use error::DecodeError;
// `EventTime` lives in `crate::event_time` (msgpack renders it too); re-exported here
// because every Forward entry carries one.
pub use crate::event_time::EventTime;
