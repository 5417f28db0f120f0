//! Iteration over canonical packed entries, as stored in [`EventBatch::entries`] and in chunk
//! files.
//!
//! The decoder normalises every accepted event to one shape, so everything downstream (buffer,
//! outputs) reads a single format:
//!
//! ```text
//! entries := entry*
//! entry   := 92 | d7 00 ss ss ss ss nn nn nn nn | <msgpack map>
//!            [ EventTime (fixext8),               record ]
//! ```
//!
//! [`Entries`] borrows the buffer and yields `(time, raw record bytes)` without allocating. It is
//! tolerant of the other time forms the wire allows (integer seconds, `ext8`, float seconds,
//! v1.5 `[EventTime, metadata]`), so it can also read a PackedForward payload straight off the
//! wire, but it reports anything else as an error and then stops: after a bad entry the next
//! boundary is not trustworthy.
//!
//! [`EventBatch::entries`]: super::EventBatch::entries

use super::error::DecodeError;
use crate::event_time::EventTime;
use crate::msgpack::{self, Token, DEFAULT_MAX_DEPTH};

/// Nesting allowed for a whole entry: the entry array itself plus a record of
/// [`DEFAULT_MAX_DEPTH`].
pub(crate) const ENTRY_MAX_DEPTH: usize = DEFAULT_MAX_DEPTH + 1;

/// One event: its time and its record, a raw msgpack map borrowed from the entries buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    /// When the event happened.
    pub time: EventTime,
    /// The record: one complete msgpack map, as encoded.
    pub record: &'a [u8],
}

/// Iterator over the entries of a packed buffer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// Iterates over `buf`, a concatenation of entries.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    /// The bytes not yet iterated over.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    fn next_entry(&mut self) -> Result<Entry<'a>, DecodeError> {
        if let Some(entry) = canonical(self.rest)? {
            self.rest = self.rest.get(entry.len..).unwrap_or_default();
            return Ok(Entry {
                time: entry.time,
                record: entry.record,
            });
        }
        let mut cur = self.rest;
        let n = msgpack::read_array_len(&mut cur)
            .map_err(|_| DecodeError::Malformed("entry is not an array"))?;
        if n < 2 {
            return Err(DecodeError::Malformed("entry has fewer than 2 elements"));
        }
        let time = match read_time(&mut cur)? {
            RawTime::At(time) => time,
            RawTime::Unset | RawTime::Invalid => {
                return Err(DecodeError::Malformed("entry time is not a valid time"))
            }
        };
        let record = msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH)?;
        if !record.first().is_some_and(|&m| msgpack::is_map_marker(m)) {
            return Err(DecodeError::Malformed("entry record is not a map"));
        }
        for _ in 2..n {
            msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH)?;
        }
        self.rest = cur;
        Ok(Entry { time, record })
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.next_entry();
        if item.is_err() {
            // Fuse: the next boundary cannot be trusted after a bad entry.
            self.rest = &[];
        }
        Some(item)
    }
}

/// A canonical entry found at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Canonical<'a> {
    pub(crate) time: EventTime,
    pub(crate) record: &'a [u8],
    /// Length of the whole entry.
    pub(crate) len: usize,
}

/// The fast path: a canonical entry (`92 d7 00` + 8 time bytes + a map). `Ok(None)` if the
/// entry is not in canonical form (including a zero-seconds time, which the decoder must
/// replace); an error if the record is not valid msgpack.
#[inline]
pub(crate) fn canonical(buf: &[u8]) -> Result<Option<Canonical<'_>>, DecodeError> {
    const HEAD: usize = 1 + EventTime::ENCODED_LEN;
    let &[0x92, 0xd7, 0x00, s0, s1, s2, s3, n0, n1, n2, n3, marker, ..] = buf else {
        return Ok(None);
    };
    let secs = u32::from_be_bytes([s0, s1, s2, s3]);
    if secs == 0 || !msgpack::is_map_marker(marker) {
        return Ok(None);
    }
    let record_buf = buf.get(HEAD..).unwrap_or_default();
    let len = msgpack::value_len(record_buf, DEFAULT_MAX_DEPTH)?
        .ok_or(msgpack::MsgpackError::Truncated)?;
    let record = record_buf.get(..len).unwrap_or_default();
    let time = EventTime::new(secs, u32::from_be_bytes([n0, n1, n2, n3]));
    Ok(Some(Canonical {
        time,
        record,
        len: HEAD + len,
    }))
}

