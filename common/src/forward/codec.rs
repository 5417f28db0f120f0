//! The streaming request decoder: bytes off a connection in, [`Request`]s out.
//!
//! ## Design constraints
//!
//! - Pure and incremental: the caller owns the socket and the [`BytesMut`]; [`Decoder::decode`]
//!   either consumes one whole request or nothing. Feeding a stream in any split (down to one
//!   byte at a time) yields the same requests.
//! - Bounded: a request is rejected as soon as it is *known* to exceed
//!   [`Limits::max_request_bytes`] (a declared length is enough; the bytes are never awaited),
//!   and gzip payloads are inflated in steps up to [`Limits::max_decompressed_bytes`] and no
//!   further. Tags longer than [`Limits::max_tag_bytes`] are rejected before any entry is read. Nesting is limited ([`REQUEST_MAX_DEPTH`]), so hostile input cannot exhaust the
//!   stack. No input panics.
//! - One output shape: whatever carrier mode and time encoding came in, [`EventBatch::entries`]
//!   holds canonical entries (`[EventTime fixext8, map]`, see [`super::entries`]).
//! - Zero copy on the hot path: a PackedForward (or Forward) request whose entries are already
//!   canonical, which is what our forwarder and Fluent Bit send, is validated by scanning and
//!   returned as a slice of the received bytes. Otherwise one buffer per request is built,
//!   re-encoding only the times.
//!
//! ## Operation
//!
//! 1. Find the end of the first top-level value with a [`msgpack::Scanner`] (no allocation).
//!    Incomplete: remember the lower bound on its length, so the next call returns at once until
//!    that many bytes are buffered, and reject it now if the bound exceeds the limit. The
//!    scanner keeps its place, so the next call scans only the bytes that arrived since: a
//!    request costs one scan of its bytes however it is trickled in (linear, never quadratic).
//! 2. Split the value off and freeze it. `nil` is a [`Request::Heartbeat`]; anything that is
//!    neither `nil` nor an array is dropped and decoding continues with the next value.
//! 3. Classify the array: handshake (`"HELO"`/`"PING"`/`"PONG"` with their arities), else an
//!    event request by the type of element 2 (see [`super`]).
//! 4. Walk the entries: count valid ones, skip (and count) the invalid ones, canonicalise.
//!
//! Every [`DecodeError`] is fatal for the connection: the server closes it without an ack, and
//! the sender re-sends elsewhere or later.

use std::io::Read;

use bytes::{Bytes, BytesMut};

use super::ack;
use super::encode::encode_entry;
use super::entries::{self, RawTime, ENTRY_MAX_DEPTH};
use super::error::DecodeError;
use super::handshake::{self, Message};
use crate::event_time::EventTime;
use crate::msgpack::{self, Kind, MsgpackError, Scan, Scanner, Token, DEFAULT_MAX_DEPTH};

/// Nesting allowed in a whole request: the request array, the Forward entries array and the
/// entry array around a record of [`DEFAULT_MAX_DEPTH`]. Records themselves are held to
/// [`DEFAULT_MAX_DEPTH`] in every mode, the depth [`msgpack::write_json`] accepts.
pub const REQUEST_MAX_DEPTH: usize = DEFAULT_MAX_DEPTH + 3;

/// Decompression proceeds in steps of this size, so the output buffer never grows much past
/// what was actually inflated.
const INFLATE_STEP: usize = 256 * 1024;

/// Size limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request accepted, in bytes on the wire.
    pub max_request_bytes: usize,
    /// The largest payload a CompressedPackedForward request may inflate to.
    pub max_decompressed_bytes: usize,
    /// The longest tag accepted on an event request, in bytes. Tags name routes, buffer
    /// chunks and file outputs' files, so they are kept short.
    pub max_tag_bytes: usize,
}

impl Limits {
    /// Default [`Limits::max_request_bytes`]: 16 MiB.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
    /// Default [`Limits::max_decompressed_bytes`]: 64 MiB.
    pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
    /// Default [`Limits::max_tag_bytes`]: 1 KiB. Fluentd tags are short; Kubernetes-derived
    /// tags (`kube.var.log.containers.<pod>_<namespace>_<container>-<id>.log`) reach ~300 bytes.
    pub const DEFAULT_MAX_TAG_BYTES: usize = 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            max_decompressed_bytes: Self::DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_tag_bytes: Self::DEFAULT_MAX_TAG_BYTES,
        }
    }
}

/// One decoded top-level value.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Top-level `nil`: a TCP heartbeat. Nothing to answer.
    Heartbeat,
    /// An event request in any carrier mode.
    Events(EventBatch),
    /// A handshake message.
    Handshake(Message),
}

/// The events of one request, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// The tag (may be empty).
    pub tag: String,
    /// Canonical packed entries: concatenated `[EventTime fixext8, map]` msgpack arrays.
    pub entries: Bytes,
    /// Valid entries in `entries`.
    pub records: u32,
    /// Entries skipped as invalid (record not a map, time not int/EventTime/float/`[EventTime, map]`, nil record).
    pub skipped: u32,
    /// The raw msgpack encoding of the `chunk` option value (str or bin), echoed verbatim in the ack.
    pub chunk: Option<Bytes>,
    /// Bytes the request occupied on the wire.
    pub wire_bytes: usize,
}

