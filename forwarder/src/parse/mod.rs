//! Container log line formats, and joining the pieces of lines the runtime split.
//!
//! Runtimes split long lines (16 KiB pieces in both Docker and CRI), and a log pipeline that
//! ships the pieces as separate records breaks every JSON log and stack trace longer than that
//! (a top complaint against every log shipper; see research §3 item 8). So parsing is two
//! steps: [`cri::parse`] / [`docker::parse`] turn one physical line into a [`Line`] (time,
//! stream, partial flag, message), and a [`Joiner`] per file glues partial pieces until the
//! last one, with a size cap and a timeout so a runtime that never writes the last piece
//! cannot make the forwarder hold memory forever. Both limits are counted when they fire.
//!
//! Nothing here panics on input: a line that does not parse is a [`ParseError`], which the
//! tailer counts (`logferry_dropped_records_total{reason="invalid_line"}`) and skips.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use logferry_common::forward::EventTime;

pub mod cri;
pub mod docker;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `stdout`.
    Stdout,
    /// `stderr`.
    Stderr,
}

impl Stream {
    /// Parses `stdout` / `stderr`.
    pub fn from_bytes(b: &[u8]) -> Option<Stream> {
        match b {
            b"stdout" => Some(Stream::Stdout),
            b"stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One parsed physical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The runtime's timestamp.
    pub time: EventTime,
    /// stdout or stderr.
    pub stream: Stream,
    /// Whether the message continues in the next line of the same stream.
    pub partial: bool,
    /// The message (without the line break that ended it).
    pub message: Cow<'a, [u8]>,
}

/// Why a line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A required field is missing.
    #[error("missing {0}")]
    MissingField(&'static str),
    /// The timestamp is not RFC 3339.
    #[error("timestamp is not RFC 3339")]
    BadTime,
    /// The stream is not stdout or stderr.
    #[error("stream is not stdout or stderr")]
    BadStream,
    /// The CRI tag is not P or F.
    #[error("CRI tag is not P or F")]
    BadTag,
    /// The docker line is not the JSON object expected.
    #[error("invalid JSON: {0}")]
    Json(&'static str),
}

/// The format of one file, fixed once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// CRI.
    Cri,
    /// Docker json-file.
    Docker,
}

impl LineFormat {
    /// Guesses the format from a line: a JSON object is docker, anything else CRI.
    pub fn detect(line: &[u8]) -> LineFormat {
        match line.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => LineFormat::Docker,
            _ => LineFormat::Cri,
        }
    }

    /// Parses one line.
    pub fn parse(self, line: &[u8]) -> Result<Line<'_>, ParseError> {
        match self {
            LineFormat::Cri => cri::parse(line),
            LineFormat::Docker => docker::parse(line),
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into an [`EventTime`] (fraction digits
/// past nanoseconds are dropped). `None` for anything else, or a time before 1970.
pub fn parse_rfc3339(s: &[u8]) -> Option<EventTime> {
    fn num(s: &[u8]) -> Option<u32> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
    }
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = num(&s[0..4])?;
    let month = num(&s[5..7])?;
    let day = num(&s[8..10])?;
    let hour = num(&s[11..13])?;
    let min = num(&s[14..16])?;
    let sec = num(&s[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let mut scale = 100_000_000u32;
        for &d in &frac[..digits.min(9)] {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
        }
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = num(&[*h1, *h2])?;
            let m = num(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = i64::from(h * 3600 + m * 60);
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec) - offset_secs;
    let secs = u32::try_from(secs).ok()?;
    Some(EventTime::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Why a message was emitted before its last piece arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcedFlush {
    /// The joined message reached `max_message_size`.
    Size,
    /// No further piece arrived within `partial_timeout`.
    Timeout,
}

impl ForcedFlush {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ForcedFlush::Size => "size",
            ForcedFlush::Timeout => "timeout",
        }
    }
}

/// A partial message being assembled.
#[derive(Debug)]
struct Pending {
    time: EventTime,
    buf: Vec<u8>,
    since: Instant,
    /// File offset of the first line of this message (where a restart must read from).
    start_offset: u64,
}

/// Joins the pieces of split lines of one file, per stream.
#[derive(Debug)]
pub struct Joiner {
    max_message: usize,
    timeout: Duration,
    pending: [Option<Pending>; 2],
}

/// What [`Joiner::push`] emits: a complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Time of the first piece.
    pub time: EventTime,
    /// Its stream.
    pub stream: Stream,
    /// The joined message.
    pub text: &'a [u8],
    /// Set when the message was cut before its last piece.
    pub forced: Option<ForcedFlush>,
}

impl Joiner {
    /// A joiner emitting messages of at most `max_message` bytes and giving up on a missing
    /// last piece after `timeout`.
    pub fn new(max_message: usize, timeout: Duration) -> Joiner {
        Joiner {
            max_message: max_message.max(1),
            timeout,
            pending: [None, None],
        }
    }

    /// Feeds one line that started at file offset `offset`; `emit` gets every completed
    /// message.
    pub fn push(&mut self, line: Line<'_>, offset: u64, mut emit: impl FnMut(Message<'_>)) {
        let slot = &mut self.pending[line.stream.index()];
        match slot {
            None if !line.partial && line.message.len() <= self.max_message => {
                // The common case: a whole line, no copy.
                emit(Message {
                    time: line.time,
                    stream: line.stream,
                    text: &line.message,
                    forced: None,
                });
                return;
            }
            None => {
                *slot = Some(Pending {
                    time: line.time,
                    buf: Vec::with_capacity(line.message.len().min(self.max_message)),
                    since: Instant::now(),
                    start_offset: offset,
                });
            }
            Some(_) => {}
        }
        let Some(p) = slot.as_mut() else { return };
        let mut piece: &[u8] = &line.message;
        loop {
            let room = self.max_message - p.buf.len();
            if piece.len() < room || (piece.len() == room && !line.partial) {
                p.buf.extend_from_slice(piece);
                break;
            }
            // The joined message reached the cap: send what fits, keep the rest.
            p.buf.extend_from_slice(&piece[..room]);
            piece = &piece[room..];
            emit(Message {
                time: p.time,
                stream: line.stream,
                text: &p.buf,
                forced: Some(ForcedFlush::Size),
            });
            p.buf.clear();
            p.start_offset = offset;
            p.time = line.time;
        }
        if !line.partial {
            if let Some(p) = slot.take() {
                emit(Message {
                    time: p.time,
                    stream: line.stream,
                    text: &p.buf,
                    forced: None,
                });
            }
        }
    }

    /// Emits every partial message older than the timeout (or all of them with `force`).
    pub fn flush_expired(&mut self, now: Instant, force: bool, mut emit: impl FnMut(Message<'_>)) {
        for (i, slot) in self.pending.iter_mut().enumerate() {
            let expired = slot
                .as_ref()
                .is_some_and(|p| force || now.duration_since(p.since) >= self.timeout);
            if expired {
                if let Some(p) = slot.take() {
                    emit(Message {
                        time: p.time,
                        stream: if i == 0 {
                            Stream::Stdout
                        } else {
                            Stream::Stderr
                        },
                        text: &p.buf,
                        forced: Some(ForcedFlush::Timeout),
                    });
                }
            }
        }
    }

    /// File offset of the oldest line still held in a partial message, if any: a restart must
    /// read from there to rebuild it.
    pub fn pending_offset(&self) -> Option<u64> {
        self.pending.iter().flatten().map(|p| p.start_offset).min()
    }

    /// When the oldest partial message times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .flatten()
            .map(|p| p.since + self.timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: Stream, partial: bool, msg: &str, secs: u32) -> Line<'static> {
        Line {
            time: EventTime::new(secs, 0),
            stream,
            partial,
            message: Cow::Owned(msg.as_bytes().to_vec()),
        }
    }

    fn collect(j: &mut Joiner, l: Line<'_>, off: u64) -> Vec<(String, Option<ForcedFlush>, u32)> {
        let mut out = Vec::new();
        j.push(l, off, |m| {
            out.push((
                String::from_utf8_lossy(m.text).into_owned(),
                m.forced,
                m.time.secs,
            ))
        });
        out
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339(b"2021-01-01T00:00:00.123456789Z"),
            Some(EventTime::new(1_609_459_200, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339(b"2021-01-01T00:00:00.1234567891234Z"),
            Some(EventTime::new(1_609_459_200, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339(b"2021-01-01T01:00:00.5+01:00"),
            Some(EventTime::new(1_609_459_200, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339(b"2024-02-29T12:34:56-00:30"),
            Some(EventTime::new(1_709_210_096 + 1800, 0))
        );
        assert_eq!(parse_rfc3339(b"1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339(b"2021-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339(b"2021-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339(b"2021-01-01T00:00:00.Z"), None);
        assert_eq!(parse_rfc3339(b"2021-01-01T00:00:00+1:00"), None);
    }

    #[test]
    fn joins_per_stream_and_tracks_the_restart_offset() {
        let mut j = Joiner::new(1024, Duration::from_secs(5));
        assert!(collect(&mut j, line(Stream::Stdout, true, "ab", 1), 0).is_empty());
        assert!(collect(&mut j, line(Stream::Stderr, true, "x", 2), 10).is_empty());
        assert_eq!(j.pending_offset(), Some(0));
        assert_eq!(
            collect(&mut j, line(Stream::Stdout, false, "cd", 3), 20),
            vec![("abcd".into(), None, 1)]
        );
        assert_eq!(j.pending_offset(), Some(10));
        assert_eq!(
            collect(&mut j, line(Stream::Stderr, false, "y", 4), 30),
            vec![("xy".into(), None, 2)]
        );
        assert_eq!(j.pending_offset(), None);
        assert_eq!(
            collect(&mut j, line(Stream::Stdout, false, "whole", 5), 40),
            vec![("whole".into(), None, 5)]
        );
    }

    #[test]
    fn size_cap_splits_and_is_reported() {
        let mut j = Joiner::new(4, Duration::from_secs(5));
        assert!(collect(&mut j, line(Stream::Stdout, true, "abc", 1), 0).is_empty());
        assert_eq!(
            collect(&mut j, line(Stream::Stdout, true, "defghij", 2), 10),
            vec![
                ("abcd".into(), Some(ForcedFlush::Size), 1),
                ("efgh".into(), Some(ForcedFlush::Size), 2)
            ]
        );
        assert_eq!(
            collect(&mut j, line(Stream::Stdout, false, "k", 3), 20),
            vec![("ijk".into(), None, 2)]
        );
        // A whole line over the cap is split as well.
        assert_eq!(
            collect(&mut j, line(Stream::Stdout, false, "123456", 4), 30),
            vec![
                ("1234".into(), Some(ForcedFlush::Size), 4),
                ("56".into(), None, 4)
            ]
        );
        // Exactly the cap: one message, not forced.
        assert_eq!(
            collect(&mut j, line(Stream::Stdout, false, "wxyz", 5), 40),
            vec![("wxyz".into(), None, 5)]
        );
    }

    #[test]
    fn timeout_flushes() {
        let mut j = Joiner::new(1024, Duration::from_millis(10));
        assert!(collect(&mut j, line(Stream::Stdout, true, "abc", 1), 0).is_empty());
        let mut out = Vec::new();
        j.flush_expired(Instant::now(), false, |m| out.push(m.text.to_vec()));
        assert!(out.is_empty());
        assert!(j.next_deadline().is_some());
        j.flush_expired(Instant::now() + Duration::from_millis(20), false, |m| {
            assert_eq!(m.forced, Some(ForcedFlush::Timeout));
            out.push(m.text.to_vec())
        });
        assert_eq!(out, vec![b"abc".to_vec()]);
        assert_eq!(j.pending_offset(), None);
    }
}
