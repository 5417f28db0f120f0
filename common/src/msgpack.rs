//! Low-level MessagePack helpers: find value boundaries, read scalars, write headers, transcode
//! to JSON.
//!
//! The Forward protocol has no framing of its own: a connection is a stream of concatenated
//! msgpack values, and a PackedForward payload is itself a stream of concatenated entries. So the
//! one operation everything leans on is "how long is the value at the start of this buffer?"
//! ([`value_len`], [`scan_value`]). It walks the encoding without building a tree and without
//! allocating (the nesting stack lives inline up to [`INLINE_DEPTH`] levels), so the server can
//! find request boundaries and validate records at memory speed.
//!
//! ## Design constraints
//!
//! - Pure: bytes in, values out. No IO, no `unsafe`, no panics on any input.
//! - Never trust a length field: a declared length is compared with the bytes actually present
//!   before anything is sized from it; nothing here allocates from a declared length.
//! - Bounded nesting: every walker takes (or uses) a maximum depth and fails with
//!   [`MsgpackError::TooDeep`] instead of overflowing the stack. Depth counts containers: a
//!   scalar has depth 0, `[1]` depth 1, `{"a": [1]}` depth 2.
//!
//! ## Encoding summary
//!
//! ```text
//! 00-7f positive fixint      80-8f fixmap (n pairs)   90-9f fixarray (n)   a0-bf fixstr (n bytes)
//! c0 nil  c2 false  c3 true  c1 never used (invalid)
//! c4/c5/c6 bin 8/16/32       : marker | len (1/2/4 bytes BE) | data
//! c7/c8/c9 ext 8/16/32       : marker | len (1/2/4 bytes BE) | type (i8) | data
//! ca float32  cb float64     cc/cd/ce/cf uint 8/16/32/64   d0/d1/d2/d3 int 8/16/32/64
//! d4/d5/d6/d7/d8 fixext 1/2/4/8/16 : marker | type (i8) | data
//! d9/da/db str 8/16/32       : marker | len (1/2/4 bytes BE) | UTF-8 bytes
//! dc/dd array 16/32          de/df map 16/32 (count of pairs)
//! e0-ff negative fixint
//! ```
//!
//! ## JSON transcoding
//!
//! [`write_json`] turns one value into JSON text without an intermediate tree. The mapping is
//! chosen so that every msgpack value has *some* JSON rendering (outputs must never choke on a
//! record): see the function docs.

use std::borrow::Cow;

use crate::event_time::EventTime;

/// Nesting limit used by [`write_json`] and, for records, by the Forward decoder. Kubernetes
/// records are 3-4 levels deep; anything near this limit is hostile or broken.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Nesting levels tracked without touching the heap while scanning. Deeper values (up to the
/// caller's `max_depth`) spill into a `Vec` bounded by the input length.
pub const INLINE_DEPTH: usize = 32;

/// Why a msgpack value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MsgpackError {
    /// The input ends inside the value. From [`value_len`] this is reported as `Ok(None)`
    /// instead; readers that work on a complete buffer report it as this error.
    #[error("msgpack value truncated")]
    Truncated,
    /// The marker byte `0xc1`, which the format reserves and never uses.
    #[error("invalid msgpack marker byte 0x{0:02x}")]
    InvalidMarker(u8),
    /// Containers nested deeper than the allowed depth.
    #[error("msgpack nesting deeper than {max_depth} levels")]
    TooDeep {
        /// The limit that was exceeded.
        max_depth: usize,
    },
    /// A reader expected one type and found another.
    #[error("expected msgpack {expected}, found {found:?}")]
    TypeMismatch {
        /// What the reader wanted, e.g. `"str"`.
        expected: &'static str,
        /// What the input held.
        found: Kind,
    },
}

impl MsgpackError {
    /// A short, stable label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::InvalidMarker(_) => "invalid_marker",
            Self::TooDeep { .. } => "too_deep",
            Self::TypeMismatch { .. } => "type_mismatch",
        }
    }
}

/// The msgpack type family of a value, as told by its marker byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `nil`
    Nil,
    /// `true` / `false`
    Bool,
    /// Any integer encoding, signed or unsigned.
    Int,
    /// float32 or float64.
    Float,
    /// UTF-8 string (not validated).
    Str,
    /// Binary.
    Bin,
    /// Array.
    Array,
    /// Map.
    Map,
    /// Extension type.
    Ext,
}

/// The type family of a marker byte, `None` for the unused marker `0xc1`.
pub fn kind_of(marker: u8) -> Option<Kind> {
    Some(match marker {
        0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => Kind::Int,
        0x80..=0x8f | 0xde | 0xdf => Kind::Map,
        0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
        0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
        0xc0 => Kind::Nil,
        0xc1 => return None,
        0xc2 | 0xc3 => Kind::Bool,
        0xc4..=0xc6 => Kind::Bin,
        0xc7..=0xc9 | 0xd4..=0xd8 => Kind::Ext,
        0xca | 0xcb => Kind::Float,
    })
}

/// The kind of the value at the start of `buf`.
///
/// # Errors
/// [`MsgpackError::Truncated`] on empty input, [`MsgpackError::InvalidMarker`] on `0xc1`.
pub fn peek_kind(buf: &[u8]) -> Result<Kind, MsgpackError> {
    let &marker = buf.first().ok_or(MsgpackError::Truncated)?;
    kind_of(marker).ok_or(MsgpackError::InvalidMarker(marker))
}

/// True for the marker bytes of a map (`fixmap`, `map16`, `map32`).
#[inline]
pub fn is_map_marker(marker: u8) -> bool {
    matches!(marker, 0x80..=0x8f | 0xde | 0xdf)
}

// ---------------------------------------------------------------------------------------------
// Boundary scanning
// ---------------------------------------------------------------------------------------------