impl EventBatch {
    /// The ack this request calls for, `None` when the sender did not ask for one.
    pub fn ack(&self) -> Option<Vec<u8>> {
        let chunk = self.chunk.as_ref()?;
        let mut out = Vec::with_capacity(5 + chunk.len());
        ack::encode_ack(chunk, &mut out);
        Some(out)
    }
}

/// The incremental decoder of one connection. See the [module docs](self).
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// Lower bound on the length of the incomplete request at the front of the buffer: below
    /// it, `decode` returns `Ok(None)` without looking at the bytes.
    need: usize,
    /// Progress through the incomplete request at the front of the buffer, so each byte of a
    /// request is scanned once however it is split. This is why a decoder serves one stream
    /// (one buffer) only.
    scanner: Scanner,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            need: 0,
            scanner: Scanner::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decodes the next request at the start of `buf`, consuming its bytes. `Ok(None)` means
    /// more bytes are needed (nothing was consumed). Top-level values that are neither array
    /// nor nil are consumed and ignored.
    ///
    /// Use one decoder per stream, and pass it the same buffer every time: it remembers how
    /// far it scanned the unfinished request at the front and how many bytes that request
    /// needs at least, waits until they are there, and then scans only the new bytes.
    ///
    /// # Errors
    /// See [`DecodeError`]; all are fatal for the connection. The bytes of a request that
    /// failed to parse have been consumed; on a limit or framing error they have not.
    ///
    /// # Example
    /// A Message-mode request arriving in two pieces, then a heartbeat:
    /// ```
    /// use bytes::BytesMut;
    /// use logferry_common::forward::{Decoder, Entries, EventTime, Request};
    ///
    /// // ["app", EventTime(1, 2), {"log": "hi"}, {"chunk": "c1"}], then nil.
    /// let wire: &[u8] = b"\x94\xa3app\xd7\x00\x00\x00\x00\x01\x00\x00\x00\x02\
    ///                     \x81\xa3log\xa2hi\x81\xa5chunk\xa2c1\xc0";
    /// let mut decoder = Decoder::default();
    /// let mut buf = BytesMut::from(&wire[..10]);
    /// assert_eq!(decoder.decode(&mut buf)?, None); // incomplete: nothing consumed
    /// buf.extend_from_slice(&wire[10..]);
    ///
    /// let Some(Request::Events(batch)) = decoder.decode(&mut buf)? else { panic!() };
    /// assert_eq!(batch.tag, "app");
    /// assert_eq!(batch.records, 1);
    /// let entry = Entries::new(&batch.entries).next().unwrap()?;
    /// assert_eq!(entry.time, EventTime::new(1, 2));
    /// assert_eq!(entry.record, b"\x81\xa3log\xa2hi");
    /// assert_eq!(batch.ack().unwrap(), b"\x81\xa3ack\xa2c1");
    ///
    /// assert_eq!(decoder.decode(&mut buf)?, Some(Request::Heartbeat));
    /// assert!(buf.is_empty());
    /// # Ok::<(), logferry_common::forward::DecodeError>(())
    /// ```
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        self.decode_next(buf)
    }

    fn decode_next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        while let Some(frame) = self.next_frame(buf)? {
            if let Some(request) = frame.parse(&self.limits)? {
                return Ok(Some(request));
            }
        }
        Ok(None)
    }

    /// Splits the next complete top-level value off the front of `buf` without parsing it:
    /// step 1 of [`Decoder::decode`], for a caller that reserves memory before step 2
    /// ([`Frame::parse_bound`], then [`Frame::parse`]). Same contract for `buf` as `decode`.
    ///
    /// # Errors
    /// [`DecodeError::RequestTooLarge`], or invalid msgpack framing.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let max = self.limits.max_request_bytes;
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        let scan = self.scanner.scan(buf, REQUEST_MAX_DEPTH);
        self.need = 0;
        let len = match scan? {
            Scan::Complete(len) if len <= max => len,
            Scan::Incomplete { min_len } if min_len <= max => {
                self.need = min_len;
                return Ok(None);
            }
            Scan::Complete(_) | Scan::Incomplete { .. } => {
                self.scanner.reset();
                return Err(DecodeError::RequestTooLarge { limit: max });
            }
        };
        Ok(Some(Frame(buf.split_to(len).freeze())))
    }
}

/// One complete top-level value of the stream, split off but not yet parsed
/// ([`Decoder::next_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// The value's bytes, exactly as received (a re-sent request has the same bytes).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Most bytes [`Frame::parse`] allocates for this frame (beyond the frame itself): for a
    /// gzip request the inflated entries plus their canonical copy, each at most
    /// `max_decompressed_bytes`; otherwise the canonical copy, at most four times the frame
    /// (a time re-encoded as `EventTime` grows an entry of three bytes to twelve) and never
    /// more than `max_decompressed_bytes`.
    pub fn parse_bound(&self, limits: &Limits) -> usize {
        if is_gzip_request(&self.0) {
            limits.max_decompressed_bytes.saturating_mul(2)
        } else {
            self.0
                .len()
                .saturating_mul(4)
                .min(limits.max_decompressed_bytes)
        }
    }

    /// Parses the value: step 2 onwards of [`Decoder::decode`]. `Ok(None)` for a top-level
    /// value that is to be ignored.
    ///
    /// # Errors
    /// See [`DecodeError`].
    pub fn parse(&self, limits: &Limits) -> Result<Option<Request>, DecodeError> {
        parse_request(&self.0, limits)
    }
}