/// A time slot as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawTime {
    /// A time (which may be 0: the decoder treats 0 as "now", as Fluentd does).
    At(EventTime),
    /// `nil`: the decoder uses "now".
    Unset,
    /// Not a time (string, map, negative or out-of-range number, other ext...).
    Invalid,
}

/// Reads one time slot, consuming exactly one value: integer seconds (any width, non-negative,
/// at most `u32::MAX`), EventTime (`fixext8` or `ext8`), float seconds (tolerated), `nil`, or the
/// v1.5 form `[time, metadata...]` (metadata skipped).
///
/// # Errors
/// Only when the value is not valid msgpack.
pub(crate) fn read_time(cur: &mut &[u8]) -> Result<RawTime, msgpack::MsgpackError> {
    let mut probe = *cur;
    match msgpack::read_token(&mut probe)? {
        Token::Array(n) => {
            *cur = probe;
            if n == 0 {
                return Ok(RawTime::Invalid);
            }
            let first = msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
            let mut first_cur = first;
            let time = match msgpack::read_token(&mut first_cur)? {
                Token::Array(_) | Token::Map(_) => RawTime::Invalid,
                scalar => scalar_time(scalar),
            };
            for _ in 1..n {
                msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
            }
            Ok(time)
        }
        Token::Map(_) => {
            msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
            Ok(RawTime::Invalid)
        }
        scalar => {
            *cur = probe;
            Ok(scalar_time(scalar))
        }
    }
}

fn scalar_time(token: Token<'_>) -> RawTime {
    match token {
        Token::Nil => RawTime::Unset,
        Token::Uint(_) | Token::Int(_) => match token.as_u64().map(u32::try_from) {
            Some(Ok(secs)) => RawTime::At(EventTime::new(secs, 0)),
            _ => RawTime::Invalid,
        },
        Token::Ext { kind: 0, data } => match EventTime::from_ext_data(data) {
            Some(time) => RawTime::At(time),
            None => RawTime::Invalid,
        },
        Token::F32(f) => float_time(f64::from(f)),
        Token::F64(f) => float_time(f),
        _ => RawTime::Invalid,
    }
}