/// Outcome of [`scan_value`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The value is complete and occupies this many bytes.
    Complete(usize),
    /// The buffer ends inside the value. `min_len` is a lower bound on the value's total length
    /// (declared string/binary lengths plus one byte per element still to come), always greater
    /// than the buffer length: a caller can reject an oversized value as soon as it is declared,
    /// and need not rescan before that many bytes are buffered.
    Incomplete {
        /// Lower bound on the value's encoded length.
        min_len: usize,
    },
}

/// The encoded length of the one complete value at the start of `buf`, or `Ok(None)` if `buf`
/// ends before the value does (read more bytes and call again).
///
/// # Errors
/// [`MsgpackError::InvalidMarker`] on the unused marker byte and [`MsgpackError::TooDeep`] when
/// containers nest deeper than `max_depth` (both are reported as soon as they are seen, even if
/// the value is incomplete).
#[inline]
pub fn value_len(buf: &[u8], max_depth: usize) -> Result<Option<usize>, MsgpackError> {
    Ok(match scan_value(buf, max_depth)? {
        Scan::Complete(len) => Some(len),
        Scan::Incomplete { .. } => None,
    })
}

/// Like [`value_len`], but an incomplete value also reports a lower bound on its length.
///
/// Scans from the start of `buf` every time; a caller that waits for an incomplete value to
/// arrive in pieces should keep a [`Scanner`] instead, so the bytes already walked are not
/// walked again.
///
/// # Errors
/// As [`value_len`].
pub fn scan_value(buf: &[u8], max_depth: usize) -> Result<Scan, MsgpackError> {
    Scanner::default().scan(buf, max_depth)
}

/// A resumable [`scan_value`] for a value that arrives in pieces.
///
/// When the buffer ends inside the value, the scanner keeps where it stopped (the start of the
/// element it could not finish) and the open containers, and the next [`Scanner::scan`]
/// continues from there. So a value trickled in any number of pieces is walked once in total,
/// not once per piece.
///
/// Invariant: between two calls, the buffer passed must be the same bytes, possibly extended
/// at the end, and `max_depth` the same. A complete value or an error resets the scanner to
/// the start, ready for the next value (at the start of the buffer left after the caller
/// removes this one). [`Scanner::reset`] starts over explicitly.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of the current value already walked: the start of the next element to read.
    pos: usize,
    /// The open containers at `pos`.
    stack: DepthStack,
}

impl Scanner {
    /// Continues the scan of the value at the start of `buf`. See [`scan_value`] for the
    /// outcome, and the [type docs](Scanner) for what `buf` must be.
    ///
    /// # Errors
    /// As [`value_len`]; the scanner is reset.
    pub fn scan(&mut self, buf: &[u8], max_depth: usize) -> Result<Scan, MsgpackError> {
        if buf.len() < self.pos {
            // Not the buffer of the previous calls: its progress means nothing here.
            self.reset();
        }
        let result = self.resume(buf, max_depth);
        if !matches!(result, Ok(Scan::Incomplete { .. })) {
            self.reset();
        }
        result
    }

    /// Forgets any progress: the next scan starts at the first byte.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.stack.clear();
    }

    #[inline]
    fn resume(&mut self, buf: &[u8], max_depth: usize) -> Result<Scan, MsgpackError> {
        let stack = &mut self.stack;
        let mut pos = self.pos;
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            match head(rest)? {
                Head::NeedHeader(n) => {
                    self.pos = pos;
                    return Ok(incomplete(buf, add(pos, n as u64), stack));
                }
                Head::Leaf(n) => {
                    let end = add(pos, n);
                    match usize::try_from(end) {
                        Ok(end) if end <= buf.len() => {
                            #[cfg(test)]
                            scan_count::add(end - pos);
                            pos = end;
                        }
                        _ => {
                            self.pos = pos;
                            return Ok(incomplete(buf, end, stack));
                        }
                    }
                }
                Head::Container { header, children } => {
                    if stack.len >= max_depth {
                        return Err(MsgpackError::TooDeep { max_depth });
                    }
                    // `head` only returns a container once its whole header is in `rest`.
                    #[cfg(test)]
                    scan_count::add(header);
                    pos += header;
                    if children > 0 {
                        stack.push(children);
                        continue;
                    }
                }
            }
            // One value is complete: it may complete its parent, and so on up.
            loop {
                match stack.last_mut() {
                    None => return Ok(Scan::Complete(pos)),
                    Some(left) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    Some(_) => stack.pop(),
                }
            }
        }
    }
}

/// Test instrumentation: bytes stepped over by the boundary scanner on this thread, so tests
/// can prove that scanning stays linear in the input.
#[cfg(test)]
pub(crate) mod scan_count {
    use std::cell::Cell;