/// Whether `frame` is a CompressedPackedForward request (`[tag, payload, {"compressed":
/// "gzip"}]`); anything unreadable is "no" (the parse reports it).
fn is_gzip_request(frame: &[u8]) -> bool {
    fn probe(mut cur: &[u8]) -> Result<bool, DecodeError> {
        let Token::Array(3) = msgpack::read_token(&mut cur)? else {
            return Ok(false);
        };
        msgpack::skip_value(&mut cur, 1)?;
        if !matches!(msgpack::peek_kind(cur)?, Kind::Bin | Kind::Str) {
            return Ok(false);
        }
        msgpack::skip_value(&mut cur, 1)?;
        Ok(Options::parse(&mut cur, true)?.gzip)
    }
    probe(frame).unwrap_or(false)
}

impl tokio_util::codec::Decoder for Decoder {
    type Item = Request;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        self.decode_next(src)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        match self.decode_next(buf)? {
            Some(request) => Ok(Some(request)),
            None if buf.is_empty() => Ok(None),
            None => Err(DecodeError::UnexpectedEof {
                buffered: buf.len(),
            }),
        }
    }
}

/// Parses one complete top-level value. `Ok(None)`: a value to ignore.
fn parse_request(frame: &Bytes, limits: &Limits) -> Result<Option<Request>, DecodeError> {
    let mut cur: &[u8] = frame;
    let arity = match msgpack::read_token(&mut cur)? {
        Token::Nil => return Ok(Some(Request::Heartbeat)),
        Token::Array(n) => n,
        _ => return Ok(None),
    };
    if arity == 0 {
        return Err(DecodeError::Malformed("empty request array"));
    }
    let Token::Str(tag) = msgpack::read_token(&mut cur)? else {
        return Err(DecodeError::Malformed("tag is not a string"));
    };
    let handshake = match (tag, arity) {
        (b"HELO", 2) if msgpack::peek_kind(cur)? == Kind::Map => {
            Some(Message::Helo(handshake::parse_helo(&mut cur)?))
        }
        (b"PING", 6) => Some(Message::Ping(handshake::parse_ping(&mut cur)?)),
        (b"PONG", 5) => Some(Message::Pong(handshake::parse_pong(&mut cur)?)),
        _ => None,
    };
    if let Some(message) = handshake {
        return Ok(Some(Request::Handshake(message)));
    }
    if arity < 2 {
        return Err(DecodeError::Malformed("request has fewer than 2 elements"));
    }
    if tag.len() > limits.max_tag_bytes {
        return Err(DecodeError::TagTooLong {
            limit: limits.max_tag_bytes,
        });
    }
    let tag = std::str::from_utf8(tag).map_err(|_| DecodeError::InvalidUtf8Tag)?;

    let mut batch = Batch {
        limit: limits.max_decompressed_bytes,
        ..Batch::default()
    };
    match msgpack::peek_kind(cur)? {
        Kind::Array if (arity == 3 || arity == 4) && is_v15_time(cur) => {
            // [tag, [EventTime, metadata], record, options?] is a Message, not a Forward.
            batch.message(&mut cur)?;
        }
        Kind::Array if arity == 2 || arity == 3 => {
            let count = msgpack::read_array_len(&mut cur)?;
            let region = cur;
            let consumed = batch.entries(region, Some(count))?;
            cur = region.get(consumed..).unwrap_or_default();
            batch.set_source(frame, region.get(..consumed).unwrap_or_default());
        }
        Kind::Bin | Kind::Str if arity == 2 || arity == 3 => {
            let payload = msgpack::read_str_or_bin(&mut cur)?;
            let options = Options::parse(&mut cur, arity == 3)?;
            if options.gzip {
                let inflated = Bytes::from(gunzip(payload, limits.max_decompressed_bytes)?);
                batch.entries(&inflated, None)?;
                batch.set_source(&inflated, &inflated);
            } else {
                batch.entries(payload, None)?;
                batch.set_source(frame, payload);
            }
            return Ok(Some(batch.finish(tag, options.chunk(frame), frame.len())));
        }
        Kind::Int | Kind::Ext | Kind::Float | Kind::Nil if arity == 3 || arity == 4 => {
            batch.message(&mut cur)?;
        }
        Kind::Array | Kind::Bin | Kind::Str | Kind::Int | Kind::Ext | Kind::Float | Kind::Nil => {
            return Err(DecodeError::Malformed(
                "wrong number of elements for the carrier mode",
            ))
        }
        Kind::Map | Kind::Bool => {
            return Err(DecodeError::Malformed(
                "second element is not a time, array or payload",
            ))
        }
    }
    let has_options = match batch.mode {
        Mode::Message => arity == 4,
        Mode::Forward => arity == 3,
    };
    let options = Options::parse(&mut cur, has_options)?;
    Ok(Some(batch.finish(tag, options.chunk(frame), frame.len())))
}

