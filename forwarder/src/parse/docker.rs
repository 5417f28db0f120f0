//! Docker's json-file format: one JSON object per line.
//!
//! ```text
//! {"log":"a full line\n","stream":"stdout","time":"2019-01-01T11:11:11.111111111Z"}
//! {"log":"the first 16 KiB of a long line","stream":"stdout","time":"..."}   <- no "\n": partial
//! ```
//!
//! A `log` value without its trailing `\n` is a piece of a line Docker split at 16 KiB; the
//! next piece of the same stream continues it. The object is read by a small scanner that
//! takes the string values it needs (unescaping only when there is a backslash) and skips
//! anything else, key order free; a full JSON parser would allocate a tree per line.

use std::borrow::Cow;

use memchr::memchr2;

use super::{parse_rfc3339, Line, ParseError, Stream};

/// Parses one docker json-file line (without its `\n`).
pub fn parse(line: &[u8]) -> Result<Line<'_>, ParseError> {
    let mut s = Scanner { buf: line, pos: 0 };
    s.ws();
    s.expect(b'{')?;
    let mut log: Option<Cow<'_, [u8]>> = None;
    let mut stream = None;
    let mut time = None;
    s.ws();
    if s.peek() == Some(b'}') {
        return Err(ParseError::MissingField("log"));
    }
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.expect(b':')?;
        s.ws();
        match &*key {
            b"log" => log = Some(s.string()?),
            b"stream" => {
                let v = s.string()?;
                stream = Some(Stream::from_bytes(&v).ok_or(ParseError::BadStream)?);
            }
            b"time" => {
                let v = s.string()?;
                time = Some(parse_rfc3339(&v).ok_or(ParseError::BadTime)?);
            }
            _ => s.skip_value(0)?,
        }
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b'}') => break,
            _ => return Err(ParseError::Json("expected ',' or '}'")),
        }
    }
    s.ws();
    if s.pos != line.len() {
        return Err(ParseError::Json("trailing bytes after the object"));
    }
    let log = log.ok_or(ParseError::MissingField("log"))?;
    let time = time.ok_or(ParseError::MissingField("time"))?;
    let (message, partial) = match log {
        Cow::Borrowed(b) => match b.strip_suffix(b"\n") {
            Some(m) => (Cow::Borrowed(m), false),
            None => (Cow::Borrowed(b), true),
        },
        Cow::Owned(mut v) => {
            let full = v.last() == Some(&b'\n');
            if full {
                v.pop();
            }
            (Cow::Owned(v), !full)
        }
    };
    Ok(Line {
        time,
        stream: stream.unwrap_or(Stream::Stdout),
        partial,
        message,
    })
}

/// Most nesting skipped inside unknown values.
const MAX_DEPTH: usize = 64;

struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[allow(clippy::should_implement_trait)]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), ParseError> {
        if self.next() == Some(b) {
            Ok(())
        } else {
            Err(ParseError::Json("unexpected character"))
        }
    }

    /// A JSON string, unescaped; borrowed when it has no escapes. Runs between escapes are
    /// found with `memchr2` and copied whole: a JSON message inside `log` is full of `\"`.
    fn string(&mut self) -> Result<Cow<'a, [u8]>, ParseError> {
        self.expect(b'"')?;
        let buf = self.buf;
        const UNTERMINATED: ParseError = ParseError::Json("unterminated string");
        let start = self.pos;
        let end = memchr2(b'"', b'\\', &buf[start..]).ok_or(UNTERMINATED)?;
        if buf[start + end] == b'"' {
            self.pos = start + end + 1;
            return Ok(Cow::Borrowed(&buf[start..start + end]));
        }
        let mut out = Vec::with_capacity(buf.len() - start);
        let mut run = start;
        let mut at = start + end;
        loop {
            out.extend_from_slice(&buf[run..at]);
            if buf[at] == b'"' {
                self.pos = at + 1;
                return Ok(Cow::Owned(out));
            }
            // A backslash at `at`.
            self.pos = at + 1;
            let Some(e) = self.next() else {
                return Err(ParseError::Json("unterminated escape"));
            };
            match e {
                b'"' => out.push(b'"'),
                b'\\' => out.push(b'\\'),
                b'/' => out.push(b'/'),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'u' => {
                    let c = self.unicode_escape()?;
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
                _ => return Err(ParseError::Json("invalid escape")),
            }
            run = self.pos;
            at = run + memchr2(b'"', b'\\', &buf[run..]).ok_or(UNTERMINATED)?;
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let end = self.pos + 4;
        let digits = self
            .buf
            .get(self.pos..end)
            .ok_or(ParseError::Json("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| ParseError::Json("bad \\u escape"))?;
        let v = u32::from_str_radix(text, 16).map_err(|_| ParseError::Json("bad \\u escape"))?;
        self.pos = end;
        Ok(v)
    }

    /// The character of a `\u` escape (after the `u`); surrogate pairs joined, lone
    /// surrogates replaced by U+FFFD as JSON decoders commonly do.
    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) {
            if self.buf.get(self.pos..self.pos + 2) == Some(b"\\u") {
                let save = self.pos;
                self.pos += 2;
                let lo = self.hex4()?;
                if (0xDC00..0xE000).contains(&lo) {
                    let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    return Ok(char::from_u32(c).unwrap_or('\u{FFFD}'));
                }
                self.pos = save;
            }
            return Ok('\u{FFFD}');
        }
        Ok(char::from_u32(hi).unwrap_or('\u{FFFD}'))
    }

    /// Skips any JSON value.
    fn skip_value(&mut self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::Json("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(open @ (b'{' | b'[')) => {
                self.pos += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                self.ws();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => continue,
                        Some(c) if c == close => return Ok(()),
                        _ => return Err(ParseError::Json("expected ',' or a closing bracket")),
                    }
                }
            }
            Some(b) if b == b'-' || b.is_ascii_alphanumeric() => {
                while matches!(self.peek(), Some(b) if b == b'-' || b == b'+' || b == b'.' || b.is_ascii_alphanumeric())
                {
                    self.pos += 1;
                }
                Ok(())
            }
            _ => Err(ParseError::Json("expected a value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_common::forward::EventTime;

    #[test]
    fn full_line() {
        let l = parse(
            br#"{"log":"hello\n","stream":"stdout","time":"2019-01-01T11:11:11.111111111Z"}"#,
        )
        .unwrap();
        assert_eq!(&*l.message, b"hello");
        assert!(!l.partial);
        assert_eq!(l.stream, Stream::Stdout);
        assert_eq!(l.time, EventTime::new(1_546_341_071, 111_111_111));
    }

    #[test]
    fn partial_escapes_key_order_and_extra_keys() {
        let l = parse(
            br#" { "time":"2019-01-01T11:11:11Z", "attrs":{"a":[1,2,{"b":null}]}, "stream":"stderr", "log":"tab\there \"q\" \u00e9 \ud83d\ude00 \ud800x" } "#,
        )
        .unwrap();
        assert!(l.partial);
        assert_eq!(l.stream, Stream::Stderr);
        assert_eq!(
            String::from_utf8(l.message.into_owned()).unwrap(),
            "tab\there \"q\" é 😀 \u{FFFD}x"
        );
    }

    #[test]
    fn escaped_messages_come_back_exactly() {
        for text in [
            "",
            "\"",
            "\\\\",
            "\"starts and ends\"",
            "{\"level\":\"info\",\"msg\":\"a \\\"quoted\\\" word\",\"n\":1}",
            "tabs\tand\r\nbreaks\u{8}\u{c}/",
            "ünïcödé and \u{1F600} and \u{0} and \u{1f}",
            "plain run then \\ then a long plain run without any escapes at all",
        ] {
            let line = format!(
                "{{\"log\":{},\"stream\":\"stdout\",\"time\":\"2019-01-01T11:11:11Z\"}}",
                serde_json::to_string(&format!("{text}\n")).unwrap()
            );
            let l = parse(line.as_bytes()).unwrap();
            assert_eq!(std::str::from_utf8(&l.message).unwrap(), text, "{line}");
            assert!(!l.partial);
        }
    }

    #[test]
    fn invalid_lines_are_errors() {
        for bad in [
            &b""[..],
            b"{}",
            b"{\"log\":\"x\\n\"}",
            b"{\"log\":\"x\\n\",\"time\":\"soon\"}",
            b"{\"log\":\"x\\n\",\"time\":\"2019-01-01T11:11:11Z\"",
            b"{\"log\":\"x\\q\",\"time\":\"2019-01-01T11:11:11Z\"}",
            b"{\"log\":\"x\",\"stream\":\"stdin\",\"time\":\"2019-01-01T11:11:11Z\"}",
            b"{\"log\":\"x\",\"time\":\"2019-01-01T11:11:11Z\"} trailing",
            b"2016-10-06T00:17:09Z stdout F x",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