    thread_local! {
        static BYTES: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn add(n: usize) {
        BYTES.with(|b| b.set(b.get().saturating_add(n as u64)));
    }

    /// Bytes scanned on this thread so far.
    pub(crate) fn get() -> u64 {
        BYTES.with(Cell::get)
    }
}

/// `pos + n` without overflow (saturating at `u64::MAX`, which no buffer reaches).
#[inline]
fn add(pos: usize, n: u64) -> u64 {
    (pos as u64).saturating_add(n)
}

/// The lower bound for an incomplete value: the end of the element being read, plus one byte for
/// every element still to come in each open container.
fn incomplete(buf: &[u8], current_end: u64, stack: &DepthStack) -> Scan {
    let pending = stack
        .iter()
        .fold(0u64, |acc, left| acc.saturating_add(left - 1));
    let min = current_end.saturating_add(pending);
    let min = usize::try_from(min).unwrap_or(usize::MAX);
    Scan::Incomplete {
        min_len: min.max(buf.len().saturating_add(1)),
    }
}

/// What the marker (and length field) at the start of a buffer says.
enum Head {
    /// Not even the header is complete; the header is this many bytes.
    NeedHeader(usize),
    /// A value without children, `n` bytes in total (header + payload, possibly beyond the
    /// buffer).
    Leaf(u64),
    /// An array or map header of `header` bytes followed by `children` values (2 per map pair).
    Container { header: usize, children: u64 },
}

#[inline]
fn head(buf: &[u8]) -> Result<Head, MsgpackError> {
    let Some(&marker) = buf.first() else {
        return Ok(Head::NeedHeader(1));
    };
    Ok(match marker {
        0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Head::Leaf(1),
        0x80..=0x8f => Head::Container {
            header: 1,
            children: u64::from(marker & 0x0f) * 2,
        },
        0x90..=0x9f => Head::Container {
            header: 1,
            children: u64::from(marker & 0x0f),
        },
        0xa0..=0xbf => Head::Leaf(1 + u64::from(marker & 0x1f)),
        0xc1 => return Err(MsgpackError::InvalidMarker(marker)),
        0xc4 | 0xd9 => sized(buf, 1, 0),
        0xc5 | 0xda => sized(buf, 2, 0),
        0xc6 | 0xdb => sized(buf, 4, 0),
        0xc7 => sized(buf, 1, 1),
        0xc8 => sized(buf, 2, 1),
        0xc9 => sized(buf, 4, 1),
        0xcc | 0xd0 => Head::Leaf(2),
        0xcd | 0xd1 => Head::Leaf(3),
        0xca | 0xce | 0xd2 => Head::Leaf(5),
        0xcb | 0xcf | 0xd3 => Head::Leaf(9),
        0xd4 => Head::Leaf(3),
        0xd5 => Head::Leaf(4),
        0xd6 => Head::Leaf(6),
        0xd7 => Head::Leaf(10),
        0xd8 => Head::Leaf(18),
        0xdc => container(buf, 2, 1),
        0xdd => container(buf, 4, 1),
        0xde => container(buf, 2, 2),
        0xdf => container(buf, 4, 2),
    })
}

/// Big-endian length of `width` bytes right after the marker.
#[inline]
fn be_len(buf: &[u8], width: usize) -> Option<u64> {
    let bytes = buf.get(1..1 + width)?;
    Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// A str/bin (`extra` = 0) or ext (`extra` = 1, the type byte) with a `width`-byte length.
#[inline]
fn sized(buf: &[u8], width: usize, extra: usize) -> Head {
    let header = 1 + width + extra;
    match be_len(buf, width) {
        Some(len) if buf.len() >= header => Head::Leaf(header as u64 + len),
        _ => Head::NeedHeader(header),
    }
}

#[inline]
fn container(buf: &[u8], width: usize, per_entry: u64) -> Head {
    match be_len(buf, width) {
        Some(n) => Head::Container {
            header: 1 + width,
            children: n * per_entry,
        },
        None => Head::NeedHeader(1 + width),
    }
}

/// Remaining-children counters of the open containers, inline up to [`INLINE_DEPTH`] levels.
#[derive(Debug)]
struct DepthStack {
    inline: [u64; INLINE_DEPTH],
    len: usize,
    spill: Vec<u64>,
}

impl Default for DepthStack {
    fn default() -> Self {
        Self {
            inline: [0; INLINE_DEPTH],
            len: 0,
            spill: Vec::new(),
        }
    }
}

impl DepthStack {
    #[inline]
    fn push(&mut self, children: u64) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = children,
            None => self.spill.push(children),
        }
        self.len += 1;
    }

    #[inline]
    fn last_mut(&mut self) -> Option<&mut u64> {
        let top = self.len.checked_sub(1)?;
        if top < INLINE_DEPTH {
            self.inline.get_mut(top)
        } else {
            self.spill.last_mut()
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }

    #[inline]
    fn pop(&mut self) {
        if self.len > INLINE_DEPTH {
            self.spill.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let inline = self
            .inline
            .get(..self.len.min(INLINE_DEPTH))
            .unwrap_or_default();
        inline.iter().chain(self.spill.iter()).copied()
    }
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

/// One msgpack token: a scalar, or the header of a container (whose elements follow).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Token<'a> {
    /// `nil`
    Nil,
    /// `true` / `false`
    Bool(bool),
    /// A positive fixint or `uint 8/16/32/64`.
    Uint(u64),
    /// A negative fixint or `int 8/16/32/64` (which may hold a non-negative value).
    Int(i64),
    /// `float 32`
    F32(f32),
    /// `float 64`
    F64(f64),
    /// String bytes (UTF-8 not validated).
    Str(&'a [u8]),
    /// Binary bytes.
    Bin(&'a [u8]),
    /// Extension: type and data.
    Ext {
        /// Application-defined type (0 is Fluentd's EventTime).
        kind: i8,
        /// Payload.
        data: &'a [u8],
    },
    /// Array header: this many elements follow.
    Array(u32),
    /// Map header: this many key/value pairs follow.
    Map(u32),
}

impl Token<'_> {
    /// The type family of the token.
    pub fn kind(&self) -> Kind {
        match self {
            Token::Nil => Kind::Nil,
            Token::Bool(_) => Kind::Bool,
            Token::Uint(_) | Token::Int(_) => Kind::Int,
            Token::F32(_) | Token::F64(_) => Kind::Float,
            Token::Str(_) => Kind::Str,
            Token::Bin(_) => Kind::Bin,
            Token::Ext { .. } => Kind::Ext,
            Token::Array(_) => Kind::Array,
            Token::Map(_) => Kind::Map,
        }
    }

    /// The value of an integer token that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Token::Uint(v) => Some(v),
            Token::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], MsgpackError> {
    let (head, rest) = buf.split_at_checked(n).ok_or(MsgpackError::Truncated)?;
    *buf = rest;
    Ok(head)
}

fn take_n<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], MsgpackError> {
    let bytes = take(buf, N)?;
    <[u8; N]>::try_from(bytes).map_err(|_| MsgpackError::Truncated)
}

fn take_len(buf: &mut &[u8], width: usize) -> Result<usize, MsgpackError> {
    let len = match width {
        1 => u64::from(take_n::<1>(buf)?[0]),
        2 => u64::from(u16::from_be_bytes(take_n(buf)?)),
        _ => u64::from(u32::from_be_bytes(take_n(buf)?)),
    };
    // A length that does not fit in usize cannot fit in the buffer either.
    usize::try_from(len).map_err(|_| MsgpackError::Truncated)
}

fn take_ext<'a>(buf: &mut &'a [u8], len: usize) -> Result<Token<'a>, MsgpackError> {
    let [kind] = take_n::<1>(buf)?;
    let data = take(buf, len)?;
    Ok(Token::Ext {
        kind: i8::from_ne_bytes([kind]),
        data,
    })
}