/// True if the array at the start of `cur` is a v1.5 time `[EventTime, metadata...]` rather
/// than a Forward entry list (whose elements are arrays).
fn is_v15_time(cur: &[u8]) -> bool {
    let mut probe = cur;
    matches!(msgpack::read_array_len(&mut probe), Ok(n) if n >= 1)
        && matches!(msgpack::peek_kind(probe), Ok(Kind::Ext))
}

/// The options we act on. Unknown keys are ignored.
#[derive(Debug, Default)]
struct Options<'a> {
    /// Raw encoding of the `chunk` value.
    chunk: Option<&'a [u8]>,
    /// `compressed` is `"gzip"`.
    gzip: bool,
}

impl<'a> Options<'a> {
    /// Reads the options element if `present`. `nil` counts as absent.
    fn parse(cur: &mut &'a [u8], present: bool) -> Result<Self, DecodeError> {
        let mut options = Self::default();
        if !present {
            return Ok(options);
        }
        let pairs = match msgpack::read_token(cur)? {
            Token::Nil => return Ok(options),
            Token::Map(n) => n,
            _ => return Err(DecodeError::Malformed("options is not a map")),
        };
        for _ in 0..pairs {
            let key = msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
            let value = msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
            match key {
                b"\xa5chunk" => match msgpack::peek_kind(value)? {
                    Kind::Str | Kind::Bin => options.chunk = Some(value),
                    Kind::Nil => options.chunk = None,
                    _ => return Err(DecodeError::Malformed("chunk option is not a string")),
                },
                // Fluentd sends "text" when not compressing: only "gzip" means anything.
                b"\xaacompressed" => options.gzip = value == b"\xa4gzip",
                _ => {}
            }
        }
        Ok(options)
    }

    fn chunk(&self, frame: &Bytes) -> Option<Bytes> {
        self.chunk.map(|raw| frame.slice_ref(raw))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Forward,
    Message,
}

/// The entries of one request while they are being walked.
#[derive(Debug, Default)]
struct Batch {
    mode: Mode,
    /// Built only when some entry is not canonical (or was skipped).
    owned: Option<Vec<u8>>,
    /// The zero-copy result, when every entry was canonical.
    borrowed: Option<Bytes>,
    records: u32,
    skipped: u32,
    /// "Now", read once per request for every entry without a time.
    now: Option<EventTime>,
    /// Most bytes `owned` may hold (`max_decompressed_bytes`): re-encoding grows small entries
    /// up to fourfold, and what is built here must still fit in a buffer frame.
    limit: usize,
}

impl Batch {
    /// Walks the entries at the start of `region`: `count` of them (Forward), or until the end
    /// (PackedForward). Returns the bytes consumed.
    fn entries(&mut self, region: &[u8], count: Option<u32>) -> Result<usize, DecodeError> {
        let mut cur = region;
        let mut left = count;
        loop {
            match left.as_mut() {
                Some(0) => break,
                Some(n) => *n -= 1,
                None if cur.is_empty() => break,
                None => {}
            }
            if let Some(entry) = entries::canonical(cur)? {
                let (entry, rest) = cur
                    .split_at_checked(entry.len)
                    .ok_or(MsgpackError::Truncated)?;
                if let Some(out) = self.owned.as_mut() {
                    out.extend_from_slice(entry);
                }
                self.records = self.records.saturating_add(1);
                cur = rest;
                continue;
            }
            // Not canonical: from here on, build the output (starting with the canonical
            // prefix already walked).
            let done = region.len() - cur.len();
            let out = self.owned.get_or_insert_with(|| {
                // Re-encoded times are at most 9 bytes longer than the smallest time (a fixint).
                let mut out = Vec::with_capacity(region.len() + region.len() / 16 + 64);
                out.extend_from_slice(region.get(..done).unwrap_or_default());
                out
            });
            match parse_entry(&mut cur)? {
                Some((time, record)) => {
                    let time = resolve(time, &mut self.now);
                    encode_entry(time, record, out);
                    self.records = self.records.saturating_add(1);
                }
                None => self.skipped = self.skipped.saturating_add(1),
            }
            self.check_owned()?;
        }
        self.check_owned()?;
        Ok(region.len() - cur.len())
    }

    /// Fails once the re-encoded entries outgrow [`Batch::limit`].
    fn check_owned(&self) -> Result<(), DecodeError> {
        match &self.owned {
            Some(out) if out.len() > self.limit => {
                Err(DecodeError::DecompressedTooLarge { limit: self.limit })
            }
            _ => Ok(()),
        }
    }

    /// Message mode: `time, record` at `cur`.
    fn message(&mut self, cur: &mut &[u8]) -> Result<(), DecodeError> {
        self.mode = Mode::Message;
        let time = entries::read_time(cur)?;
        let record = msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
        let out = self.owned.get_or_insert_with(Vec::new);
        match valid(time, record) {
            Some(time) => {
                out.reserve(1 + EventTime::ENCODED_LEN + record.len());
                encode_entry(resolve(time, &mut self.now), record, out);
                self.records = 1;
            }
            None => self.skipped = 1,
        }
        Ok(())
    }