/// Float seconds: Fluentd rejects them, we accept finite values in the `u32` range.
fn float_time(f: f64) -> RawTime {
    if !(0.0..4_294_967_296.0).contains(&f) {
        return RawTime::Invalid; // also NaN
    }
    let secs = f.trunc();
    // Both casts are in range: secs < 2^32, and the fraction rounds to at most 10^9.
    let mut nanos = ((f - secs) * 1e9).round() as u32;
    let mut secs = secs as u32;
    if nanos >= 1_000_000_000 {
        match secs.checked_add(1) {
            Some(s) => {
                secs = s;
                nanos = 0;
            }
            None => nanos = 999_999_999,
        }
    }
    RawTime::At(EventTime::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::encode::encode_entry;

    fn record(s: &str) -> Vec<u8> {
        rmp_serde::to_vec_named(&serde_json::json!({ "log": s })).unwrap()
    }

    #[test]
    fn iterates_canonical_entries() {
        let mut buf = Vec::new();
        let r1 = record("a");
        let r2 = record("b");
        encode_entry(EventTime::new(1, 2), &r1, &mut buf);
        encode_entry(EventTime::new(3, 4), &r2, &mut buf);
        let got: Vec<_> = Entries::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                Entry {
                    time: EventTime::new(1, 2),
                    record: &r1
                },
                Entry {
                    time: EventTime::new(3, 4),
                    record: &r2
                }
            ]
        );
        assert_eq!(Entries::new(&[]).count(), 0);
    }

    #[test]
    fn tolerates_wire_time_forms() {
        let r = record("x");
        let forms: Vec<(Vec<u8>, EventTime)> = vec![
            (
                vec![0xce, 0x5f, 0xee, 0x66, 0x00],
                EventTime::new(0x5fee_6600, 0),
            ),
            (vec![0x05], EventTime::new(5, 0)),
            (vec![0xd3, 0, 0, 0, 0, 0, 0, 0, 9], EventTime::new(9, 0)),
            (
                vec![0xc7, 8, 0, 0x5f, 0xee, 0x66, 0x00, 0x07, 0x5b, 0xcd, 0x15],
                EventTime::new(0x5fee_6600, 123_456_789),
            ),
            (
                // v1.5: [EventTime, {"k": "v"}]
                vec![
                    0x92, 0xd7, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0x81, 0xa1, b'k', 0xa1, b'v',
                ],
                EventTime::new(7, 1),
            ),
            (
                rmp_serde::to_vec(&1.5f64).unwrap(),
                EventTime::new(1, 500_000_000),
            ),
            // Canonical form with secs 0 is read as-is (only the decoder applies "0 = now").
            (vec![0xd7, 0, 0, 0, 0, 0, 0, 0, 0, 1], EventTime::new(0, 1)),
        ];
        for (time, expected) in forms {
            let mut buf = vec![0x92];
            buf.extend_from_slice(&time);
            buf.extend_from_slice(&r);
            let got: Vec<_> = Entries::new(&buf).collect::<Result<_, _>>().unwrap();
            assert_eq!(
                got,
                vec![Entry {
                    time: expected,
                    record: &r
                }],
                "{time:x?}"
            );
        }
    }

    #[test]
    fn errors_fuse() {
        // Record is not a map, then a valid entry that must not be reached.
        let mut buf = vec![0x92, 0x01, 0x02];
        encode_entry(EventTime::new(1, 0), &record("a"), &mut buf);
        let mut it = Entries::new(&buf);
        assert!(matches!(it.next(), Some(Err(DecodeError::Malformed(_)))));
        assert!(it.next().is_none());
        // Truncated record.
        let mut buf = Vec::new();
        encode_entry(EventTime::new(1, 0), &record("abc"), &mut buf);
        buf.pop();
        assert!(matches!(Entries::new(&buf).next(), Some(Err(_))));
        // Nil time.
        assert!(matches!(
            Entries::new(&[0x92, 0xc0, 0x80]).next(),
            Some(Err(_))
        ));
    }

    #[test]
    fn time_forms() {
        let cases: Vec<(Vec<u8>, RawTime)> = vec![
            (vec![0xc0], RawTime::Unset),
            (vec![0x00], RawTime::At(EventTime::new(0, 0))),
            (vec![0xff], RawTime::Invalid),
            (vec![0xcf, 0, 0, 0, 1, 0, 0, 0, 0], RawTime::Invalid),
            (vec![0xa1, b'1'], RawTime::Invalid),
            (vec![0x90], RawTime::Invalid),
            (vec![0x81, 0x01, 0x02], RawTime::Invalid),
            (vec![0x91, 0x91, 0x01], RawTime::Invalid),
            (vec![0xd6, 0, 0, 0, 0, 0], RawTime::Invalid),
            (vec![0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0], RawTime::Invalid),
            (rmp_serde::to_vec(&-1.0f64).unwrap(), RawTime::Invalid),
            (rmp_serde::to_vec(&f64::NAN).unwrap(), RawTime::Invalid),
            (rmp_serde::to_vec(&5e9f64).unwrap(), RawTime::Invalid),
            (
                rmp_serde::to_vec(&0.9999999999f64).unwrap(),
                RawTime::At(EventTime::new(1, 0)),
            ),
            (
                rmp_serde::to_vec(&2.25f32).unwrap(),
                RawTime::At(EventTime::new(2, 250_000_000)),
            ),
        ];
        for (bytes, expected) in cases {
            let mut cur = &bytes[..];
            assert_eq!(read_time(&mut cur), Ok(expected), "{bytes:x?}");
            assert!(cur.is_empty(), "consumed exactly one value: {bytes:x?}");
        }
    }
}