/// Reads one token and advances `buf` past it (past the header only, for arrays and maps).
/// On error `buf` is left unchanged.
///
/// # Errors
/// [`MsgpackError::Truncated`] if the token is incomplete, [`MsgpackError::InvalidMarker`] on
/// `0xc1`.
pub fn read_token<'a>(buf: &mut &'a [u8]) -> Result<Token<'a>, MsgpackError> {
    let mut cur = *buf;
    let [marker] = take_n::<1>(&mut cur)?;
    let token = match marker {
        0x00..=0x7f => Token::Uint(u64::from(marker)),
        0x80..=0x8f => Token::Map(u32::from(marker & 0x0f)),
        0x90..=0x9f => Token::Array(u32::from(marker & 0x0f)),
        0xa0..=0xbf => Token::Str(take(&mut cur, usize::from(marker & 0x1f))?),
        0xc0 => Token::Nil,
        0xc1 => return Err(MsgpackError::InvalidMarker(marker)),
        0xc2 => Token::Bool(false),
        0xc3 => Token::Bool(true),
        0xc4..=0xc6 => {
            let len = take_len(&mut cur, 1 << (marker - 0xc4))?;
            Token::Bin(take(&mut cur, len)?)
        }
        0xc7..=0xc9 => {
            let len = take_len(&mut cur, 1 << (marker - 0xc7))?;
            take_ext(&mut cur, len)?
        }
        0xca => Token::F32(f32::from_be_bytes(take_n(&mut cur)?)),
        0xcb => Token::F64(f64::from_be_bytes(take_n(&mut cur)?)),
        0xcc => Token::Uint(u64::from(u8::from_be_bytes(take_n(&mut cur)?))),
        0xcd => Token::Uint(u64::from(u16::from_be_bytes(take_n(&mut cur)?))),
        0xce => Token::Uint(u64::from(u32::from_be_bytes(take_n(&mut cur)?))),
        0xcf => Token::Uint(u64::from_be_bytes(take_n(&mut cur)?)),
        0xd0 => Token::Int(i64::from(i8::from_be_bytes(take_n(&mut cur)?))),
        0xd1 => Token::Int(i64::from(i16::from_be_bytes(take_n(&mut cur)?))),
        0xd2 => Token::Int(i64::from(i32::from_be_bytes(take_n(&mut cur)?))),
        0xd3 => Token::Int(i64::from_be_bytes(take_n(&mut cur)?)),
        0xd4..=0xd8 => take_ext(&mut cur, 1 << (marker - 0xd4))?,
        0xd9..=0xdb => {
            let len = take_len(&mut cur, 1 << (marker - 0xd9))?;
            Token::Str(take(&mut cur, len)?)
        }
        0xdc => Token::Array(u32::from(u16::from_be_bytes(take_n(&mut cur)?))),
        0xdd => Token::Array(u32::from_be_bytes(take_n(&mut cur)?)),
        0xde => Token::Map(u32::from(u16::from_be_bytes(take_n(&mut cur)?))),
        0xdf => Token::Map(u32::from_be_bytes(take_n(&mut cur)?)),
        0xe0..=0xff => Token::Int(i64::from(i8::from_ne_bytes([marker]))),
    };
    *buf = cur;
    Ok(token)
}

fn mismatch(expected: &'static str, token: &Token<'_>) -> MsgpackError {
    MsgpackError::TypeMismatch {
        expected,
        found: token.kind(),
    }
}

/// Reads an array header and returns its element count. `buf` is unchanged on error.
///
/// # Errors
/// [`MsgpackError::TypeMismatch`] if the value is not an array, or as [`read_token`].
pub fn read_array_len(buf: &mut &[u8]) -> Result<u32, MsgpackError> {
    let mut cur = *buf;
    match read_token(&mut cur)? {
        Token::Array(n) => {
            *buf = cur;
            Ok(n)
        }
        other => Err(mismatch("array", &other)),
    }
}

/// Reads a map header and returns its pair count. `buf` is unchanged on error.
///
/// # Errors
/// [`MsgpackError::TypeMismatch`] if the value is not a map, or as [`read_token`].
pub fn read_map_len(buf: &mut &[u8]) -> Result<u32, MsgpackError> {
    let mut cur = *buf;
    match read_token(&mut cur)? {
        Token::Map(n) => {
            *buf = cur;
            Ok(n)
        }
        other => Err(mismatch("map", &other)),
    }
}

/// Reads a string and returns its bytes (not validated as UTF-8). `buf` is unchanged on error.
///
/// # Errors
/// [`MsgpackError::TypeMismatch`] if the value is not a str, or as [`read_token`].
pub fn read_str<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], MsgpackError> {
    let mut cur = *buf;
    match read_token(&mut cur)? {
        Token::Str(s) => {
            *buf = cur;
            Ok(s)
        }
        other => Err(mismatch("str", &other)),
    }
}

/// Reads a str or a bin and returns its bytes. `buf` is unchanged on error.
///
/// # Errors
/// [`MsgpackError::TypeMismatch`] if the value is neither, or as [`read_token`].
pub fn read_str_or_bin<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], MsgpackError> {
    let mut cur = *buf;
    match read_token(&mut cur)? {
        Token::Str(s) | Token::Bin(s) => {
            *buf = cur;
            Ok(s)
        }
        other => Err(mismatch("str or bin", &other)),
    }
}