    /// Records where the walked `entries` live, for the zero-copy case: `entries` must be a
    /// subslice of `source`.
    fn set_source(&mut self, source: &Bytes, entries: &[u8]) {
        if self.owned.is_none() {
            self.borrowed = Some(source.slice_ref(entries));
        }
    }

    fn finish(self, tag: &str, chunk: Option<Bytes>, wire_bytes: usize) -> Request {
        let entries = match (self.owned, self.borrowed) {
            (Some(owned), _) => Bytes::from(owned),
            (None, Some(borrowed)) => borrowed,
            (None, None) => Bytes::new(),
        };
        Request::Events(EventBatch {
            tag: tag.to_owned(),
            entries,
            records: self.records,
            skipped: self.skipped,
            chunk,
            wire_bytes,
        })
    }
}

/// A general entry: `[time, record, ignored...]`. `Ok(None)` for an entry to skip; errors only
/// for invalid msgpack.
fn parse_entry<'a>(cur: &mut &'a [u8]) -> Result<Option<(RawTime, &'a [u8])>, DecodeError> {
    let mut probe = *cur;
    let n = match msgpack::read_token(&mut probe)? {
        Token::Array(n) if n >= 2 => n,
        _ => {
            msgpack::skip_value(cur, ENTRY_MAX_DEPTH)?;
            return Ok(None);
        }
    };
    *cur = probe;
    let time = entries::read_time(cur)?;
    let record = msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
    // Fluentd reads `time, record = entry` and ignores anything after.
    for _ in 2..n {
        msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
    }
    Ok(valid(time, record).map(|time| (time, record)))
}

/// The entry's time if the entry is to be kept: the time is a time (or nil) and the record a map.
fn valid(time: RawTime, record: &[u8]) -> Option<RawTime> {
    let is_map = record.first().is_some_and(|&m| msgpack::is_map_marker(m));
    (is_map && time != RawTime::Invalid).then_some(time)
}

/// Fluentd's rule: a missing time or one whose seconds are 0 means "now".
fn resolve(time: RawTime, now: &mut Option<EventTime>) -> EventTime {
    match time {
        RawTime::At(t) if t.secs != 0 => t,
        _ => *now.get_or_insert_with(EventTime::now),
    }
}