/// Reads a boolean. `buf` is unchanged on error.
///
/// # Errors
/// [`MsgpackError::TypeMismatch`] if the value is not a bool, or as [`read_token`].
pub fn read_bool(buf: &mut &[u8]) -> Result<bool, MsgpackError> {
    let mut cur = *buf;
    match read_token(&mut cur)? {
        Token::Bool(b) => {
            *buf = cur;
            Ok(b)
        }
        other => Err(mismatch("bool", &other)),
    }
}

/// Reads a non-negative integer in any encoding. `buf` is unchanged on error.
///
/// # Errors
/// [`MsgpackError::TypeMismatch`] if the value is not a non-negative integer, or as
/// [`read_token`].
pub fn read_u64(buf: &mut &[u8]) -> Result<u64, MsgpackError> {
    let mut cur = *buf;
    let token = read_token(&mut cur)?;
    let v = token
        .as_u64()
        .ok_or_else(|| mismatch("non-negative integer", &token))?;
    *buf = cur;
    Ok(v)
}

/// Skips one complete value and returns its raw encoding. `buf` is unchanged on error.
///
/// # Errors
/// [`MsgpackError::Truncated`] if `buf` ends inside the value, otherwise as [`value_len`].
pub fn skip_value<'a>(buf: &mut &'a [u8], max_depth: usize) -> Result<&'a [u8], MsgpackError> {
    let len = value_len(buf, max_depth)?.ok_or(MsgpackError::Truncated)?;
    take(buf, len)
}

// ---------------------------------------------------------------------------------------------
// Writers (infallible: they append to a Vec)
// ---------------------------------------------------------------------------------------------

/// Lengths above `u32::MAX` cannot be encoded; writers clamp them (and write only that many
/// bytes) so the output stays well-formed. Requests are capped far below this.
#[inline]
fn clamp_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Appends `nil`.
pub fn write_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

/// Appends a boolean.
pub fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0xc3 } else { 0xc2 });
}

/// Appends an unsigned integer in its shortest encoding.
pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    if let Ok(b) = u8::try_from(v) {
        if b < 0x80 {
            out.push(b);
        } else {
            out.extend_from_slice(&[0xcc, b]);
        }
    } else if let Ok(v) = u16::try_from(v) {
        out.push(0xcd);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(0xce);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a str header for `len` bytes (shortest form).
pub fn write_str_header(out: &mut Vec<u8>, len: u32) {
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, len]);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Appends a bin header for `len` bytes (shortest form).
pub fn write_bin_header(out: &mut Vec<u8>, len: u32) {
    if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[0xc4, len]);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0xc5);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Appends a string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_str_bytes(out, s.as_bytes());
}

/// Appends raw bytes as a msgpack str (the caller vouches for, or does not care about, UTF-8).
pub fn write_str_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let len = clamp_len(s.len());
    write_str_header(out, len);
    out.extend_from_slice(s.get(..len as usize).unwrap_or(s));
}

/// Appends a bin.
pub fn write_bin(out: &mut Vec<u8>, data: &[u8]) {
    let len = clamp_len(data.len());
    write_bin_header(out, len);
    out.extend_from_slice(data.get(..len as usize).unwrap_or(data));
}

/// Appends an array header for `n` elements.
pub fn write_array_len(out: &mut Vec<u8>, n: u32) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xdc);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Appends a map header for `n` key/value pairs.
pub fn write_map_len(out: &mut Vec<u8>, n: u32) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xde);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

/// Transcodes the one msgpack value at the start of `value` to JSON appended to `out`, and
/// returns the number of bytes of `value` it consumed. No tree is built; nesting is limited to
/// [`DEFAULT_MAX_DEPTH`], and the output is linear in the input size.
///
/// | msgpack | JSON |
/// | --- | --- |
/// | nil, bool | `null`, `true`/`false` |
/// | int | number (exact, any width) |
/// | float | shortest round-trip number; NaN and ±inf become `null` |
/// | str | string; invalid UTF-8 replaced by U+FFFD |
/// | bin | string of the bytes read as UTF-8 (lossy) |
/// | array | array |
/// | map | object; a non-string key becomes the string of its JSON text (`1` → `"1"`) |
/// | ext 0 with 8 bytes (EventTime) | RFC 3339 string, 9 fractional digits, `Z` |
/// | other ext | string of the data in lowercase hex |
///
/// One exception keeps the output linear: inside the JSON text of a non-string key, a key that
/// is itself an array or map is written as the hex string of its msgpack encoding. (Quoting
/// keys within keys would double the escaping at every level: a few hundred input bytes could
/// expand to gigabytes.)
///
/// # Errors
/// Any [`MsgpackError`] from malformed, truncated or too deeply nested input. On error `out`
/// is restored to its length on entry.
pub fn write_json(value: &[u8], out: &mut Vec<u8>) -> Result<usize, MsgpackError> {
    let start = out.len();
    let mut cur = value;
    let json = Json {
        max_depth: DEFAULT_MAX_DEPTH,
        in_key: false,
    };
    match json.value(&mut cur, out, DEFAULT_MAX_DEPTH) {
        Ok(()) => Ok(value.len() - cur.len()),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Transcoding context.
#[derive(Debug, Clone, Copy)]
struct Json {
    max_depth: usize,
    /// Rendering the JSON text of a non-string key.
    in_key: bool,
}

impl Json {
    /// Recursion is bounded by `depth_left` (at most [`DEFAULT_MAX_DEPTH`] frames of a few
    /// words).
    fn value(
        self,
        cur: &mut &[u8],
        out: &mut Vec<u8>,
        depth_left: usize,
    ) -> Result<(), MsgpackError> {
        let too_deep = MsgpackError::TooDeep {
            max_depth: self.max_depth,
        };
        match read_token(cur)? {
            Token::Nil => out.extend_from_slice(b"null"),
            Token::Bool(true) => out.extend_from_slice(b"true"),
            Token::Bool(false) => out.extend_from_slice(b"false"),
            Token::Uint(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            Token::Int(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            Token::F32(v) if v.is_finite() => {
                out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
            }
            Token::F64(v) if v.is_finite() => {
                out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
            }
            Token::F32(_) | Token::F64(_) => out.extend_from_slice(b"null"),
            Token::Str(s) | Token::Bin(s) => write_json_str_lossy(s, out),
            Token::Ext { kind: 0, data } if data.len() == 8 => {
                match EventTime::from_ext_data(data) {
                    Some(time) => {
                        out.push(b'"');
                        time.write_rfc3339(out);
                        out.push(b'"');
                    }
                    None => write_hex_str(data, out),
                }
            }
            Token::Ext { data, .. } => write_hex_str(data, out),
            Token::Array(n) => {
                let depth_left = depth_left.checked_sub(1).ok_or(too_deep)?;
                out.push(b'[');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.value(cur, out, depth_left)?;
                }
                out.push(b']');
            }
            Token::Map(n) => {
                let depth_left = depth_left.checked_sub(1).ok_or(too_deep)?;
                out.push(b'{');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.key(cur, out, depth_left)?;
                    out.push(b':');
                    self.value(cur, out, depth_left)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// A string key is written as-is; any other key as the JSON string of its JSON text (see
    /// [`write_json`] for container keys within keys).
    fn key(
        self,
        cur: &mut &[u8],
        out: &mut Vec<u8>,
        depth_left: usize,
    ) -> Result<(), MsgpackError> {
        let mut probe = *cur;
        match read_token(&mut probe)? {
            Token::Str(s) => {
                *cur = probe;
                write_json_str_lossy(s, out);
            }
            Token::Array(_) | Token::Map(_) if self.in_key => {
                let raw = skip_value(cur, depth_left).map_err(|e| match e {
                    MsgpackError::TooDeep { .. } => MsgpackError::TooDeep {
                        max_depth: self.max_depth,
                    },
                    other => other,
                })?;
                write_hex_str(raw, out);
            }
            _ => {
                // Rare: render the key, then quote what was rendered (one small allocation).
                let start = out.len();
                Json {
                    in_key: true,
                    ..self
                }
                .value(cur, out, depth_left)?;
                let text = out.split_off(start);
                write_json_str_lossy(&text, out);
            }
        }
        Ok(())
    }
}

fn write_json_str_lossy(bytes: &[u8], out: &mut Vec<u8>) {
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    write_json_str(&text, out);
}

/// Escape class per byte: 0 = copy, `u` = `\u00XX`, anything else = the char after `\`.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string literal: quotes, backslashes and control characters escaped.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(bytes.get(run..i).unwrap_or_default());
        run = i + 1;
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0x0f)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
    }
    out.extend_from_slice(bytes.get(run..).unwrap_or_default());
    out.push(b'"');
}

fn write_hex_str(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len() * 2 + 2);
    out.push(b'"');
    for &b in data {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec(v).unwrap()
    }

    fn rmpv_enc(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn json(v: &[u8]) -> String {
        let mut out = Vec::new();
        let n = write_json(v, &mut out).unwrap();
        assert_eq!(n, v.len());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn value_len_of_every_marker_family() {
        use rmpv::Value as V;
        let values = vec![
            V::Nil,
            V::Boolean(true),
            V::from(5),
            V::from(-5),
            V::from(200u8),
            V::from(-200i16),
            V::from(70_000u32),
            V::from(-70_000i32),
            V::from(u64::MAX),
            V::from(i64::MIN),
            V::F32(1.5),
            V::F64(2.5),
            V::from("x".repeat(31)),
            V::from("x".repeat(200)),
            V::from("x".repeat(70_000)),
            V::Binary(vec![1; 3]),
            V::Binary(vec![1; 300]),
            V::Binary(vec![1; 70_000]),
            V::Ext(0, vec![0; 1]),
            V::Ext(0, vec![0; 2]),
            V::Ext(0, vec![0; 4]),
            V::Ext(0, vec![0; 8]),
            V::Ext(0, vec![0; 16]),
            V::Ext(5, vec![0; 3]),
            V::Ext(5, vec![0; 300]),
            V::Ext(5, vec![0; 70_000]),
            V::Array(vec![V::from(1); 20]),
            V::Array(vec![V::from(1); 70_000]),
            V::Map(vec![(V::from("k"), V::Array(vec![]))]),
            V::Map((0..20).map(|i| (V::from(i), V::Nil)).collect()),
            V::Map((0..70_000).map(|i| (V::from(i), V::Nil)).collect()),
        ];
        for v in values {
            let bytes = rmpv_enc(&v);
            assert_eq!(value_len(&bytes, 8), Ok(Some(bytes.len())), "{v:?}");
            let mut trailing = bytes.clone();
            trailing.extend_from_slice(&[0xc0, 0xc0]);
            assert_eq!(value_len(&trailing, 8), Ok(Some(bytes.len())));
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                if cut >= bytes.len() {
                    continue;
                }
                let scan = scan_value(&bytes[..cut], 8).unwrap();
                match scan {
                    Scan::Incomplete { min_len } => {
                        assert!(min_len > cut && min_len <= bytes.len(), "{v:?} cut {cut}")
                    }
                    Scan::Complete(_) => panic!("complete at cut {cut} for {v:?}"),
                }
            }
            // Readers agree with the scanner on where the value ends.
            let mut cur = &bytes[..];
            let raw = skip_value(&mut cur, 8).unwrap();
            assert_eq!(raw.len(), bytes.len());
        }
    }

    #[test]
    fn declared_lengths_give_early_lower_bounds() {
        // bin32 declaring 1 GiB: known immediately, nothing allocated.
        let buf = [0xc6, 0x40, 0, 0, 0];
        assert_eq!(
            scan_value(&buf, 4),
            Ok(Scan::Incomplete {
                min_len: 5 + (1 << 30)
            })
        );
        // array32 of 2^32-1 elements: one byte per element at least.
        let buf = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            scan_value(&buf, 4),
            Ok(Scan::Incomplete {
                min_len: 5 + 0xffff_ffff
            })
        );
        // Nested: [ "abc"(declared str8 of 100), <3 more> ]
        let buf = [0x94, 0xd9, 100];
        assert_eq!(
            scan_value(&buf, 4),
            Ok(Scan::Incomplete {
                min_len: 1 + 2 + 100 + 3
            })
        );
    }

    #[test]
    fn depth_limit_is_enforced_without_recursion() {
        let mut deep = vec![0x91; 100_000];
        deep.push(0xc0);
        assert_eq!(
            value_len(&deep, 64),
            Err(MsgpackError::TooDeep { max_depth: 64 })
        );
        assert_eq!(value_len(&deep, 200_000), Ok(Some(deep.len())));
        // Exactly at the limit is fine; one more is not.
        assert_eq!(value_len(&[0x91, 0x91, 0xc0], 2), Ok(Some(3)));
        assert_eq!(
            value_len(&[0x91, 0x91, 0xc0], 1),
            Err(MsgpackError::TooDeep { max_depth: 1 })
        );
        assert_eq!(
            value_len(&[0x90], 0),
            Err(MsgpackError::TooDeep { max_depth: 0 })
        );
        assert_eq!(value_len(&[0x01], 0), Ok(Some(1)));
        let mut out = Vec::new();
        assert_eq!(
            write_json(&deep, &mut out),
            Err(MsgpackError::TooDeep {
                max_depth: DEFAULT_MAX_DEPTH
            })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn invalid_marker() {
        assert_eq!(
            value_len(&[0x92, 0x01, 0xc1], 4),
            Err(MsgpackError::InvalidMarker(0xc1))
        );
        assert_eq!(peek_kind(&[0xc1]), Err(MsgpackError::InvalidMarker(0xc1)));
        assert_eq!(value_len(&[], 4), Ok(None));
    }

    #[test]
    fn readers() {
        let bytes = enc(&("tag", 7u8, -3i8, true, serde_bytes_like()));
        let mut cur = &bytes[..];
        assert_eq!(read_array_len(&mut cur), Ok(5));
        assert_eq!(read_str(&mut cur), Ok(&b"tag"[..]));
        assert_eq!(read_u64(&mut cur), Ok(7));
        let before = cur;
        assert!(matches!(
            read_u64(&mut cur),
            Err(MsgpackError::TypeMismatch { .. })
        ));
        assert_eq!(cur, before, "unchanged on error");
        assert_eq!(read_token(&mut cur), Ok(Token::Int(-3)));
        assert_eq!(read_bool(&mut cur), Ok(true));
        assert_eq!(read_array_len(&mut cur), Ok(2));
        assert!(cur.len() == 2);
        assert_eq!(read_map_len(&mut &[0x80][..]), Ok(0));
        assert_eq!(read_str_or_bin(&mut &[0xc4, 1, 9][..]), Ok(&[9][..]));
        assert_eq!(read_u64(&mut &[0xd3, 0, 0, 0, 0, 0, 0, 0, 5][..]), Ok(5));
    }

    fn serde_bytes_like() -> (u8, u8) {
        (1, 2)
    }

    #[test]
    fn writers_round_trip_through_rmpv() {
        use rmpv::Value as V;
        for n in [
            0u64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_uint(&mut out, n);
            assert_eq!(rmpv::decode::read_value(&mut &out[..]).unwrap(), V::from(n));
        }
        for len in [0usize, 31, 32, 255, 256, 65_535, 65_536] {
            let s = "a".repeat(len);
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(
                rmpv::decode::read_value(&mut &out[..]).unwrap(),
                V::from(s.as_str())
            );
            let mut out = Vec::new();
            write_bin(&mut out, s.as_bytes());
            assert_eq!(
                rmpv::decode::read_value(&mut &out[..]).unwrap(),
                V::Binary(s.into())
            );
        }
        for n in [0u32, 15, 16, 65_535, 65_536] {
            let mut out = Vec::new();
            write_array_len(&mut out, n);
            let mut cur = &out[..];
            assert_eq!(read_array_len(&mut cur), Ok(n));
            assert!(cur.is_empty());
            let mut out = Vec::new();
            write_map_len(&mut out, n);
            let mut cur = &out[..];
            assert_eq!(read_map_len(&mut cur), Ok(n));
        }
        let mut out = Vec::new();
        write_nil(&mut out);
        write_bool(&mut out, false);
        assert_eq!(out, [0xc0, 0xc2]);
    }

    #[test]
    fn json_scalars_and_escaping() {
        assert_eq!(json(&enc(&"plain")), r#""plain""#);
        assert_eq!(
            json(&enc(&"q\"b\\n\nr\rt\tb\u{8}f\u{c}z\u{0}\u{1f}\u{7f}é☃")),
            "\"q\\\"b\\\\n\\nr\\rt\\tb\\bf\\fz\\u0000\\u001f\u{7f}é☃\""
        );
        assert_eq!(json(&[0xc0]), "null");
        assert_eq!(json(&[0xc3]), "true");
        assert_eq!(json(&[0xc2]), "false");
        assert_eq!(json(&enc(&u64::MAX)), "18446744073709551615");
        assert_eq!(json(&enc(&i64::MIN)), "-9223372036854775808");
        assert_eq!(json(&enc(&-1i8)), "-1");
        assert_eq!(json(&enc(&1.5f64)), "1.5");
        assert_eq!(json(&enc(&0.1f32)), "0.1");
        assert_eq!(json(&enc(&1e300f64)), "1e300");
        assert_eq!(json(&enc(&f64::NAN)), "null");
        assert_eq!(json(&enc(&f64::INFINITY)), "null");
        assert_eq!(json(&enc(&f32::NEG_INFINITY)), "null");
        // Invalid UTF-8 in a str is replaced, not rejected.
        assert_eq!(json(&[0xa3, b'a', 0xff, b'b']), "\"a\u{fffd}b\"");
        // bin is read as (lossy) UTF-8 text.
        assert_eq!(json(&[0xc4, 3, b'h', b'i', 0xfe]), "\"hi\u{fffd}\"");
    }

    #[test]
    fn json_containers_and_keys() {
        use rmpv::Value as V;
        let v = V::Map(vec![
            (V::from("log"), V::from("hello")),
            (V::from(1), V::from(2)),
            (V::from(-1), V::Nil),
            (V::Boolean(true), V::Array(vec![V::from(1), V::from("x")])),
            (V::Nil, V::Map(vec![])),
            (V::Array(vec![V::from("a")]), V::Array(vec![])),
        ]);
        let text = json(&rmpv_enc(&v));
        assert_eq!(
            text,
            r#"{"log":"hello","1":2,"-1":null,"true":[1,"x"],"null":{},"[\"a\"]":[]}"#
        );
        // Whatever we emit is valid JSON.
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["1"], 2);
    }

    #[test]
    fn json_keys_within_keys_stay_linear() {
        // {{{{...{1: 1}: 1}...}: 1} nested 60 deep: escaping doubled per level would be 2^60.
        let mut bytes = vec![0x81; 60];
        bytes.extend_from_slice(&[0x01; 61]);
        let mut out = Vec::new();
        assert_eq!(write_json(&bytes, &mut out), Ok(bytes.len()));
        assert!(out.len() < 1000, "{}", out.len());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(r#"{"{\"81"#), "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
        // Two levels: a map key holding a map with an int key.
        let v = rmpv::Value::Map(vec![(
            rmpv::Value::Map(vec![(rmpv::Value::from(1), rmpv::Value::from("a"))]),
            rmpv::Value::Nil,
        )]);
        assert_eq!(json(&rmpv_enc(&v)), r#"{"{\"1\":\"a\"}":null}"#);
        // A container key inside a key becomes hex of its encoding.
        let v = rmpv::Value::Map(vec![(
            rmpv::Value::Map(vec![(rmpv::Value::Array(vec![]), rmpv::Value::from(2))]),
            rmpv::Value::Nil,
        )]);
        assert_eq!(json(&rmpv_enc(&v)), r#"{"{\"90\":2}":null}"#);
    }

    #[test]
    fn json_ext() {
        use rmpv::Value as V;
        // fixext8 EventTime from the protocol research example.
        let time = [0xd7, 0x00, 0x5f, 0xee, 0x66, 0x00, 0x07, 0x5b, 0xcd, 0x15];
        assert_eq!(json(&time), r#""2021-01-01T00:00:00.123456789Z""#);
        // ext8 EventTime.
        let time8 = [
            0xc7, 8, 0x00, 0x5f, 0xee, 0x66, 0x00, 0x07, 0x5b, 0xcd, 0x15,
        ];
        assert_eq!(json(&time8), r#""2021-01-01T00:00:00.123456789Z""#);
        assert_eq!(
            json(&rmpv_enc(&V::Ext(7, vec![0xde, 0xad, 0x01]))),
            r#""dead01""#
        );
        assert_eq!(json(&rmpv_enc(&V::Ext(0, vec![0xab; 4]))), r#""abababab""#);
    }

    #[test]
    fn json_consumes_one_value_and_restores_on_error() {
        let mut out = b"prefix".to_vec();
        assert_eq!(write_json(&[0x01, 0x02], &mut out), Ok(1));
        assert_eq!(out, b"prefix1");
        assert_eq!(
            write_json(&[0x92, 0x01], &mut out),
            Err(MsgpackError::Truncated)
        );
        assert_eq!(out, b"prefix1");
        assert_eq!(
            write_json(&[0x91, 0xc1], &mut out),
            Err(MsgpackError::InvalidMarker(0xc1))
        );
        assert_eq!(out, b"prefix1");
    }

    #[test]
    fn json_matches_serde_json_for_plain_records() {
        let record = serde_json::json!({
            "log": "line with \"quotes\" and \t tabs \u{1}",
            "stream": "stdout",
            "seq": 42,
            "neg": -7,
            "f": 0.25,
            "kubernetes": {"pod": "p", "ns": "n", "labels": {"a": "b"}, "list": [1, 2, null, true]},
        });
        let bytes = rmp_serde::to_vec_named(&record).unwrap();
        let back: serde_json::Value = serde_json::from_str(&json(&bytes)).unwrap();
        assert_eq!(back, record);
    }

    proptest::proptest! {
        #[test]
        fn scanners_never_panic_and_agree(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let len = value_len(&bytes, 16);
            let mut out = Vec::new();
            let json = write_json(&bytes, &mut out);
            if let Ok(Some(n)) = len {
                // A complete value within depth 16 always transcodes, consuming the same bytes.
                proptest::prop_assert_eq!(json, Ok(n));
                proptest::prop_assert!(std::str::from_utf8(&out).is_ok());
            }
            let mut cur = &bytes[..];
            let _ = read_token(&mut cur);
        }

        /// A value fed in pieces to one `Scanner` gives what one scan of the whole gives.
        #[test]
        fn resumed_scans_agree_with_one_scan(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::u8::ANY,
                    proptest::strategy::Just(0x92u8),
                    proptest::strategy::Just(0x81u8),
                    proptest::strategy::Just(0xa2u8),
                    proptest::strategy::Just(0xc4u8),
                ],
                0..200,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..20),
        ) {
            let whole = scan_value(&bytes, 8);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut scanner = Scanner::default();
            let mut last = None;
            for cut in cuts {
                let got = scanner.scan(&bytes[..cut], 8);
                let done = !matches!(got, Ok(Scan::Incomplete { .. }));
                last = Some(got);
                if done {
                    break;
                }
            }
            proptest::prop_assert_eq!(last, Some(whole));
            // Reset after a complete value or an error: the same scanner starts afresh.
            if !matches!(whole, Ok(Scan::Incomplete { .. })) {
                proptest::prop_assert_eq!(scanner.scan(&bytes, 8), whole);
            }
        }
    }
}