/// Inflates a (possibly multi-member) gzip payload, never holding more than `limit` + 1 bytes.
///
/// The output grows in steps that start near the expected size (a few times the input) and
/// double up to [`INFLATE_STEP`], so small payloads cost little and a bomb is stopped one byte
/// past the limit.
fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    if data.is_empty() {
        return Ok(out);
    }
    let mut decoder = flate2::read::MultiGzDecoder::new(data);
    let mut step = data.len().saturating_mul(4).clamp(4096, INFLATE_STEP);
    loop {
        // Read at most one byte past the limit: enough to know it was exceeded.
        let room = limit.saturating_add(1).saturating_sub(out.len()).min(step);
        if room == 0 {
            return Err(DecodeError::DecompressedTooLarge { limit });
        }
        let start = out.len();
        let want = start + room;
        if out.capacity() < want {
            // Geometric growth (amortised copies), capped at the limit + 1.
            let target = out
                .capacity()
                .saturating_mul(2)
                .clamp(want, limit.saturating_add(1).max(want));
            out.reserve_exact(target - start);
        }
        out.resize(want, 0);
        let read = loop {
            match decoder.read(out.get_mut(start..).unwrap_or_default()) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DecodeError::Gzip(e)),
            }
        };
        out.truncate(start + read);
        if read == 0 {
            break;
        }
        step = step.saturating_mul(2).min(INFLATE_STEP);
    }
    if out.len() > limit {
        return Err(DecodeError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::encode::{encode_compressed_packed_forward, encode_packed_forward, gzip};
    use crate::forward::entries::Entries;

    fn record(i: u32) -> Vec<u8> {
        rmp_serde::to_vec_named(&serde_json::json!({ "log": format!("line {i}"), "seq": i }))
            .unwrap()
    }

    fn canonical(n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            encode_entry(EventTime::new(1_700_000_000 + i, i), &record(i), &mut out);
        }
        out
    }

    fn decode_all(bytes: &[u8]) -> Vec<Request> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(request) = decoder.decode(&mut buf).unwrap() {
            out.push(request);
        }
        assert!(buf.is_empty(), "left over: {:x?}", &buf[..]);
        out
    }

    fn events(request: &Request) -> &EventBatch {
        match request {
            Request::Events(batch) => batch,
            other => panic!("not events: {other:?}"),
        }
    }

    #[test]
    fn packed_forward_is_zero_copy() {
        let entries = canonical(3);
        let mut wire = Vec::new();
        encode_packed_forward("kube.a", &entries, 3, Some("id"), &mut wire);
        let mut buf = BytesMut::from(&wire[..]);
        let base = buf.as_ptr() as usize;
        let request = Decoder::default().decode(&mut buf).unwrap().unwrap();
        let batch = events(&request);
        assert_eq!(batch.entries, entries);
        assert_eq!(
            (batch.records, batch.skipped, batch.wire_bytes),
            (3, 0, wire.len())
        );
        let at = batch.entries.as_ptr() as usize;
        assert!(
            at >= base && at < base + wire.len(),
            "entries must point into the input"
        );
        assert_eq!(batch.chunk.as_deref(), Some(&b"\xa2id"[..]));
        assert_eq!(batch.ack().unwrap(), b"\x81\xa3ack\xa2id");
    }

    #[test]
    fn forward_mode_canonical_is_zero_copy_too() {
        let entries = canonical(2);
        let mut wire = vec![0x92, 0xa1, b't', 0x92];
        wire.extend_from_slice(&entries);
        let mut buf = BytesMut::from(&wire[..]);
        let base = buf.as_ptr() as usize;
        let request = Decoder::default().decode(&mut buf).unwrap().unwrap();
        let batch = events(&request);
        assert_eq!(batch.entries, entries);
        assert_eq!(batch.records, 2);
        assert_eq!(batch.entries.as_ptr() as usize, base + 4);
    }

    #[test]
    fn mixed_entries_are_canonicalised_and_skips_counted() {
        let mut payload = canonical(1);
        // uint time
        payload.extend_from_slice(&[0x92, 0xce, 0x5f, 0xee, 0x66, 0x00]);
        payload.extend_from_slice(&record(1));
        // record is a string: skipped
        payload.extend_from_slice(&[0x92, 0x01, 0xa1, b'x']);
        // nil record: skipped
        payload.extend_from_slice(&[0x92, 0x01, 0xc0]);
        // entry is not an array: skipped
        payload.extend_from_slice(&[0x81, 0x01, 0x02]);
        // entry too short: skipped
        payload.extend_from_slice(&[0x91, 0x01]);
        // v1.5 time with extra trailing element
        payload.extend_from_slice(&[0x93, 0x92, 0xd7, 0, 0, 0, 0, 9, 0, 0, 0, 9, 0x80]);
        payload.extend_from_slice(&record(2));
        payload.push(0xc0);
        let mut wire = Vec::new();
        encode_packed_forward("t", &payload, 8, None, &mut wire);
        let batch = events(&decode_all(&wire)[0]).clone();
        assert_eq!((batch.records, batch.skipped), (3, 4));
        assert_eq!(batch.chunk, None);
        let got: Vec<_> = Entries::new(&batch.entries).map(Result::unwrap).collect();
        assert_eq!(got[0].time, EventTime::new(1_700_000_000, 0));
        assert_eq!(got[1].time, EventTime::new(0x5fee_6600, 0));
        assert_eq!(got[1].record, record(1));
        assert_eq!(got[2].time, EventTime::new(9, 9));
        assert_eq!(got[2].record, record(2));
    }

    #[test]
    fn zero_and_nil_times_become_now() {
        let before = EventTime::now();
        let mut payload = vec![0x92, 0x00];
        payload.extend_from_slice(&record(0));
        payload.extend_from_slice(&[0x92, 0xc0]);
        payload.extend_from_slice(&record(1));
        payload.extend_from_slice(&[0x92, 0xd7, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        payload.extend_from_slice(&record(2));
        let mut wire = Vec::new();
        encode_packed_forward("t", &payload, 3, None, &mut wire);
        let batch = events(&decode_all(&wire)[0]).clone();
        let times: Vec<_> = Entries::new(&batch.entries)
            .map(|e| e.unwrap().time)
            .collect();
        assert_eq!(times.len(), 3);
        assert!(times.iter().all(|t| *t >= before && *t == times[0]));
    }

    #[test]
    fn gzip_limit_and_errors() {
        let entries = canonical(100);
        let mut wire = Vec::new();
        encode_compressed_packed_forward("t", &gzip(&entries), 100, None, &mut wire);
        let limits = Limits {
            max_decompressed_bytes: entries.len(),
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&wire[..]);
        let request = Decoder::new(limits).decode(&mut buf).unwrap().unwrap();
        assert_eq!(events(&request).entries, entries);
        let limits = Limits {
            max_decompressed_bytes: entries.len() - 1,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&wire[..]);
        assert!(matches!(
            Decoder::new(limits).decode(&mut buf),
            Err(DecodeError::DecompressedTooLarge { .. })
        ));
        // Corrupt gzip.
        let mut wire = Vec::new();
        encode_compressed_packed_forward("t", b"not gzip at all", 1, None, &mut wire);
        let err = Decoder::default()
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap_err();
        assert_eq!(err.code(), "gzip");
        // Empty compressed payload: no entries.
        let mut wire = Vec::new();
        encode_compressed_packed_forward("t", b"", 0, Some("c"), &mut wire);
        let batch = events(&decode_all(&wire)[0]).clone();
        assert_eq!((batch.records, batch.entries.len()), (0, 0));
        assert!(batch.ack().is_some());
    }

    #[test]
    fn reencoded_entries_are_held_to_the_decompressed_limit() {
        // 1000 entries `[nil, {}]` of 3 bytes each re-encode to 12 bytes each.
        let mut entries = Vec::new();
        for _ in 0..1000 {
            entries.extend_from_slice(&[0x92, 0xc0, 0x80]);
        }
        let mut wire = Vec::new();
        encode_packed_forward("t", &entries, 1000, None, &mut wire);
        let limits = |max| Limits {
            max_decompressed_bytes: max,
            ..Limits::default()
        };
        let request = Decoder::new(limits(12_000))
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap()
            .unwrap();
        assert_eq!(events(&request).entries.len(), 12_000);
        assert!(matches!(
            Decoder::new(limits(11_999)).decode(&mut BytesMut::from(&wire[..])),
            Err(DecodeError::DecompressedTooLarge { limit: 11_999 })
        ));
    }

    #[test]
    fn parse_bound_covers_what_parse_allocates() {
        let limits = Limits::default();
        let entries = canonical(100);
        let mut plain = Vec::new();
        encode_packed_forward("t", &entries, 100, Some("c"), &mut plain);
        let mut zipped = Vec::new();
        encode_compressed_packed_forward("t", &gzip(&entries), 100, Some("c"), &mut zipped);
        let frame = |wire: &[u8]| {
            Decoder::new(limits)
                .next_frame(&mut BytesMut::from(wire))
                .unwrap()
                .unwrap()
        };
        let plain = frame(&plain);
        assert_eq!(plain.parse_bound(&limits), plain.bytes().len() * 4);
        let zipped = frame(&zipped);
        assert_eq!(
            zipped.parse_bound(&limits),
            2 * limits.max_decompressed_bytes
        );
        assert_eq!(
            events(&zipped.parse(&limits).unwrap().unwrap()).entries,
            entries
        );
    }

    #[test]
    fn gunzip_never_grows_past_the_limit() {
        let data = gzip(&vec![0u8; 8 * 1024 * 1024]);
        let err = gunzip(&data, 1000).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::DecompressedTooLarge { limit: 1000 }
        ));
        let ok = gunzip(&data, 8 * 1024 * 1024).unwrap();
        assert_eq!(ok.len(), 8 * 1024 * 1024);
        assert!(ok.capacity() <= 8 * 1024 * 1024 + 1);
    }

    #[test]
    fn request_limit_applies_to_declared_and_buffered_lengths() {
        let limits = Limits {
            max_request_bytes: 100,
            ..Limits::default()
        };
        // A declared bin32 of 1 MiB: rejected from the 9 header bytes alone.
        let mut buf = BytesMut::from(&[0x93, 0xa1, b't', 0xc6, 0x00, 0x10, 0x00, 0x00][..]);
        assert!(matches!(
            Decoder::new(limits).decode(&mut buf),
            Err(DecodeError::RequestTooLarge { limit: 100 })
        ));
        // A complete request over the limit.
        let mut wire = Vec::new();
        encode_packed_forward("t", &canonical(5), 5, None, &mut wire);
        assert!(wire.len() > 100);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            Decoder::new(limits).decode(&mut buf).unwrap_err().code(),
            "request_too_large"
        );
    }

    #[test]
    fn tag_length_is_limited() {
        let limits = Limits {
            max_tag_bytes: 8,
            ..Limits::default()
        };
        for (tag, ok) in [("12345678", true), ("123456789", false)] {
            let mut wire = Vec::new();
            encode_packed_forward(tag, &canonical(1), 1, None, &mut wire);
            let got = Decoder::new(limits).decode(&mut BytesMut::from(&wire[..]));
            match got {
                Ok(Some(request)) if ok => assert_eq!(events(&request).tag, tag),
                Err(e) if !ok => {
                    assert!(matches!(e, DecodeError::TagTooLong { limit: 8 }));
                    assert_eq!(e.code(), "tag_too_long");
                }
                other => panic!("{tag:?}: {other:?}"),
            }
        }
        // Message mode too, and with the default limit.
        let tag = "t".repeat(Limits::DEFAULT_MAX_TAG_BYTES + 1);
        let mut wire = vec![0x93, 0xda];
        wire.extend_from_slice(&u16::try_from(tag.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(tag.as_bytes());
        wire.extend_from_slice(&[0x01, 0x80]);
        let err = Decoder::default()
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap_err();
        assert_eq!(err.code(), "tag_too_long");
    }

    #[test]
    fn errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x90], "malformed"),
            (vec![0x91, 0xa1, b't'], "malformed"),
            (vec![0x92, 0x01, 0x90], "malformed"),
            (vec![0x93, 0xa1, b't', 0x80, 0x80], "malformed"),
            (vec![0x95, 0xa1, b't', 0x01, 0x80, 0x80, 0x80], "malformed"),
            (vec![0x92, 0xa1, b't', 0x01], "malformed"),
            (vec![0x93, 0xa1, b't', 0xc4, 0x00, 0x01], "malformed"),
            (
                vec![
                    0x93, 0xa1, b't', 0xc4, 0x00, 0x81, 0xa5, b'c', b'h', b'u', b'n', b'k', 0x01,
                ],
                "malformed",
            ),
            (vec![0x92, 0xa1, 0xff, 0x90], "invalid_utf8_tag"),
            (
                vec![0x92, 0xa1, b't', 0xc4, 0x02, 0x92, 0x01],
                "invalid_msgpack",
            ),
            (vec![0x92, 0xa1, b't', 0xc1], "invalid_msgpack"),
            (vec![0x91, 0xa4, b'P', b'I', b'N', b'G'], "malformed"),
            (
                vec![0x96, 0xa4, b'P', b'I', b'N', b'G', 1, 2, 3, 4, 5],
                "malformed",
            ),
            (vec![0x92, 0xa4, b'H', b'E', b'L', b'O', 0x80], "malformed"),
        ];
        for (bytes, code) in cases {
            let err = Decoder::default()
                .decode(&mut BytesMut::from(&bytes[..]))
                .unwrap_err();
            assert_eq!(err.code(), code, "{bytes:x?}: {err}");
        }
    }

    #[test]
    fn handshake_messages() {
        use crate::forward::handshake::*;
        let helo = Helo {
            nonce: Bytes::from_static(&[7; 16]),
            auth_salt: Bytes::new(),
            keepalive: true,
        };
        let ping = Ping {
            client_hostname: "f".into(),
            shared_key_salt: Bytes::from_static(&[0xff, 0x00]),
            shared_key_digest: "d".into(),
            username: "u".into(),
            password_digest: "p".into(),
        };
        let pong = Pong {
            auth_result: false,
            reason: "nope".into(),
            server_hostname: String::new(),
            shared_key_digest: String::new(),
        };
        let mut wire = Vec::new();
        encode_helo(&helo, &mut wire);
        encode_ping(&ping, &mut wire);
        encode_pong(&pong, &mut wire);
        assert_eq!(
            decode_all(&wire),
            vec![
                Request::Handshake(Message::Helo(helo)),
                Request::Handshake(Message::Ping(ping)),
                Request::Handshake(Message::Pong(pong)),
            ]
        );
        // A Forward request tagged "HELO" is still events.
        let mut wire = vec![0x92, 0xa4, b'H', b'E', b'L', b'O', 0x90];
        encode_packed_forward("PING", &canonical(1), 1, None, &mut wire);
        let got = decode_all(&wire);
        assert_eq!(events(&got[0]).tag, "HELO");
        assert_eq!(events(&got[1]).tag, "PING");
    }

    #[test]
    fn message_mode_with_v15_time() {
        let rec = record(1);
        let mut wire = vec![
            0x93, 0xa1, b't', 0x92, 0xd7, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0x81, 0xa1, b'k', 0x01,
        ];
        wire.extend_from_slice(&rec);
        let batch = events(&decode_all(&wire)[0]).clone();
        let got: Vec<_> = Entries::new(&batch.entries).map(Result::unwrap).collect();
        assert_eq!(
            got,
            vec![entries::Entry {
                time: EventTime::new(1, 2),
                record: &rec
            }]
        );
    }

    #[test]
    fn ignored_values_and_heartbeats() {
        let mut wire = vec![0x01, 0xa3, b'a', b'b', b'c', 0x80, 0xc0];
        encode_packed_forward("t", &canonical(1), 1, None, &mut wire);
        let got = decode_all(&wire);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Request::Heartbeat);
        // Only ignored values: everything consumed, nothing returned.
        assert!(decode_all(&[0x01, 0x02, 0x80]).is_empty());
    }

    /// Audit E3: one incomplete request (an array32 of 1-byte elements, then 257-byte str8
    /// elements) whose bytes arrive exactly up to the decoder's `need` bound each time. Every
    /// arrival used to rescan the whole buffer (quadratic); the scan must resume instead.
    #[test]
    fn trickled_request_is_scanned_in_linear_time() {
        const BULK: usize = 100_000;
        const TAIL: usize = 2000;
        let mut stream = vec![0xdd];
        stream.extend_from_slice(&u32::try_from(BULK + TAIL).unwrap().to_be_bytes());
        stream.resize(stream.len() + BULK, 0x01);
        for _ in 0..TAIL {
            stream.extend_from_slice(&[0xd9, 0xff]);
            stream.extend_from_slice(&[b'a'; 255]);
        }
        let head = 5 + BULK;
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&stream[..head]);
        let before = msgpack::scan_count::get();
        let mut steps = 0;
        while buf.len() < stream.len() {
            assert_eq!(decoder.decode(&mut buf).unwrap(), None);
            let next = decoder.need.min(stream.len());
            assert!(next > buf.len(), "need must exceed the buffer");
            buf.extend_from_slice(&stream[buf.len()..next]);
            steps += 1;
        }
        // The whole value has arrived: an array that is not a request.
        assert_eq!(decoder.decode(&mut buf).unwrap_err().code(), "malformed");
        let scanned = msgpack::scan_count::get() - before;
        assert!(steps > 100, "the trickle took {steps} steps");
        assert!(
            scanned < 3 * stream.len() as u64,
            "scanned {scanned} bytes for a {} byte request in {steps} steps",
            stream.len()
        );
    }

    #[test]
    fn tokio_codec_decode_eof() {
        use tokio_util::codec::Decoder as _;
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&[0xc0, 0x92][..]);
        assert_eq!(
            decoder.decode_eof(&mut buf).unwrap(),
            Some(Request::Heartbeat)
        );
        assert_eq!(
            decoder.decode_eof(&mut buf).unwrap_err().code(),
            "unexpected_eof"
        );
        let err: DecodeError = std::io::Error::other("x").into();
        assert_eq!(err.code(), "io");
    }
}
